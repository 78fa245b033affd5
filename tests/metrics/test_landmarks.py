"""TRE from landmark images (caio.metrics.landmarks), and label maps as landmarks (the benchmark tables' TRE proxy)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from caio import cli
from caio.metrics.evaluate import evaluate_folder, evaluate_pair
from caio.metrics.landmarks import label_landmarks, landmark_tre

SHAPE = (20, 20, 20)


def two_regions() -> np.ndarray:
    """Label 3: a 4x4x4 cube at [4:8]^3 (centroid 5.5, 5.5, 5.5); label 7: a 2x6x2 bar at [12:14, 6:12, 12:14]
    (centroid 12.5, 8.5, 12.5); label 9: one voxel at (2, 15, 3)."""
    labels = np.zeros(SHAPE, np.int16)
    labels[4:8, 4:8, 4:8] = 3
    labels[12:14, 6:12, 12:14] = 7
    labels[2, 15, 3] = 9
    return labels


def test_tre_of_regions_moved_by_a_known_shift_is_the_hand_computed_centroid_distance():
    fixed = two_regions()
    moving = np.zeros_like(fixed)
    moving[6:10, 4:8, 4:8] = 3  # the cube 2 voxels further along axis 0: centroid (7.5, 5.5, 5.5)
    moving[12:14, 9:15, 12:14] = 7  # the bar 3 voxels along axis 1: centroid (12.5, 11.5, 12.5)
    moving[5, 19, 3] = 9  # the voxel (3, 4, 0) away: distance 5
    ids, distances = landmark_tre(fixed, moving)
    assert ids == [3, 7, 9]
    assert distances == pytest.approx([2.0, 3.0, 5.0])
    no_registration = evaluate_pair(None, None, np.zeros((3, *SHAPE)), None, fixed, moving)
    assert no_registration.tre == pytest.approx(10.0 / 3)


def test_a_field_that_undoes_the_shift_gives_zero_tre_and_the_labels_as_landmarks_agree():
    fixed = two_regions()
    moving = np.roll(fixed, 2, axis=0)  # every region 2 voxels along axis 0
    disp = np.zeros((3, *SHAPE))
    disp[0] = 2.0  # warped(x) = moving(x + 2): back in place
    exact = evaluate_pair(None, None, disp, None, fixed, moving)
    assert exact.tre == pytest.approx(0.0) and exact.landmark_ids == (3, 7, 9)
    shifted = evaluate_pair(None, None, np.zeros((3, *SHAPE)), None, fixed, moving)
    assert shifted.tre == pytest.approx(2.0)


def test_label_landmarks_keep_only_the_listed_non_zero_labels():
    labels = two_regions()
    kept = label_landmarks(labels, [0, 7, 9, 42])
    assert set(np.unique(kept)) == {0, 7, 9} and (kept[labels == 3] == 0).all()


def _folder(root, fixed_labels, moving_labels):
    for kind in ("images", "labels"):
        (root / f"{kind}Val").mkdir(parents=True)
    for name, labels in (("0001_0000", fixed_labels), ("0002_0000", moving_labels)):
        image = (labels > 0).astype(np.float32) * 100
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesVal" / f"LUMIRMRI_{name}.nii.gz")
        nib.save(nib.Nifti1Image(labels, np.eye(4)), root / "labelsVal" / f"LUMIRMRI_{name}.nii.gz")
    entry = {"fixed": "./imagesVal/LUMIRMRI_0001_0000.nii.gz", "moving": "./imagesVal/LUMIRMRI_0002_0000.nii.gz"}
    (root / "data.json").write_text(json.dumps({"validation": [entry]}))
    disp_dir = root / "disp"
    disp_dir.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 3), np.float32), np.eye(4)), disp_dir / "disp_0001_0002.nii.gz")
    return root / "data.json", disp_dir


def test_evaluate_reports_label_centroid_tre_only_when_asked(tmp_path, capsys):
    fixed = two_regions()
    json_path, disp_dir = _folder(tmp_path, fixed, np.roll(fixed, 2, axis=0))
    args = (json_path, tmp_path, disp_dir)
    (plain,), _ = evaluate_folder(*args, labels=[3, 7, 9], expected_shape=SHAPE)
    assert plain["tre"] is None and plain["dice"] < 1
    (row,), aggregates = evaluate_folder(*args, labels=[3, 7], expected_shape=SHAPE, labels_as_landmarks=True)
    assert row["landmark_ids"] == [3, 7] and row["tre"] == pytest.approx(2.0)  # label 9 is not in the list
    common = ["--json", str(json_path), "--data-root", str(tmp_path), "--disp-dir", str(disp_dir)]
    flags = ["--labels", "3", "7", "--shape", *map(str, SHAPE), "--labels-as-landmarks", "-o", str(tmp_path / "m")]
    assert cli.main(["evaluate", *common, *flags]) == 0
    written = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert written["pairs"][0]["tre"] == pytest.approx(2.0)
