"""The benchmark tables carry the TRE proxy: bench.methods.score measures it on the label map the Dice uses, and
bench.registration / bench.anytime print it (``–`` for rows of earlier runs without it)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bench import anytime, registration
from bench.common import evaluator_scores, markdown_header, mean_tre_mm
from bench.methods import score


def _blocks() -> np.ndarray:
    labels = np.zeros((16, 14, 12), np.int32)
    labels[3:7, 3:8, 2:6] = 1
    labels[8:12, 5:10, 5:10] = 2
    return labels


def test_evaluator_tre_is_the_tre_proxy_of_the_labels_warped_as_for_dice():
    fixed = _blocks()
    moving = np.roll(fixed, 2, axis=0)  # the moving labels sit 2 voxels further along axis 0
    affine = np.diag([1.5, 1.0, 1.0, 1.0])
    shift = np.zeros((3, *fixed.shape))
    shift[0] = 2.0  # warped(x) = moving(x + u(x)) = fixed(x): the exact field
    exact = evaluator_scores(fixed, moving, shift, fixed, [1, 2], affine=affine)
    zero = evaluator_scores(fixed, moving, np.zeros_like(shift), fixed, [1, 2], affine=affine)
    assert exact["dice"] == pytest.approx(1.0) and exact["tre"] == pytest.approx(0.0)
    assert zero["tre"] == pytest.approx(mean_tre_mm(fixed, moving, [1, 2], affine)) == pytest.approx(3.0)
    assert "tre" not in evaluator_scores(fixed, moving, shift, fixed, [1, 2])  # no affine: no TRE


def test_score_of_a_case_folder_has_tre_and_the_zero_field_tre(tmp_path):
    fixed = _blocks()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for name, array in (("fixed", fixed * 100), ("moving", fixed * 100), ("fixed_seg", fixed)):
        nib.save(nib.Nifti1Image(array, affine), str(tmp_path / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(np.roll(fixed, 1, axis=1), affine), str(tmp_path / "moving_seg.nii.gz"))
    (tmp_path / "meta.json").write_text(json.dumps({"set": "toy", "mask": "fixed", "contrast": "same"}))
    row = score(tmp_path, np.zeros((3, *fixed.shape)))
    assert row["tre"] == pytest.approx(2.0) and row["tre_affine"] == pytest.approx(2.0)  # 1 voxel of 2 mm
    shift = np.zeros((3, *fixed.shape))
    shift[1] = 1.0
    assert score(tmp_path, shift)["tre"] == pytest.approx(0.0)


def _row(method: str, dice: float, tre: float | None, seconds: float) -> dict:
    row = {"case": "p0", "set": "lumir-t1", "method": method, "dice": dice, "dice_affine": 0.5, "hd95": 3.0}
    row.update(ndv=0.0, seconds=seconds, rss_gib=1.0, tre_affine=2.5)
    return row if tre is None else {**row, "tre": tre}


def test_registration_table_has_tre_columns_and_dashes_for_old_rows():
    rows = [_row("caio_engine", 0.70, 1.75, 20.0), _row("greedy", 0.69, 1.90, 100.0), _row("ants", 0.68, None, 50.0)]
    text = registration.table(rows, ["caio_engine", "greedy", "ants"])
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:9] == [
        "set",
        "method",
        "pairs",
        "Dice",
        "affine Dice",
        "TRE (mm)",
        "affine TRE (mm)",
        "HD95 (vox)",
        "NDV %",
    ]
    assert lines[1] == markdown_header(header)[1]
    cells = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:5]}
    assert cells["caio_engine"][5:7] == ["1.75", "2.50"]
    assert cells["ants"][5] == "–"  # a row of an earlier run, without the TRE proxy
    assert "Dice diff +0.010, TRE diff -0.15 mm, time ratio 0.20" in text
    assert "| p0 | 0.500 / 2.50 | 0.700 / 1.75 (20 s) | 0.690 / 1.90 (100 s) | 0.680 / – (50 s) |" in text


def test_registration_default_methods_leave_fireants_out():
    assert "fireants" in registration.METHODS and "fireants" not in registration.DEFAULT_METHODS


def test_anytime_table_has_tre_columns():
    rows = [
        {"case": c, "budget_s": 10.0, "dice": d, "dice_affine": 0.5, "tre": t, "tre_affine": 2.4, "ndv": 0.0}
        | {"wall_s": 10.2, "overrun_pct": 2.0, "rss_gib": 1.1}
        for c, d, t in (("a", 0.70, 1.8), ("b", 0.60, 2.2))
    ]
    lines = anytime.table(rows).splitlines()
    assert lines[0].startswith("| budget (s) | pairs | Dice | zero-field Dice | TRE (mm) | zero-field TRE (mm) |")
    assert lines[2].startswith("| 10 | 2 | 0.650 | 0.500 | 2.00 | 2.40 |")
    assert "| a | 0.700 / 1.80 (10 s) |" in lines
