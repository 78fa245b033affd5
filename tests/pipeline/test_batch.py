"""The run loop (caio.pipeline.batch): overlapped reading/writing, order, isolation, status in the file, resume."""

from __future__ import annotations

import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.run_helpers import check_outputs_valid, dataset, expected_outputs, plain_displacement, temporaries

from caio.io import load_pairs
from caio.io.atomic import read_nifti_descrip
from caio.pipeline import PipelineConfig, RunSteps, run
from caio.pipeline.models import Models
from caio.pipeline.outputs import write_pair
from caio.pipeline.pair import PairResult, load_pair_volumes
from caio.pipeline.trace import PairTrace

CFG = PipelineConfig(device="cpu", expected_shape=None, budget_s=5)


class FakeRegistration:
    """``register_pair`` double: sleeps, returns a per-pair field; records what it saw."""

    def __init__(self, delay_s: float = 0.05, degraded: tuple[str, ...] = (), on_start=None):
        self.delay_s, self.degraded, self.on_start = delay_s, degraded, on_start
        self.calls: list[dict] = []

    def __call__(self, pair, cfg, models, *, volumes=None, clock_start=None):
        self.calls.append({"key": pair.key, "volumes": volumes is not None, "clock_start": clock_start})
        if self.on_start is not None:
            self.on_start(pair)
        time.sleep(self.delay_s)
        fixed = volumes[0]
        value = (zlib.crc32(pair.key.encode()) % 100) / 10
        status = "degraded" if pair.key in self.degraded else "ok"
        trace = PairTrace()
        trace.record("fake", "ran")
        disp = np.full((3, *fixed.shape), value, np.float32)
        return PairResult(pair=pair, status=status, disp=disp, trace=trace)

    def steps(self, **other) -> RunSteps:
        """Run steps with this double as the registration, CPU models and ``other`` steps (real ones by default)."""
        return RunSteps(register=self, load_models=cpu_models, **other)


def cpu_models(cfg, device=None) -> Models:
    return Models(device=torch.device("cpu"))


@pytest.fixture
def fake():
    return FakeRegistration()


def _pairs(tmp_path: Path, n: int):
    json_path = dataset(tmp_path / "data", n)
    return load_pairs(json_path, json_path.parent, check_files=False)


@pytest.mark.parametrize("overlap", [True, False])
def test_results_come_in_input_order_and_files_record_their_status(tmp_path, fake, overlap):
    pairs = _pairs(tmp_path, 4)
    seen = []
    summary = run(pairs, tmp_path / "out", CFG, on_result=seen.append, overlap=overlap, steps=fake.steps())
    assert [r.pair.key for r in seen] == [p.key for p in pairs] == [r.pair.key for r in summary.results]
    assert [r.status for r in seen] == ["ok"] * 4
    assert check_outputs_valid(tmp_path / "out", expected_outputs(4)) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(expected_outputs(4))
    for r in seen:
        assert read_nifti_descrip(r.outputs[0]) == "caio ok fake"
        assert r.io_wait_s >= 0 and r.seconds >= r.io_wait_s
    assert all(c["volumes"] and c["clock_start"] is not None for c in fake.calls)


def test_reader_loads_the_next_pair_while_the_current_one_registers(tmp_path, fake):
    pairs = _pairs(tmp_path, 3)
    read_started = {p.key: threading.Event() for p in pairs}

    def load(pair, cfg):
        read_started[pair.key].set()
        return load_pair_volumes(pair, cfg)

    steps = fake.steps(read=load)
    overlapped = []

    def on_start(pair):  # while pair i registers, pair i+1 is being read
        i = [p.key for p in pairs].index(pair.key)
        if i + 1 < len(pairs):
            overlapped.append(read_started[pairs[i + 1].key].wait(timeout=5))

    fake.on_start = on_start
    run(pairs, tmp_path / "out", CFG, steps=steps)
    assert overlapped == [True, True]
    for event in read_started.values():
        event.clear()
    overlapped.clear()
    fake.on_start = lambda pair: overlapped.append(
        any(read_started[p.key].wait(timeout=0.3) for p in pairs[[q.key for q in pairs].index(pair.key) + 1 :][:1])
    )
    run(pairs, tmp_path / "out2", CFG, overlap=False, steps=steps)
    assert overlapped == [False, False, False]


