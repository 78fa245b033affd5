"""caio.pipeline: stage order, fallbacks, bad pairs, resume, atomic outputs under every name."""

from __future__ import annotations

import importlib
from pathlib import Path

import _pipeline_doubles as doubles
import nibabel as nib
import numpy as np
import pytest
import torch

from caio import pipeline
from caio.errors import CaioInputError
from caio.io import load_pairs, validate_displacement_file, write_displacement
from caio.pipeline import PipelineConfig, load_models, register_pair, run
from caio.pipeline import pair as pair_module
from caio.weights.manifest import CASCADE_INIT_NAME

run_module = importlib.import_module("caio.pipeline.run")  # the attribute caio.pipeline.run is the function

CFG = PipelineConfig(device="cpu", budget_s=20, expected_shape=doubles.SHAPE)


def _pairs(tmp_path: Path, spec):
    json_path = doubles.make_dataset(tmp_path / "data", spec)
    return load_pairs(json_path, tmp_path / "data", check_files=False)


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_output_is_backbone_then_cascade_written_float32_channel_last(tmp_path, monkeypatch):
    calls = doubles.install(monkeypatch, shift=0.5, cascade_add=0.25)
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    summary = run(
        pairs,
        tmp_path / "out",
        PipelineConfig(device="cpu", budget_s=20, expected_shape=doubles.SHAPE, steps=7, seed=3),
    )
    assert summary.exit_code == 0 and summary.count("ok") == 1
    result = summary.results[0]
    assert result.path == "training-free+cascade" and result.steps == 21
    assert calls.cascade[0]["steps"] == 7 and calls.cascade[0]["seed"] == 3
    data = _read(tmp_path / "out" / "disp_0002_0001.nii.gz")
    assert data.dtype == np.float32 and data.shape == (*doubles.SHAPE, 3)
    np.testing.assert_allclose(data, 0.75)
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_unusual_modality_pair_written_under_short_and_long_name(tmp_path, monkeypatch):
    doubles.install(monkeypatch)
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0002")])
    summary = run(pairs, tmp_path / "out", CFG)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["disp_0002_0000_0001_0002.nii.gz", "disp_0002_0001.nii.gz"]
    assert summary.results[0].outputs and len(summary.results[0].outputs) == 2
    np.testing.assert_array_equal(_read(tmp_path / "out" / names[0]), _read(tmp_path / "out" / names[1]))


def test_bad_pairs_are_skipped_with_one_line_and_the_rest_written(tmp_path, monkeypatch):
    doubles.install(monkeypatch)
    spec = [
        ("0002_0000", "0001_0000"),
        ("0003_0000", "0001_0000"),
        ("0004_0000", "0001_0000"),
        ("0005_0000", "0001_0000"),
        ("0006_0000", "0001_0000"),
    ]
    pairs = _pairs(tmp_path, spec)
    images = tmp_path / "data" / "imagesVal"
    nan = np.ones(doubles.SHAPE, np.float32)
    nan[3, 4, 5] = np.nan
    doubles.write_volume(images / "LUMIRMRI_0003_0000.nii.gz", nan)
    doubles.write_volume(images / "LUMIRMRI_0004_0000.nii.gz", np.ones((16, 32, 32), np.float32))
    (images / "LUMIRMRI_0005_0000.nii.gz").unlink()
    summary = run(pairs, tmp_path / "out", CFG)
    status = [r.status for r in summary.results]
    assert status == ["ok", "skipped", "skipped", "skipped", "ok"]
    assert summary.exit_code == 1
    messages = [r.message for r in summary.results if r.status == "skipped"]
    assert "LUMIRMRI_0003_0000" in messages[0] and "NaN" in messages[0]
    assert "LUMIRMRI_0004_0000" in messages[1] and "shape" in messages[1]
    assert "LUMIRMRI_0005_0000" in messages[2] and "not found" in messages[2]
    assert all("\n" not in m for m in messages)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["disp_0002_0001.nii.gz", "disp_0006_0001.nii.gz"]
    assert "2 ok" in summary.line() and "3 skipped" in summary.line()


