"""The whole multi-modal path for real: gate -> Brain-ID -> VFA -> cascade, with deterministic weights.

Nothing is replaced: the fixtures' recipe weights are written in the official checkpoint layouts
(:mod:`weights_recipe`), loaded by the pipeline's own :func:`caio.pipeline.load_models` through the
real loaders, and :func:`caio.pipeline.register_pair` runs on small real brain volumes
(``tests/helpers/pipeline_data.py``'s 40x56x48 subjects resampled to 32x32x32, the smallest size VFA takes:
multiples of 16 and >= 32 per axis; Brain-ID needs >= 16). On the CPU the default path uses neither network, so the
configuration forces them: ``mode="vfa"``, ``refine="cascade"``, ``contrast="brainid"``.

The weights are random (recipe), so the fields carry no anatomical meaning: the checks are that
every configured step ran, on the right inputs, and produced a valid field, and that the cascade's instance
optimisation lowered its loss from the initial (VFA) field: the pipeline's trace records the cascade's first loss
(the first forward pass: the initial field, the networks' output being ~1e-5 voxels), the loss of the returned field
and its step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.pipeline_data import small_volume, source_of, write_volume
from helpers.weights_recipe import write_deterministic_weights

from caio import spatial
from caio.backbone.vfa import VFA
from caio.contrast.brainid import BrainID
from caio.io import load_pairs
from caio.pipeline import PipelineConfig, load_models, register_pair

SHAPE = (32, 32, 32)
CROSS = ("0001_0000", "0001_0001")  # T1 <- T2-like subject: modality codes differ
SAME = ("0001_0000", "0002_0000")  # T1 <- another T1 subject
FORCED = {"mode": "vfa", "refine": "cascade", "contrast": "brainid"}
"""The configuration that makes a CPU run take the GPU path (``contrast`` is the Brain-ID switch)."""


def _small(volume: np.ndarray) -> np.ndarray:
    """A block-averaged (40x56x48) volume resampled to :data:`SHAPE` (whole brain kept, background 0)."""
    image = spatial.resize_image(torch.from_numpy(volume)[None, None], SHAPE)[0, 0]
    mask = spatial.resize_image(torch.from_numpy((volume > 0).astype(np.float32))[None, None], SHAPE)[0, 0] > 0.5
    return torch.where(mask, image.clamp(0, 255), torch.zeros(())).numpy().astype(np.float32)


def _dataset(root: Path, pairs: list[tuple[str, str]]):
    for name in {n for pair in pairs for n in pair}:
        write_volume(root / "imagesVal" / f"LUMIRMRI_{name}.nii.gz", _small(small_volume(source_of(name))))
    entries = [
        {"fixed": f"./imagesVal/LUMIRMRI_{f}.nii.gz", "moving": f"./imagesVal/LUMIRMRI_{m}.nii.gz"} for f, m in pairs
    ]
    (root / "dataset.json").write_text(json.dumps({"name": "LUMIR", "validation": entries}))
    return load_pairs(root / "dataset.json", root)


def _forced_config(weights_dir: Path) -> PipelineConfig:
    return PipelineConfig(device="cpu", weights_dir=weights_dir, budget_s=600.0, steps=5, expected_shape=None, **FORCED)


def _register_recording_the_cascade(pair, cfg, models):
    """:func:`register_pair`, and the cascade's ``(first_loss, best_loss, best_step)`` from the pair's trace."""
    result = register_pair(pair, cfg, models)
    (cascade,) = [s for s in result.trace.steps if s.name == "cascade" and s.outcome == "ran"]
    return result, (cascade.info["loss_start"], cascade.info["loss_best"], cascade.info["best_step"])


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    return write_deterministic_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def cfg(weights) -> PipelineConfig:
    return _forced_config(weights["brainid"].parent)


@pytest.fixture(scope="module")
def models(cfg):
    return load_models(cfg)


@pytest.fixture(scope="module")
def results(tmp_path_factory, cfg, models):
    cross, same = _dataset(tmp_path_factory.mktemp("data"), [CROSS, SAME])
    assert cross.is_cross_contrast and not same.is_cross_contrast
    return {
        "cross": _register_recording_the_cascade(cross, cfg, models),
        "same": _register_recording_the_cascade(same, cfg, models),
    }


def _names(result) -> list[str]:
    return [s.name for s in result.trace.steps]


def test_pipeline_loads_the_written_vfa_checkpoints_on_the_cpu(weights):
    """``mode="vfa"`` alone: both VFA files through :func:`load_models` (this part needs no Brain-ID switch)."""
    models = load_models(PipelineConfig(device="cpu", weights_dir=weights["vfa_mono"].parent, mode="vfa"))
    assert isinstance(models.vfa_mono, VFA) and isinstance(models.vfa_multi, VFA)
    assert models.vfa_mono.config.input_scale == 1.0 and models.vfa_multi.config.input_scale == pytest.approx(1 / 255)
    assert float(models.vfa_multi.decoder.beta) == 2.0  # the recipe's beta, not the default 0.1


def test_pipeline_loads_the_written_official_checkpoints(models, weights):
    assert isinstance(models.brainid, BrainID)  # the file with the unused seg head was accepted
    assert isinstance(models.vfa_mono, VFA) and isinstance(models.vfa_multi, VFA)
    assert models.vfa_mono.config.input_scale == 1.0 and models.vfa_multi.config.input_scale == pytest.approx(1 / 255)
    assert float(models.vfa_mono.decoder.beta) == 2.0  # the recipe's beta, not the default 0.1
    assert models.device == torch.device("cpu")


def test_cross_contrast_pair_runs_gate_brainid_vfa_cascade(results):
    result, _ = results["cross"]
    assert result.status == "ok", result.message
    assert result.cross_contrast is True
    assert result.trace.configured == ("gate", "brainid", "vfa", "cascade")
    for step in ("gate", "brainid", "vfa", "cascade"):
        assert result.trace.ran(step), (step, result.trace.to_json())
    assert _names(result) == ["read", "gate", "brainid", "vfa", "cascade"]
    vfa = next(s for s in result.trace.steps if s.name == "vfa")
    assert vfa.detail == "vfa_mono"  # Brain-ID's T1-like images go to the mono-modal VFA
    cascade = next(s for s in result.trace.steps if s.name == "cascade")
    assert cascade.info["iterations"] > 0


def test_same_contrast_pair_skips_brainid(results):
    result, _ = results["same"]
    assert result.status == "ok", result.message
    assert result.cross_contrast is False
    assert result.trace.configured == ("gate", "vfa", "cascade")
    assert _names(result) == ["read", "gate", "vfa", "cascade"]
    assert not any(s.name == "brainid" for s in result.trace.steps)
    assert next(s for s in result.trace.steps if s.name == "vfa").detail == "vfa_mono"


@pytest.mark.parametrize("which", ["cross", "same"])
def test_output_field_is_finite_float32_on_the_fixed_grid(results, which):
    disp = results[which][0].disp
    assert disp is not None and disp.shape == (3, *SHAPE) and disp.dtype == np.float32
    assert np.isfinite(disp).all()
    assert 0 < float(np.abs(disp).max()) < max(SHAPE)  # a real, bounded field (not the identity fallback)


@pytest.mark.parametrize("which", ["cross", "same"])
def test_the_cascade_lowers_its_loss_from_the_initial_field(results, which):
    """Adam on the cascade's networks (5 steps, lr warming up from 5e-5) must lower the LNCC + diffusion loss of the
    initial field: the returned field is that of a later step, with a lower loss."""
    result, (first, best, best_step) = results[which]
    cascade = next(s for s in result.trace.steps if s.name == "cascade")
    assert cascade.outcome == "ran" and cascade.info["iterations"] == 5
    assert best_step >= 1 and best < first, (first, best, best_step)