def test_read_ahead_is_bounded_to_one_pair_and_one_pending_write(tmp_path, fake):
    pairs = _pairs(tmp_path, 5)
    counts = {"loaded": 0, "started": 0, "max_ahead": 0, "writing": 0, "max_writing": 0}
    lock = threading.Lock()

    def load(pair, cfg):
        out = load_pair_volumes(pair, cfg)
        with lock:
            counts["loaded"] += 1
            counts["max_ahead"] = max(counts["max_ahead"], counts["loaded"] - counts["started"])
        return out

    def write(result, disp, out_dir):
        with lock:
            counts["writing"] += 1
            counts["max_writing"] = max(counts["max_writing"], counts["writing"])
        time.sleep(0.15)  # slower than a registration: the writer is the bottleneck
        try:
            return write_pair(result, disp, out_dir)
        finally:
            with lock:
                counts["writing"] -= 1

    def on_start(pair):
        with lock:
            counts["started"] += 1

    fake.on_start, fake.delay_s = on_start, 0.02
    summary = run(pairs, tmp_path / "out", CFG, steps=fake.steps(read=load, write=write))
    assert counts["max_ahead"] == 1 and counts["max_writing"] == 1
    # the run returned only after the last write: every file is there
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(expected_outputs(5))
    # waiting for the busy writer counts as the pair's I/O wait
    assert max(r.io_wait_s for r in summary.results[1:]) > 0.05


def test_a_read_error_skips_only_that_pair(tmp_path, fake):
    pairs = _pairs(tmp_path, 3)
    Path(pairs[1].moving).write_bytes(b"not a nifti")  # subject of pair 2's moving = pair 3's fixed
    summary = run(pairs, tmp_path / "out", CFG, steps=fake.steps())
    statuses = [r.status for r in summary.results]
    assert statuses[1] == "skipped" and statuses[0] == "ok"
    assert str(pairs[1].moving) in summary.results[1].message and "\n" not in summary.results[1].message
    assert (tmp_path / "out" / expected_outputs(3)[0]).is_file()
    assert summary.exit_code == 1


def test_a_write_error_fails_only_that_pair_and_leaves_no_temporary_file(tmp_path, fake):
    pairs = _pairs(tmp_path, 3)
    out = tmp_path / "out"
    (out / expected_outputs(3)[1]).mkdir(parents=True)  # a folder where the file must go
    summary = run(pairs, out, CFG, steps=fake.steps())
    assert [r.status for r in summary.results] == ["ok", "failed", "ok"]
    assert "cannot write output" in summary.results[1].message
    assert temporaries(out) == []
    assert (out / expected_outputs(3)[0]).is_file() and (out / expected_outputs(3)[2]).is_file()


def test_report_has_io_wait_write_seconds_and_model_loading_row(tmp_path, fake):
    summary = run(_pairs(tmp_path, 2), tmp_path / "out", CFG, steps=fake.steps())
    report = summary.to_json()
    assert report["model_loading"]["seconds"] is not None and report["model_loading"]["seconds"] >= 0
    for entry in report["pairs"]:
        assert {"seconds", "io_wait_s", "write_s"} <= set(entry)
        assert entry["write_s"] > 0 and entry["seconds"] >= entry["io_wait_s"] >= 0


def test_resume_keeps_ok_outputs_and_redoes_degraded_or_unrecorded_ones(tmp_path, fake, caplog):
    pairs = _pairs(tmp_path, 3)
    out = tmp_path / "out"
    fake.degraded = (pairs[0].key,)
    first = run(pairs, out, CFG, steps=fake.steps())
    assert [r.status for r in first.results] == ["degraded", "ok", "ok"]
    assert read_nifti_descrip(out / expected_outputs(3)[0]) == "caio degraded fake"
    plain_displacement(out / expected_outputs(3)[2])  # valid, but says nothing about its status
    fake.degraded, fake.calls = (), []
    with caplog.at_level("INFO", logger="caio.pipeline.batch"):
        second = run(pairs, out, CFG, resume=True, steps=fake.steps())
    assert [r.status for r in second.results] == ["ok", "resumed", "ok"]
    assert [c["key"] for c in fake.calls] == [pairs[0].key, pairs[2].key]
    redo = [r.message for r in caplog.records if "resume: redo" in r.message]
    assert len(redo) == 2 and "degraded" in redo[0] and "no recorded status" in redo[1]
    assert second.results[1].trace.steps[0].detail == "fake"  # the path recorded in the file


def test_resume_with_every_output_done_loads_no_models(tmp_path, fake):
    pairs = _pairs(tmp_path, 2)
    run(pairs, tmp_path / "out", CFG, steps=fake.steps())

    def no_models(cfg, device=None):
        raise AssertionError("models loaded although every pair is resumed")

    steps = RunSteps(register=fake, load_models=no_models)
    summary = run(pairs, tmp_path / "out", CFG, resume=True, steps=steps)
    assert [r.status for r in summary.results] == ["resumed", "resumed"] and summary.model_loading_s is None