def test_resume_keeps_valid_outputs_and_redoes_invalid_ones(tmp_path, monkeypatch):
    calls = doubles.install(monkeypatch, shift=0.5, cascade_add=0.0)
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000"), ("0003_0000", "0001_0000"), ("0004_0000", "0001_0000")])
    out = tmp_path / "out"
    out.mkdir()
    write_displacement(out / "disp_0002_0001.nii.gz", np.full((3, *doubles.SHAPE), 7.0, np.float32))
    write_displacement(out / "disp_0003_0001.nii.gz", np.zeros((3, 8, 8, 8), np.float32))  # wrong grid
    (out / "disp_0004_0001.nii.gz").write_bytes(b"truncated")
    summary = run(pairs, out, CFG, resume=True)
    assert [r.status for r in summary.results] == ["resumed", "ok", "ok"]
    assert len(calls.training_free) == 2
    np.testing.assert_allclose(_read(out / "disp_0002_0001.nii.gz"), 7.0)
    for name in ("disp_0003_0001.nii.gz", "disp_0004_0001.nii.gz"):
        assert validate_displacement_file(out / name, doubles.SHAPE) is None
        np.testing.assert_allclose(_read(out / name), 0.5)


def test_resume_with_everything_done_loads_no_model(tmp_path, monkeypatch):
    doubles.install(monkeypatch)
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    run(pairs, tmp_path / "out", CFG)

    def boom(*a, **k):
        raise AssertionError("models loaded although every output is valid")

    monkeypatch.setattr(run_module, "load_models", boom)
    summary = run(pairs, tmp_path / "out", CFG, resume=True)
    assert summary.results[0].status == "resumed" and summary.exit_code == 0


def test_models_are_loaded_once_per_run(tmp_path, monkeypatch):
    doubles.install(monkeypatch)
    count = []
    real = pipeline.load_models
    monkeypatch.setattr(run_module, "load_models", lambda *a, **k: count.append(1) or real(*a, **k))
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000"), ("0003_0000", "0001_0000"), ("0001_0000", "0003_0000")])
    assert run(pairs, tmp_path / "out", CFG).exit_code == 0
    assert len(count) == 1


def test_out_of_memory_retries_with_lower_memory_setting(tmp_path, monkeypatch):
    calls = doubles.install(monkeypatch, oom_unless_low_memory=True)
    monkeypatch.setattr(pair_module, "_attempts", lambda device: [(device, False), (device, True)])
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    result = register_pair(pairs[0], CFG, load_models(CFG))
    assert result.status == "ok"
    assert [c.low_memory for c in calls.training_free] == [False, True]
    assert "(autocast fp16)" in result.device


def test_cuda_attempt_order_ends_on_cpu():
    attempts = pair_module._attempts(torch.device("cuda:0"))
    assert attempts == [(torch.device("cuda:0"), False), (torch.device("cuda:0"), True), (torch.device("cpu"), False)]
    assert pair_module._attempts(torch.device("cpu")) == [(torch.device("cpu"), False)]


def test_failing_backbone_starts_cascade_from_identity(tmp_path, monkeypatch):
    doubles.install(monkeypatch, training_free_error=RuntimeError("kaputt"), cascade_add=0.25)
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    summary = run(pairs, tmp_path / "out", CFG)
    assert summary.results[0].path == "identity+cascade" and summary.results[0].status == "ok"
    np.testing.assert_allclose(_read(tmp_path / "out" / "disp_0002_0001.nii.gz"), 0.25)


def test_no_method_left_writes_identity_and_reports_degraded(tmp_path, monkeypatch):
    doubles.install(monkeypatch, training_free_error=RuntimeError("kaputt"), cascade_error=RuntimeError("also"))
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    summary = run(pairs, tmp_path / "out", CFG)
    assert summary.results[0].status == "degraded" and summary.exit_code == 1
    np.testing.assert_array_equal(_read(tmp_path / "out" / "disp_0002_0001.nii.gz"), 0.0)


