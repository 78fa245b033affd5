"""Contrast gate: LNCC score, decisions on real same/cross-contrast pairs, CLI."""

from __future__ import annotations

import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.data import blob_volume, require_path, textured_pair

from caio import cli
from caio.contrast.gate import GateConfig, GateDecision, decide, gate_score, is_cross_contrast, tissue_score


@pytest.fixture(scope="module")
def spm(data_dir: Path) -> dict[str, torch.Tensor]:
    """SPM avg152 T1/T2 and Colin27 T1 (2 mm, MNI space), skull-stripped with the MNI152 2009a brain (tests/data)."""
    out = {}
    for name in ("avg152T1", "avg152T2", "single_subj_T1"):
        path = require_path(data_dir / f"spm_{name}_brain.nii.gz")
        out[name] = torch.from_numpy(np.asarray(nib.load(str(path)).dataobj, np.float32))[None, None]
    return out


def test_two_t1_images_are_same_contrast(spm):
    decision = decide(spm["avg152T1"], spm["single_subj_T1"])
    assert decision.score > 0.6 and decision.tissue > GateConfig().tissue_below
    assert decision == GateDecision(decision.score, False, False, False, decision.tissue)


def test_t1_versus_t2_is_cross_contrast(spm):
    decision = decide(spm["avg152T1"], spm["avg152T2"])
    assert decision.score < 0.0
    assert decision.cross_contrast and not decision.forced
    assert decide(spm["single_subj_T1"], spm["avg152T2"]).cross_contrast


def test_identical_images_score_one_and_inverted_images_minus_one():
    image = blob_volume()
    inverted = torch.where(image > 0, 256 - image, torch.zeros(()))
    assert 0.9 < gate_score(image, image) <= 1.0  # below 1 only through eps in flat windows
    assert gate_score(image, inverted) < -0.95


def test_score_ignores_global_intensity_scale_and_is_symmetric():
    a, b = blob_volume(0), blob_volume(1)
    score = gate_score(a, b)
    assert gate_score(a, 0.25 * b) == pytest.approx(score, abs=1e-4)
    assert gate_score(b, a) == pytest.approx(score, abs=1e-6)
    assert gate_score(a[0, 0].numpy(), b[0, 0].numpy()) == pytest.approx(score, abs=1e-6)  # (D0, D1, D2) arrays


def test_threshold_decides_and_nan_is_not_cross_contrast():
    cfg = GateConfig(threshold=0.2)
    assert is_cross_contrast(0.1, cfg) and not is_cross_contrast(0.3, cfg)
    assert not is_cross_contrast(math.nan, cfg)


def test_a_same_contrast_score_below_ambiguous_below_is_flagged_ambiguous():
    cfg = GateConfig()
    weakly = decide(*textured_pair(0.3))  # correlation about 0.4: where T1 vs FLAIR-like pairs also score
    assert cfg.threshold <= weakly.score < cfg.ambiguous_below
    assert weakly == GateDecision(weakly.score, False, False, True, weakly.tissue)
    strongly = decide(*textured_pair(0.9))
    assert strongly.score >= cfg.ambiguous_below and not strongly.ambiguous and not strongly.cross_contrast
    assert not decide(*textured_pair(0.3), force=False).ambiguous  # a forced decision is never ambiguous
    assert not decide(*textured_pair(0.3), GateConfig(threshold=0.6)).ambiguous  # cross, not ambiguous


@pytest.fixture(scope="module")
def brats(data_dir: Path) -> dict[str, np.ndarray]:
    """T1, T2, FLAIR of one brain-tumour patient, co-registered, 3 mm (tests/data/README.md)."""
    with np.load(require_path(data_dir / "brats_lesion_t1_t2_flair_3mm.npz")) as data:
        return {name: data[name].astype(np.float32) for name in ("t1", "t2", "flair")}


def test_real_flair_against_its_t1_is_ambiguous_by_the_tissue_score(brats, data_dir):
    # 3 mm voxels: blocks of 2 (6 mm) for the main score, none (3 mm) for the tissue score
    cfg = GateConfig(factor=2, tissue_factor=1)
    flair = decide(brats["t1"], brats["flair"], cfg)
    assert flair.score >= cfg.ambiguous_below and not flair.cross_contrast  # dark CSF in both: looks like T1-T1
    assert flair.tissue < 0 and flair.ambiguous  # GM/WM inverted in the tissue: registered as cross-contrast
    with np.load(require_path(data_dir / "oasis_t1_40x56x48.npz")) as oasis:  # T1 scans of two OASIS subjects
        t1 = decide(oasis["a"].astype(np.float32), oasis["b"].astype(np.float32), cfg)
    assert t1.tissue > cfg.tissue_below and not t1.ambiguous and not t1.cross_contrast
    assert tissue_score(brats["t1"], brats["t2"], cfg) < 0
    assert math.isnan(decide(brats["t1"], brats["t2"], cfg).tissue)  # cross-contrast already: not computed
    assert tissue_score(brats["t1"], brats["t1"], cfg) > 0.9


def test_force_overrides_the_score_but_keeps_it(spm):
    forced = decide(spm["avg152T1"], spm["single_subj_T1"], force=True)
    assert forced.cross_contrast and forced.forced and forced.score > 0.6
    assert not decide(spm["avg152T1"], spm["avg152T2"], force=False).cross_contrast


def test_disjoint_brains_give_nan_score():
    a = torch.zeros(1, 1, 32, 32, 32)
    b = torch.zeros(1, 1, 32, 32, 32)
    a[..., :10, :, :] = 100
    b[..., 20:, :, :] = 100
    assert math.isnan(gate_score(a, b))
    assert decide(a, b) == GateDecision(decide(a, b).score, False, False)


def test_different_grids_are_rejected():
    with pytest.raises(ValueError, match="share a grid"):
        gate_score(torch.ones(1, 1, 8, 8, 8), torch.ones(1, 1, 8, 8, 9))


def _write(path: Path, volume: torch.Tensor) -> str:
    nib.save(nib.Nifti1Image(volume[0, 0].numpy().astype(np.float32), np.eye(4)), str(path))
    return str(path)


def test_cli_prints_score_and_decision(tmp_path, spm, capsys):
    t1 = _write(tmp_path / "t1.nii.gz", spm["avg152T1"])
    t2 = _write(tmp_path / "t2.nii.gz", spm["avg152T2"])
    assert cli.main(["gate", t1, t2]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("score=-") and line.endswith("decision=cross-contrast")
    assert cli.main(["gate", t1, t2, "--threshold", "-0.9"]) == 0
    line = capsys.readouterr().out.strip()  # same-contrast by the score, but below ambiguous_below and the tissue's
    assert " tissue=-" in line and line.endswith("decision=same-contrast (ambiguous: registered as cross-contrast)")


def test_cli_reports_mismatched_grids_in_one_line(tmp_path, capsys):
    a = _write(tmp_path / "a.nii.gz", torch.ones(1, 1, 8, 8, 8))
    b = _write(tmp_path / "b.nii.gz", torch.ones(1, 1, 8, 8, 9))
    assert cli.main(["gate", a, b]) == 2
    err = capsys.readouterr().err.strip()
    assert "b.nii.gz" in err and "differs" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_full_size_pair_takes_under_half_a_second_of_cpu():
    torch.set_num_threads(1)
    a = blob_volume(0, (160, 224, 192))
    b = blob_volume(1, (160, 224, 192))
    gate_score(a, b)
    start = time.process_time()
    gate_score(a, b)
    assert time.process_time() - start < 0.5
