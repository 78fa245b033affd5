"""Every module of caio imports first in a fresh interpreter (no import cycle), and no module is too long."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import caio

PACKAGE = Path(caio.__file__).resolve().parent
MAX_LINES = 400


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


CHILD = """
import importlib, os, sys
import numpy, scipy.ndimage, nibabel, torch, tqdm  # third-party only: this interpreter imports no caio module
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as err:
            sys.stderr.write(f"{name}: {type(err).__name__}: {err}\\n")
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
sys.exit(1 if failed else 0)
"""


def _import_each_first(names: list[str]) -> subprocess.CompletedProcess:
    """One interpreter (third-party packages preloaded) forks a child per module; each child has no
    caio module loaded before it imports its one module, so an import cycle shows as a failure."""
    return subprocess.run([sys.executable, "-c", CHILD, *names], capture_output=True, text=True, timeout=300)


def test_module_list_covers_the_layout():
    modules = _modules()
    for expected in ("caio.pipeline.run", "caio.io.atomic", "caio.cli.options", "caio.metrics.ndv", "caio.device"):
        assert expected in modules
    assert len(modules) >= 40


def test_every_module_imports_first_in_a_fresh_interpreter():
    names = [n for n in _modules() if n != "caio.__main__"]  # __main__ runs the command line
    proc = _import_each_first(names)
    assert proc.returncode == 0, proc.stderr


def test_an_import_cycle_is_detected(tmp_path):
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic.b import B\nA = 1\n")
    (package / "b.py").write_text("from cyclic.a import A\nB = 2\n")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "cyclic.b"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 1 and "cyclic.b: ImportError" in proc.stderr


def test_no_module_exceeds_the_line_limit():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_package_folder_has_an_init_so_that_it_is_installed():
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(PACKAGE)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"folders without __init__.py (setuptools would not install them): {missing}"


def test_predict_starts_without_importing_scipy_ndimage():
    """Each ``predict.py`` process pays its imports before the first pair (0.15 s for ``scipy.ndimage``, which only
    the resampling of an off-grid input needs)."""
    command = [sys.executable, "-X", "importtime", "-c", "import caio.cli.predict"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "caio.cli.predict" in imported  # the log lists what this interpreter imported
    assert not [name for name in imported if name.startswith("scipy.ndimage")]  # its submodules show in any case
