"""The real pipeline (gate, engine, VFA, cascade, trace, status) on small real brain volumes.

No module is replaced: collaborators are passed in explicitly (a :class:`Models` built here),
volumes are ``test_data`` images block-averaged to 40x56x48 (``tests/helpers/pipeline_data.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.engine_cases import real_slab
from helpers.pipeline_data import SHAPE, make_dataset

from caio.backbone.vfa import VFA, VFAConfig
from caio.contrast.brainid import BrainIDDeadlineError, synthesize_t1
from caio.contrast.brainid_net import BrainID
from caio.engine.multiresolution import CROSS_CONTRAST_SIMILARITY, SAME_CONTRAST_SIMILARITY
from caio.errors import CaioInputError
from caio.io import load_pairs, validate_displacement_file
from caio.pipeline import Models, PairTrace, PipelineConfig, load_models, register_pair, run
from caio.pipeline.config import DEFAULT_BUDGET_S, budget_for
from caio.pipeline.pair import run_with_retries
from caio.pipeline.stages import plan_pair, run_brainid, run_engine

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _engine_kernels_loaded():
    """What :func:`load_models` does before the first pair: load the engine's kernels (not on a pair's clock)."""
    from caio.engine import warm_up

    warm_up()


def _pairs(tmp_path: Path, spec):
    root = tmp_path / "data"
    return load_pairs(make_dataset(root, spec), root)


def _cfg(**kw) -> PipelineConfig:
    kw.setdefault("budget_s", 3.0)
    return PipelineConfig(device="cpu", expected_shape=None, **kw)


def _engine_step(result):
    return next(s for s in result.trace.steps if s.name == "engine")


def test_same_contrast_cpu_pair_is_ok_after_gate_and_engine(tmp_path):
    (pair,) = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    result = register_pair(pair, _cfg(), Models(device=CPU))
    assert result.status == "ok", result.message
    assert result.trace.configured == ("gate", "engine") and result.path == "gate+engine"
    assert [s.name for s in result.trace.steps] == ["read", "gate", "engine"]
    engine = _engine_step(result).info["engine"]
    assert engine["similarity"] == "lncc" and engine["iterations"] > 0
    assert engine["similarity_after"] > engine["similarity_before"]  # two different subjects: a real gain
    assert result.disp.shape == (3, *SHAPE) and result.disp.dtype == np.float32 and np.abs(result.disp).max() > 0.1
    assert result.cross_contrast is False and result.message == ""


def test_cross_contrast_pair_takes_the_cross_contrast_similarity_and_is_ok(tmp_path):
    (pair,) = _pairs(tmp_path, [("0001_0000", "0003_0001")])
    result = register_pair(pair, _cfg(), Models(device=CPU))
    assert result.status == "ok", result.message
    assert result.cross_contrast is True and result.path == "gate+engine"
    engine = _engine_step(result).info["engine"]
    assert engine["similarity"] == CROSS_CONTRAST_SIMILARITY != "lncc" and engine["iterations"] > 0


def test_a_failing_vfa_degrades_the_pair_falls_back_to_the_engine_and_the_run_exits_nonzero(tmp_path):
    (pair,) = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    broken = VFA(VFAConfig(in_channels=2))  # a real VFA that cannot take one-channel images
    models = Models(device=CPU, vfa_mono=broken)
    summary = run([pair], tmp_path / "out", _cfg(mode="vfa"), models=models)
    (result,) = summary.results
    assert result.status == "degraded" and summary.exit_code != 0
    assert result.trace.configured == ("gate", "vfa", "engine")
    vfa = next(s for s in result.trace.steps if s.name == "vfa")
    assert vfa.outcome == "failed" and "num_features (2)" in vfa.detail
    assert _engine_step(result).outcome == "fallback" and "vfa failed" in result.message
    assert validate_displacement_file(tmp_path / "out" / "disp_0002_0001.nii.gz", SHAPE) is None


def test_a_budget_too_short_for_any_iteration_is_degraded_not_ok(tmp_path):
    (pair,) = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    result = register_pair(pair, _cfg(budget_s=0.01), Models(device=CPU))
    assert result.status == "degraded"
    assert "engine ran 0 iterations" in result.message and result.path == "gate+identity"
    assert result.disp is not None and not result.disp.any()


def test_budget_overrun_is_at_most_ten_percent_writing_included(tmp_path):
    (pair,) = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    cfg = _cfg(budget_s=2.0)
    models = load_models(cfg)  # one-off kernel load before the pair's clock
    assert models.load_seconds > 0
    summary = run([pair], tmp_path / "out", cfg, models=models)
    (result,) = summary.results
    assert result.status in ("ok", "degraded") and result.outputs  # degraded only on a machine too loaded to iterate
    assert result.seconds <= 2.2, result.trace.to_json()


def test_preloaded_volumes_run_on_the_clock_of_the_caller(tmp_path):
    (pair,) = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    from caio.pipeline.pair import load_pair_volumes

    volumes = load_pair_volumes(pair, _cfg())
    clock = time.monotonic() - 1.5  # the pair waited 1.5 s for its volumes
    result = register_pair(pair, _cfg(budget_s=8.0), Models(device=CPU), volumes=volumes, clock_start=clock)
    assert result.status == "ok", result.message
    assert result.trace.steps[0].detail == "read ahead" and result.trace.steps[0].seconds >= 1.5
    assert 1.5 <= result.seconds <= 8.0


def test_retry_after_out_of_memory_keeps_the_same_deadline():
    seen = []

    def stage(device, low_memory, deadline):
        seen.append((low_memory, deadline))
        if not low_memory:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "field"

    trace = PairTrace(configured=("gate",))
    deadline = time.monotonic() + 30
    value, device, low = run_with_retries(stage, [(CPU, False), (CPU, True), (CPU, False)], deadline, trace)
    assert (value, low) == ("field", True)
    assert [d for _, d in seen] == [deadline, deadline]  # no extension for the retry
    assert trace.steps[0].name == "retry" and trace.steps[0].outcome == "fallback"
    assert any("OutOfMemoryError" in r for r in trace.degraded_reasons())


def test_no_retry_starts_after_the_deadline():
    calls = []

    def stage(device, low_memory, deadline):
        calls.append(low_memory)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    trace = PairTrace()
    with pytest.raises(RuntimeError, match="deadline passed"):
        run_with_retries(stage, [(CPU, False), (CPU, True)], time.monotonic() - 1.0, trace)
    assert calls == [False] and trace.steps[-1].outcome == "skipped"


def test_brainid_stops_between_tiles_at_the_deadline():
    model = BrainID().eval()
    volume = torch.rand(1, 1, 16, 16, 16) * 255
    with pytest.raises(BrainIDDeadlineError):
        synthesize_t1(model, volume, tile=8, deadline=time.monotonic() - 1.0)


def test_brainid_is_skipped_when_its_measured_cpu_cost_does_not_fit():
    trace = PairTrace()
    image = torch.rand(1, 1, 40, 56, 48) * 255  # CPU estimate: 2 x 3.4 s
    assert run_brainid(object(), image, image, time.monotonic() + 2.0, trace) is None
    assert trace.steps[0].outcome == "skipped" and "estimated" in trace.steps[0].detail


ALL = frozenset({"brainid", "vfa_mono", "vfa_multi"})


@pytest.mark.parametrize(
    ("device", "cross", "available", "mode", "refine", "steps"),
    [
        ("cpu", False, frozenset(), "auto", "auto", ("gate", "engine")),
        ("cpu", True, ALL, "auto", "auto", ("gate", "engine")),
        ("cpu", False, ALL, "vfa", "auto", ("gate", "vfa", "engine")),
        ("cpu", True, frozenset(), "auto", "cascade", ("gate", "engine", "mind", "cascade")),
        ("cuda", True, ALL, "auto", "auto", ("gate", "brainid", "vfa", "cascade")),
        ("cuda", True, frozenset(), "auto", "auto", ("gate", "engine")),
        ("cuda", True, frozenset(), "auto", "cascade", ("gate", "engine", "mind", "cascade")),
        ("cuda", False, frozenset({"vfa_mono"}), "auto", "none", ("gate", "vfa")),
        ("cuda", False, ALL, "engine", "auto", ("gate", "engine")),
        ("cuda", False, frozenset({"vfa_mono"}), "auto", "auto", ("gate", "vfa", "cascade")),
    ],
)
def test_configured_path_per_device_and_weights(device, cross, available, mode, refine, steps):
    assert plan_pair(device, cross, available, mode, refine).steps == steps


def test_an_ambiguous_same_contrast_pair_takes_the_cross_contrast_similarity_on_the_same_path():
    plain, ambiguous = (
        plan_pair("cpu", False, ALL, "auto", "auto"),
        plan_pair("cpu", False, ALL, "auto", "auto", "auto", True),
    )
    assert plain.similarity == SAME_CONTRAST_SIMILARITY and ambiguous.similarity == CROSS_CONTRAST_SIMILARITY
    assert ambiguous.steps == plain.steps and not ambiguous.brainid


def test_config_modes_refine_and_the_one_minute_default():
    assert PipelineConfig(mode="training-free").mode == "engine"
    assert PipelineConfig().refine == "auto"
    assert DEFAULT_BUDGET_S == 60.0 and budget_for(PipelineConfig(), CPU) == 60.0
    assert budget_for(PipelineConfig(budget_s=12.0), CPU) == 12.0
    for bad in (dict(mode="x"), dict(refine="always"), dict(budget_s=0)):
        with pytest.raises(CaioInputError):
            PipelineConfig(**bad)


def test_cpu_loads_no_network_by_default_and_mode_vfa_without_weights_is_a_user_error(tmp_path):
    models = load_models(PipelineConfig(device="cpu", weights_dir=tmp_path))
    assert (models.brainid, models.vfa_mono, models.vfa_multi) == (None, None, None)
    with pytest.raises(CaioInputError, match="needs VFA weights"):
        load_models(PipelineConfig(device="cpu", mode="vfa", weights_dir=tmp_path))


def test_trace_reports_every_reason_and_the_json_report_carries_it():
    trace = PairTrace(configured=("gate", "brainid", "engine"))
    trace.record("gate", "ran", 0.1)
    trace.record("brainid", "skipped", 0.0, "deadline passed mid-way")
    trace.record("engine", "ran", 1.0, "lncc", iterations=7)
    assert trace.degraded_reasons() == ["brainid skipped: deadline passed mid-way"]
    assert trace.path == "gate+engine" and trace.iterations() == 7
    assert [s["name"] for s in trace.to_json()["steps"]] == ["gate", "brainid", "engine"]
    assert PairTrace(configured=("gate",)).degraded_reasons() == ["gate did not run"]
    with pytest.raises(ValueError):
        trace.record("engine", "maybe")


def test_contrast_brainid_forces_brainid_on_the_cpu_and_none_turns_it_off_on_a_gpu():
    assert plan_pair("cpu", True, ALL, "vfa", "cascade", "brainid").steps == ("gate", "brainid", "vfa", "cascade")
    assert plan_pair("cpu", False, ALL, "vfa", "cascade", "brainid").steps == ("gate", "vfa", "cascade")
    assert plan_pair("cuda", True, ALL, "auto", "auto", "none").steps == ("gate", "vfa", "mind", "cascade")
    with pytest.raises(CaioInputError):
        PipelineConfig(contrast="sometimes")


def test_a_pair_keeps_two_seconds_and_a_margin_for_writing_a_lumir_field_not_three_times_that():
    """The reserve is per grid voxel: the 3 channels are priced in (it was once charged 3 times: 5 of 10 s kept)."""
    from caio.pipeline.config import write_reserve_s

    assert write_reserve_s(10.0, (160, 224, 192)) == pytest.approx(2.0 + 0.3)
    assert write_reserve_s(60.0, (160, 224, 192)) == pytest.approx(2.0 + 1.8)
    assert write_reserve_s(2.0, (160, 224, 192)) == pytest.approx(1.0)  # at most half the budget
    assert write_reserve_s(10.0, (80, 112, 96)) == pytest.approx(0.25 + 0.3)


def test_an_engine_result_the_safeguard_undid_makes_the_pair_degraded_with_the_reason():
    """The engine step ran, but its safeguard kept the start (LNCC on an inverted contrast): the pair trace holds
    a ``safeguard`` fallback record with the engine's note, so the pair is not ``ok``."""
    fixed = real_slab(4)
    inverted = torch.where(fixed > 0, 256.0 - fixed, torch.zeros_like(fixed))
    trace = PairTrace(configured=("engine",))
    disp = run_engine(fixed, inverted, "lncc", time.monotonic() + 60, trace)
    assert disp is not None and trace.ran("engine")
    (reason,) = trace.degraded_reasons()
    assert reason.startswith("safeguard fallback: level 1/") and "lncc lowered MIND-SSC agreement" in reason