def test_non_finite_displacement_is_never_written(tmp_path, monkeypatch):
    doubles.install(monkeypatch, disp_value=float("nan"), cascade_add=0.0)
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    cfg = PipelineConfig(device="cpu", budget_s=20, expected_shape=doubles.SHAPE, identity_fallback=False)
    summary = run(pairs, tmp_path / "out", cfg)
    assert summary.results[0].status == "failed" and "NaN" in summary.results[0].message
    assert list((tmp_path / "out").iterdir()) == []


def test_cross_contrast_without_brainid_uses_mind_features(tmp_path, monkeypatch):
    calls = doubles.install(monkeypatch, cross=True)
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0001")])
    result = run(pairs, tmp_path / "out", CFG).results[0]
    assert result.cross_contrast is True and result.path == "mind+training-free+cascade"
    assert calls.mind == 2 and calls.cascade[0]["fixed_sim"].shape[1] == 12


def test_different_modality_codes_make_a_pair_cross_contrast_whatever_the_score(tmp_path, monkeypatch):
    calls = doubles.install(monkeypatch, cross=False)  # the gate score alone would say "same contrast"
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0001"), ("0003_0000", "0002_0000")])
    results = run(pairs, tmp_path / "out", CFG).results
    assert calls.gate == [True, None]
    assert results[0].cross_contrast is True and results[0].gate_forced
    assert results[1].cross_contrast is False and not results[1].gate_forced


def test_gate_can_be_forced_off(tmp_path, monkeypatch):
    calls = doubles.install(monkeypatch, cross=True)
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0001")])
    cfg = PipelineConfig(device="cpu", budget_s=20, expected_shape=doubles.SHAPE, gate=False)
    result = run(pairs, tmp_path / "out", cfg).results[0]
    assert calls.gate == [False] and result.cross_contrast is False and result.gate_forced
    assert calls.mind == 0 and "mind" not in result.path


def test_resample_accepts_other_shapes_and_writes_expected_grid(tmp_path, monkeypatch):
    doubles.install(monkeypatch)
    json_path = doubles.make_dataset(tmp_path / "data", [("0002_0000", "0001_0000")], shape=(20, 24, 28))
    pairs = load_pairs(json_path, tmp_path / "data")
    cfg = PipelineConfig(device="cpu", budget_s=20, expected_shape=doubles.SHAPE, resample=True)
    assert run(pairs, tmp_path / "out", cfg).exit_code == 0
    assert _read(tmp_path / "out" / "disp_0002_0001.nii.gz").shape == (*doubles.SHAPE, 3)


def test_mode_vfa_without_weights_is_a_user_error(monkeypatch):
    doubles.install(monkeypatch)
    with pytest.raises(CaioInputError, match="VFA weights"):
        load_models(PipelineConfig(device="cpu", mode="vfa"))


def test_config_rejects_unknown_mode_and_bad_budget():
    with pytest.raises(CaioInputError, match="mode"):
        PipelineConfig(mode="fast")
    with pytest.raises(CaioInputError, match="budget"):
        PipelineConfig(budget_s=0)


def test_unwritable_output_folder_is_a_user_error(tmp_path, monkeypatch):
    doubles.install(monkeypatch)
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CaioInputError, match="output folder"):
        run(pairs, blocker / "out", CFG)


def test_non_finite_cascade_output_falls_back_to_the_backbone(tmp_path, monkeypatch):
    doubles.install(monkeypatch, shift=0.5, cascade_add=float("nan"))
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    result = run(pairs, tmp_path / "out", CFG).results[0]
    assert result.status == "ok" and result.path == "training-free"
    np.testing.assert_allclose(_read(tmp_path / "out" / "disp_0002_0001.nii.gz"), 0.5)


