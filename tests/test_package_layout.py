"""Every module of caio imports first in a fresh interpreter (no import cycle), and no module is too long."""

from __future__ import annotations

import ast
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
    for expected in ("caio.pipeline.batch", "caio.io.atomic", "caio.cli.options", "caio.metrics.ndv", "caio.device"):
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


LAYERS = (
    ("errors", "spatial"),
    ("device", "io", "kernels"),
    ("similarity", "weights", "synth", "metrics", "qc"),
    ("contrast",),
    ("engine", "transforms"),
    ("refine",),
    ("backbone",),
    ("pipeline",),
    ("cli", "__init__", "__main__"),
)
"""caio's packages from the bottom up: a module may import its own layer and the layers below it, never one above
(function-level imports included, so that none dodges a cycle). ``__init__``/``__main__``: the root package."""


def _layer_of(module: str) -> int:
    """Layer index of a dotted ``caio.<package>...`` name (the root package's own modules are ``__init__``)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module}: package {top!r} has no layer in LAYERS")


def _caio_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``caio`` import in a file, at any depth (relative imports are not used)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "caio":
            names = [node.module] if node.module != "caio" else [f"caio.{alias.name}" for alias in node.names]
            found.extend((node.lineno, name) for name in names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "caio")
    return found


def _layer_violations(package: Path) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        importer = ".".join(parts) if len(parts) > 2 or parts[-1] not in ("__init__", "__main__") else parts[-1]
        own = _layer_of(importer if importer.startswith("caio.") else f"caio.{importer}")
        for line, module in _caio_imports(path):
            if module != "caio" and _layer_of(module) > own:
                problems.append(f"{path.relative_to(package.parent)}:{line} imports {module} (a higher layer)")
    return problems


def test_no_package_imports_one_above_it():
    problems = _layer_violations(PACKAGE)
    assert not problems, "\n".join(problems)


def test_an_upward_import_inside_a_function_is_detected(tmp_path):
    package = tmp_path / "caio"
    (package / "similarity").mkdir(parents=True)
    (package / "similarity" / "lncc.py").write_text("def f():\n    from caio.engine import register\n")
    assert _layer_violations(package) == ["caio/similarity/lncc.py:2 imports caio.engine (a higher layer)"]


MAX_FUNCTION_LINES = 80


def _long_functions(package: Path) -> list[str]:
    long = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return long


def test_no_function_exceeds_80_lines():
    long = _long_functions(PACKAGE)
    assert not long, "functions a reader loses the thread of:\n" + "\n".join(long)


def test_a_long_function_is_detected(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert _long_functions(tmp_path) == [f"{tmp_path.name}/m.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]


def test_every_numba_kernel_lives_in_caio_kernels():
    """The warm-up test lists the kernels from caio.kernels' modules: a kernel elsewhere would escape it."""
    outside = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if "kernels" not in path.relative_to(PACKAGE).parts and "njit" in path.read_text()
    ]
    assert not outside, f"numba kernels outside caio.kernels: {outside}"
