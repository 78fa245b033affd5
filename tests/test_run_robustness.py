"""predict in real processes: SIGTERM/SIGINT and output-side bad inputs (folder, file, full disk).

The registration is a test double (tests/_run_driver.py); reading, writing, resume and the CLI are real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from _run_helpers import (
    check_outputs_valid,
    dataset,
    driver_cmd,
    driver_env,
    make_dataset,
    run_driver,
    temporaries,
    write_volume,
)


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


def _read_only_folder(path: Path) -> Path:
    """A folder no one (root included) can write: a read-only tmpfs, else mode 0555 for a non-root user."""
    path.mkdir(parents=True)
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)]).returncode != 0:
            pytest.skip("running as root without the right to mount a read-only tmpfs")
    else:
        path.chmod(0o555)
    return path


def test_unwritable_output_folder_exits_2_before_any_computation(tmp_path):
    json_path = dataset(tmp_path / "data", 2)
    out = _read_only_folder(tmp_path / "ro")
    try:
        done = run_driver(json_path, out, CAIO_TEST_DELAY_S="0")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(out)])
    assert done.returncode == 2
    assert len(_error_lines(done.stderr)) == 1 and "not writable" in done.stderr and str(out) in done.stderr
    assert "Traceback" not in done.stderr and "models loaded" not in done.stdout and "[1/" not in done.stdout


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
