"""predict in real processes: SIGTERM/SIGINT and output-side bad inputs (folder, file, full disk).

The registration is a test double (tests/helpers/run_driver.py); reading, writing, resume and the CLI are real.
The unwritable-folder case runs ``predict`` in a forked child that drops root (tests/helpers/unprivileged.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.run_driver import driver_steps
from helpers.run_helpers import (
    check_outputs_valid,
    dataset,
    driver_cmd,
    driver_env,
    make_dataset,
    run_driver,
    temporaries,
    write_volume,
)
from helpers.unprivileged import run_unprivileged

from caio.cli.predict import main as predict_main


def _wait_for_temporary(out: Path, proc: subprocess.Popen, timeout: float = 60) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        found = temporaries(out)
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no temporary file appeared (rc={proc.poll()})")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_removes_the_temporary_file_prints_one_line_and_exits(tmp_path, sig, code):
    json_path, out = dataset(tmp_path / "data", 2), tmp_path / "out"
    proc = subprocess.Popen(
        driver_cmd(json_path, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=driver_env(CAIO_TEST_SLOW_WRITE_S="30"),
    )
    try:
        _wait_for_temporary(out, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == code
    lines = [line for line in err.splitlines() if "stopped by" in line]
    assert len(lines) == 1 and signal.Signals(sig).name in lines[0] and "removed 1 temporary" in lines[0]
    assert "Traceback" not in err
    assert temporaries(out) == [] and not list(out.glob("disp_*"))


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("caio predict: error:")]


def _predict_with_home(home: Path, argv: list[str]) -> int:
    """``predict`` with the driver's steps and ``HOME`` set to ``home`` (run in the forked child only)."""
    os.environ["HOME"] = str(home)
    return predict_main(argv, steps=driver_steps())


def test_unwritable_output_folder_exits_2_before_any_computation(shared_tmp_path):
    """A mode-0555 folder, written to by ``predict`` (the driver's steps) in a child that drops root
    (tests/helpers/unprivileged.py), so that the folder stops it as root or not."""
    json_path = dataset(shared_tmp_path / "data", 2)
    out = shared_tmp_path / "ro"
    out.mkdir(mode=0o555)
    out.chmod(0o555)  # mkdir's mode is masked by the umask
    argv = driver_cmd(json_path, out)[2:]  # the arguments after ``python run_driver.py``
    home = shared_tmp_path / "home"  # the child's caches go here, not into /tmp/caio-cache-65534
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    child = run_unprivileged(_predict_with_home, home, argv)
    assert child.euid != 0 and child.egid != 0  # the check ran without root's override
    assert child.value == 2, child.stderr
    assert len(_error_lines(child.stderr)) == 1 and "not writable" in child.stderr and str(out) in child.stderr
    assert "Traceback" not in child.stderr and "models loaded" not in child.stdout and "[1/" not in child.stdout
    assert list(out.iterdir()) == []


def test_output_path_that_is_a_file_exits_2(tmp_path):
    json_path = dataset(tmp_path / "data", 2)
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"x")
    done = run_driver(json_path, out)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert _error_lines(done.stderr) == [f"caio predict: error: {out}: output path is a file, not a folder"]


def test_a_disk_that_fills_during_a_write_fails_that_pair_only(tmp_path):
    """Pair 2 is 64^3 (3 MB of incompressible noise), pairs 1 and 3 are 16^3: only pair 2 cannot be written."""
    ids = [("2000_0000", "2001_0000"), ("2002_0000", "2003_0000"), ("2004_0000", "2005_0000")]
    json_path = make_dataset(tmp_path / "data", ids, shape=(16, 16, 16))
    for name in ids[1]:
        write_volume(tmp_path / "data/imagesVal" / f"LUMIRMRI_{name}.nii.gz", np.ones((64, 64, 64), np.float32))
    names = ["disp_2000_2001.nii.gz", "disp_2002_2003.nii.gz", "disp_2004_2005.nii.gz"]
    out, mounted = tmp_path / "disk", False
    out.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)]).returncode == 0
    try:
        extra = {} if mounted else {"CAIO_TEST_FSIZE": str(1 << 20)}  # no tmpfs: a file-size limit (EFBIG)
        done = run_driver(json_path, out, **extra)
        written = sorted(p.name for p in out.iterdir())
        leftovers = temporaries(out)
        problems = check_outputs_valid(out, names, (16, 16, 16))
    finally:
        if mounted:
            subprocess.run(["umount", str(out)])
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 3 and " ok " in lines[0] and " ok " in lines[2]
    assert " failed " in lines[1] and "cannot write output" in lines[1]
    assert ("No space left" if mounted else "File too large") in lines[1]
    assert leftovers == [] and written == [names[0], names[2]] and problems == []