def test_vfa_weights_present_are_loaded_once_and_used_as_backbone(tmp_path, monkeypatch):
    import json

    from caio.backbone.vfa import VFA, VFAConfig

    calls = doubles.install(monkeypatch, cascade_add=0.0, keep=("caio.weights",))
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.manual_seed(0)
    torch.save({"model_state_dict": VFA(VFAConfig()).state_dict()}, weights / "mono.pth")
    (weights / "manifest.json").write_text(
        json.dumps(
            {
                "weights": [
                    {
                        "name": "test-mono",
                        "role": "backbone_mono",
                        "file": "mono.pth",
                        "urls": [],
                        "sha256": None,
                        "licence": "test",
                        "checkpoint_key": "model_state_dict",
                        "input_scale": 1.0,
                    }
                ]
            }
        )
    )
    loads = []
    from caio.pipeline import models as models_module

    real_load = models_module.LOADERS["vfa_mono"]
    monkeypatch.setitem(models_module.LOADERS, "vfa_mono", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000"), ("0003_0000", "0001_0000")])
    cfg = PipelineConfig(device="cpu", budget_s=30, expected_shape=doubles.SHAPE, weights_dir=weights)
    summary = run(pairs, tmp_path / "out", cfg)
    assert [r.path for r in summary.results] == ["vfa_mono+cascade"] * 2
    assert len(loads) == 1 and calls.training_free == []
    data = _read(tmp_path / "out" / "disp_0002_0001.nii.gz")
    assert np.isfinite(data).all() and np.abs(data).max() > 0
    cfg_tf = PipelineConfig(
        device="cpu", budget_s=30, expected_shape=doubles.SHAPE, weights_dir=weights, mode="training-free"
    )
    assert [r.path for r in run(pairs, tmp_path / "out2", cfg_tf).results] == ["training-free+cascade"] * 2


def test_backbone_returning_identity_without_cascade_is_reported_degraded(tmp_path, monkeypatch):
    doubles.install(monkeypatch, disp_value=0.0)
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    cfg = PipelineConfig(device="cpu", budget_s=20, expected_shape=doubles.SHAPE, cascade=False)
    result = run(pairs, tmp_path / "out", cfg).results[0]
    assert result.path == "training-free:zero" and result.status == "degraded"


def test_cascade_without_a_single_step_does_not_count_as_registration(tmp_path, monkeypatch):
    doubles.install(monkeypatch, disp_value=0.0, cascade_add=0.0)
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    cfg = PipelineConfig(device="cpu", budget_s=20, expected_shape=doubles.SHAPE, steps=0)
    result = run(pairs, tmp_path / "out", cfg).results[0]
    assert result.path == "training-free:zero+cascade:0" and result.status == "degraded" and result.steps == 0


def test_cascade_initial_weights_are_passed_and_a_broken_file_is_ignored(tmp_path, monkeypatch):
    calls = doubles.install(monkeypatch)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / CASCADE_INIT_NAME).write_bytes(b"broken")
    pairs = _pairs(tmp_path, [("0002_0000", "0001_0000")])
    cfg = PipelineConfig(device="cpu", budget_s=20, expected_shape=doubles.SHAPE, weights_dir=weights)
    result = run(pairs, tmp_path / "out", cfg).results[0]
    assert result.status == "ok" and result.path == "training-free+cascade"
    assert [c["init_state"] for c in calls.cascade] == [weights / CASCADE_INIT_NAME, None]


def test_cascade_runs_coarser_stages_on_cpu_than_on_cuda():
    from caio.pipeline.stages import cascade_config_for
    from caio.refine.cascade import CascadeConfig

    cpu, cuda = cascade_config_for(torch.device("cpu")), cascade_config_for(torch.device("cuda"), steps=7)
    assert cuda.stage_factors == CascadeConfig().stage_factors and cuda.steps == 7
    assert cpu.stage_factors == CascadeConfig.for_cpu().stage_factors
    assert all(c > g for c, g in zip(cpu.stage_factors, cuda.stage_factors))
    assert cpu.steps == CascadeConfig().steps


def test_budget_defaults_to_a_minute_on_gpu_and_five_on_cpu_unless_given():
    from caio.pipeline.config import budget_for

    assert budget_for(PipelineConfig(), torch.device("cuda")) == 60.0
    assert budget_for(PipelineConfig(), torch.device("cpu")) == 300.0
    assert budget_for(PipelineConfig(budget_s=12.5), torch.device("cpu")) == 12.5
