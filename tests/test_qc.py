"""Tests of caio.qc (QC pictures of a registration)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from caio.cli import main as cli_main
from caio.io import write_displacement, write_nifti_atomic
from caio.qc import _centre_slices, _slice, write_qc

SHAPE = (40, 56, 48)


def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ellipsoid 'brain' with a bright block; moving = shifted copy; labels = 1/2."""
    idx = np.indices(SHAPE).astype(np.float32)
    centre = (np.asarray(SHAPE, np.float32) - 1)[:, None, None, None] / 2
    r = np.sqrt((((idx - centre) / (np.asarray(SHAPE)[:, None, None, None] * 0.4)) ** 2).sum(0))
    labels = (r < 1).astype(np.uint8) + ((r < 0.5) & (idx[1] > centre[1, 0, 0, 0])).astype(np.uint8)
    fixed = np.where(labels == 2, 200.0, np.where(labels == 1, 90.0, 0.0)).astype(np.float32)
    moving = np.roll(fixed, 3, axis=1)
    return fixed, moving, labels


def _folding_disp() -> np.ndarray:
    idx = np.indices(SHAPE).astype(np.float32)
    disp = np.zeros((3, *SHAPE), np.float32)
    disp[1] = 3.0  # undoes the roll
    bump = np.exp(-((idx[0] - 20) ** 2 + (idx[1] - 28) ** 2 + (idx[2] - 24) ** 2) / (2 * 2.0**2))
    disp[0] += 6.0 * bump  # folds: d disp0 / d x0 < -1 on one side of the bump
    return disp


def _png_std(path: Path) -> float:
    import matplotlib.image

    return float(np.asarray(matplotlib.image.imread(str(path)), dtype=np.float64).std())


def test_write_qc_writes_two_nontrivial_pngs(tmp_path: Path):
    fixed, moving, labels = _phantom()
    paths = write_qc(fixed, moving, _folding_disp(), tmp_path / "qc", "disp_0002_0001", fixed_labels=labels)
    assert [p.name for p in paths] == ["disp_0002_0001_images.png", "disp_0002_0001_deformation.png"]
    for path in paths:
        assert path.is_file() and path.stat().st_size > 10_000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert _png_std(path) > 0.05
    assert not list((tmp_path / "qc").glob(".*.tmp"))


def test_write_qc_accepts_tensors_and_marks_folds(tmp_path: Path):
    fixed, moving, _ = _phantom()
    disp = torch.from_numpy(_folding_disp())[None]
    smooth = torch.zeros_like(disp)
    folded = write_qc(
        torch.from_numpy(fixed)[None, None], torch.from_numpy(moving)[None, None], disp, tmp_path, "fold"
    )[1]
    plain = write_qc(fixed, moving, smooth, tmp_path, "plain")[1]
    import matplotlib.image

    def lime_pixels(path: Path) -> int:
        rgb = np.asarray(matplotlib.image.imread(str(path)))[..., :3]
        return int(((rgb[..., 1] > 0.9) & (rgb[..., 0] < 0.3) & (rgb[..., 2] < 0.3)).sum())

    n_folded, n_plain = lime_pixels(folded), lime_pixels(plain)
    assert n_folded > 20 and n_plain <= 2, (n_folded, n_plain)


def test_write_qc_rejects_mismatched_grids(tmp_path: Path):
    fixed, moving, _ = _phantom()
    with pytest.raises(ValueError):
        write_qc(fixed, moving[:-1], np.zeros((3, *SHAPE), np.float32), tmp_path, "bad")


def test_slices_are_displayed_in_ras_orientation():
    volume = np.zeros((10, 12, 14))
    volume[9, 0, 0] = 1.0  # right, posterior, inferior corner
    axial = _slice(volume, 2, 0)  # imshow(origin="lower"): rows go up (anterior), columns right
    assert axial.shape == (12, 10) and axial[0, 9] == 1.0  # bottom right = posterior right
    coronal = _slice(volume, 1, 0)
    assert coronal.shape == (14, 10) and coronal[0, 9] == 1.0  # bottom right = inferior right
    sagittal = _slice(volume, 0, 9)
    assert sagittal.shape == (14, 12) and sagittal[0, 0] == 1.0  # bottom left = inferior posterior


def test_centre_slices_follow_the_mask():
    mask = np.zeros((40, 50, 60), bool)
    mask[10:20, 5:15, 30:50] = True
    assert _centre_slices(mask) == [14 + 4, 9, 39]


def test_mpl_config_dir_falls_back_when_home_is_not_writable(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "missing" / "home"))
    fixed, moving, _ = _phantom()
    write_qc(fixed, moving, np.zeros((3, *SHAPE), np.float32), tmp_path / "o", "x")
    assert os.environ.get("MPLCONFIGDIR", "").startswith(tempfile_root())


def tempfile_root() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_cli_qc(tmp_path: Path, capsys):
    fixed, moving, labels = _phantom()
    write_nifti_atomic(tmp_path / "f.nii.gz", fixed.astype(np.uint8))
    write_nifti_atomic(tmp_path / "m.nii.gz", moving.astype(np.uint8))
    write_nifti_atomic(tmp_path / "l.nii.gz", labels)
    write_displacement(tmp_path / "disp_0002_0001.nii.gz", _folding_disp())
    args = [
        "qc",
        "--fixed",
        str(tmp_path / "f.nii.gz"),
        "--moving",
        str(tmp_path / "m.nii.gz"),
        "--disp",
        str(tmp_path / "disp_0002_0001.nii.gz"),
        "-o",
        str(tmp_path / "out"),
    ]
    assert cli_main(args + ["--fixed-labels", str(tmp_path / "l.nii.gz")]) == 0
    assert (tmp_path / "out/disp_0002_0001_images.png").stat().st_size > 10_000
    write_displacement(tmp_path / "small.nii.gz", np.zeros((3, 8, 8, 8), np.float32))
    args[6] = str(tmp_path / "small.nii.gz")
    assert cli_main(args) == 2
    assert "small.nii.gz" in capsys.readouterr().err
