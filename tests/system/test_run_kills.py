"""predict in real processes: stray temporary files, kills + resume, concurrent shards.

The registration is a test double (tests/helpers/run_driver.py) except in the two tests of the real ``predict.py``
with the default pipeline: two kills on small real brain volumes (default suite) and twenty on tiny noise
volumes (slow).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import pipeline_data
from helpers.run_helpers import (
    check_outputs_valid,
    dataset,
    driver_cmd,
    driver_env,
    expected_outputs,
    run_driver,
    temporaries,
)

from caio.io.atomic import read_nifti_descrip, remove_stray_temporaries, temporary_name

REPO = Path(__file__).resolve().parents[2]


def test_stray_temporary_files_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    child = subprocess.Popen(["sleep", "0"])
    child.wait()
    stray = tmp_path / f".disp_1000_1001.nii.gz.{child.pid}-0badcafe.tmp"
    stray.write_bytes(b"half")
    live = temporary_name(tmp_path / "disp_1001_1002.nii.gz")  # this process: alive
    live.write_bytes(b"busy")
    old_live = tmp_path / f".x.nii.gz.{os.getppid()}-00aa.tmp"
    old_live.write_bytes(b"old")
    os.utime(old_live, (time.time() - 7 * 3600, time.time() - 7 * 3600))
    removed = remove_stray_temporaries(tmp_path)
    assert sorted(removed) == sorted([stray, old_live]) and live.exists()


def test_a_stray_temporary_never_makes_resume_skip_a_pair(tmp_path):
    json_path, out = dataset(tmp_path / "data", 2), tmp_path / "out"
    assert run_driver(json_path, out).returncode == 0
    first = out / expected_outputs(2)[0]
    stray = out / f".{first.name}.999999999-0abc.tmp"  # a complete copy left by a dead process
    stray.write_bytes(first.read_bytes())
    first.unlink()
    done = run_driver(json_path, out, "--resume")
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout.splitlines()[2] and "resumed" in done.stdout.splitlines()[3]
    assert "stray temporary" in done.stderr and temporaries(out) == []


def test_three_kills_then_resume_leave_only_complete_valid_outputs(tmp_path):
    n = 6
    json_path, out = dataset(tmp_path / "data", n, shape=(40, 40, 40)), tmp_path / "out"
    cmd, env = driver_cmd(json_path, out, "--resume"), driver_env(CAIO_TEST_DELAY_S="0.2")
    # start-up (imports) takes a few seconds; then each pair takes about 0.3 s
    _kill_at_random_moments(cmd, out, expected_outputs(n), (40, 40, 40), 3, 13, (3.0, 6.0), env)
    final = run_driver(json_path, out, "--resume")
    assert final.returncode == 0, final.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(expected_outputs(n))
    assert check_outputs_valid(out, expected_outputs(n), (40, 40, 40)) == []


def test_three_concurrent_shards_on_one_output_folder_never_collide(tmp_path):
    n = 9
    json_path, out = dataset(tmp_path / "data", n), tmp_path / "out"
    procs = [
        subprocess.Popen(
            driver_cmd(json_path, out, "--shard", f"{k}/3"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=driver_env(CAIO_TEST_DELAY_S="0.05"),
        )
        for k in range(3)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [r[1][-500:] for r in results]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected_outputs(n))
    assert check_outputs_valid(out, expected_outputs(n)) == []
    assert sum(len([line for line in r[0].splitlines() if line.startswith("[")]) for r in results) == n


def _kill_at_random_moments(cmd: list[str], out: Path, names: list[str], shape, kills: int, seed: int, window, env):
    rng = random.Random(seed)
    for _ in range(kills):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(rng.uniform(*window))
        proc.kill()
        proc.wait()
        assert check_outputs_valid(out, names, shape) == []  # only complete, valid outputs


@pytest.mark.slow
def test_twenty_random_kills_of_the_real_pipeline_then_resume_complete_every_output(tmp_path):
    """predict.py (default pipeline, 1 s budget, 8 pairs of 24^3) SIGKILLed 20 times, resumed in between."""
    n, shape = 8, (24, 24, 24)
    json_path, out = dataset(tmp_path / "data", n, shape), tmp_path / "out"
    cmd = [sys.executable, str(REPO / "predict.py"), "--json", str(json_path), "--input", str(json_path.parent)]
    cmd += ["-o", str(out), "--shape", "any", "--device", "cpu", "--budget-s", "1", "--no-progress", "--resume"]
    _kill_at_random_moments(cmd, out, expected_outputs(n), shape, 20, 7, (2.0, 12.0), driver_env())
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert final.returncode in (0, 1), final.stderr[-2000:]  # 1: a pair may be degraded at a 1 s budget
    assert sorted(p.name for p in out.iterdir()) == sorted(expected_outputs(n))
    assert temporaries(out) == [] and check_outputs_valid(out, expected_outputs(n), shape) == []


def _kill_after(cmd: list[str], moment, timeout: float = 120) -> list[str]:
    """Start ``cmd`` (unbuffered output), SIGKILL it as soon as ``moment(lines so far)`` is true; return the lines."""
    env = driver_env(PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    end = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if moment(lines) or time.monotonic() > end:
                break
    finally:
        proc.kill()
        proc.wait()
    return lines


def test_a_kill_of_the_real_pipeline_mid_run_then_resume_completes_every_output(tmp_path):
    """predict.py (default CPU pipeline: gate + engine, 1 s per pair) on four pairs of different real brains at
    40x56x48, SIGKILLed half a second into its second pair: only complete, valid outputs are left, and a
    ``--resume`` run keeps exactly the ``ok`` ones and completes the rest. (One kill: each start of predict.py
    loads the engine's kernels, 3-9 s on 2 cores; the slow test below kills twenty times.)"""
    ids = [(f"000{i}_0000", f"000{i % 4 + 1}_0000") for i in range(1, 5)]  # four distinct T1 subjects
    json_path, out = pipeline_data.make_dataset(tmp_path / "data", ids), tmp_path / "out"
    names = [f"disp_{f[:4]}_{m[:4]}.nii.gz" for f, m in ids]
    cmd = [sys.executable, str(REPO / "predict.py"), "--json", str(json_path), "--input", str(json_path.parent)]
    cmd += ["-o", str(out), "--device", "cpu", "--budget-s", "1", "--no-progress", "--resume"]
    cmd += ["--shape", *map(str, pipeline_data.SHAPE)]

    def into_the_second_pair(lines: list[str]) -> bool:
        if lines[-1].startswith("[1/4]"):
            time.sleep(0.5)
            return True
        return False

    killed = _kill_after(cmd, into_the_second_pair)
    assert killed[-1].startswith("[1/4]") and " -> disp_0001_0002" in killed[-1], killed
    written = sorted(p.name for p in out.glob("disp_*"))
    assert 1 <= len(written) < 4 and check_outputs_valid(out, names, pipeline_data.SHAPE) == []
    kept = [p.name for p in out.glob("disp_*") if (read_nifti_descrip(p) or "").startswith("caio ok ")]

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert final.returncode in (0, 1), final.stderr[-2000:]  # 1: a pair may be degraded on a loaded machine
    pairs = [line for line in final.stdout.splitlines() if line.startswith("[")]
    resumed = [name for name in names if any(name in line and " resumed " in line for line in pairs)]
    assert len(pairs) == 4 and sorted(resumed) == sorted(kept) and kept, pairs  # every ok output kept, no other
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert temporaries(out) == [] and check_outputs_valid(out, names, pipeline_data.SHAPE) == []
