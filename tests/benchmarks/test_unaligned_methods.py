"""bench.unaligned's FireANTs method: run only when named, an error row saying how to install it when it is not,
and its coordinates read in nibabel's axis order (SimpleITK's arrays are reversed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from bench import unaligned
from bench.methods import FIREANTS_INSTALL, fireants_modules
from bench.unaligned_methods import DEFAULT_METHODS, METHODS, fireants_field_in_voxels, fireants_moving_voxels, score


def test_fireants_is_a_method_but_not_a_default_one():
    assert "fireants" in METHODS and "fireants" not in DEFAULT_METHODS
    assert unaligned.parse_args([]).methods == list(DEFAULT_METHODS)
    assert unaligned.parse_args(["--methods", "fireants"]).methods == ["fireants"]


def test_fireants_missing_gives_an_error_row(tmp_path):
    labels = np.zeros((8, 7, 6), np.int32)
    labels[2:5, 2:5, 1:4] = 1
    case = tmp_path / "unaligned_toy"
    case.mkdir()
    for name in ("fixed", "moving", "fixed_seg", "moving_seg"):
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(case / f"{name}.nii.gz"))
    (case / "meta.json").write_text(json.dumps({"set": "toy", "cross": False}))

    def missing(name: str):
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")

    def run_without_fireants(pair, work, threads):  # the installed run_fireants' first step, with no package to import
        fireants_modules(import_module=missing)

    row = score(case, "fireants", tmp_path / "work", 1, methods={"fireants": run_without_fireants})
    assert row["method"] == "fireants" and row["set"] == "toy" and "dice" not in row
    assert row["error"].startswith("RuntimeError: fireants not installed") and FIREANTS_INSTALL in row["error"]
    assert f"| toy | unaligned_toy | fireants | {row['error']} |" in unaligned.case_table([row])


def _grid_images(shape: tuple[int, int, int]) -> SimpleNamespace:
    """A stand-in for FireANTs' ``BatchedImages`` of a nibabel-``shape`` image: its array is SimpleITK's order."""
    return SimpleNamespace(shape=torch.Size([1, 1, *shape[::-1]]))


def test_fireants_coordinates_are_read_in_nibabel_axis_order():
    shape = (5, 4, 3)  # nibabel order; FireANTs' arrays are [1, 1, 3, 4, 5]
    identity = torch.eye(3, 4, dtype=torch.float64)[None]
    shift = torch.zeros(1, *shape[::-1], 3, dtype=torch.float64)
    shift[..., 0] = 0.5  # x (nibabel axis 0) moved by a quarter of the [-1, 1] span: (5 - 1) / 4 = 1 voxel
    linear = identity.clone()
    linear[0, 0, 0] = 2.0  # the affine doubles x: the warp is 0.5 voxel in fixed voxels once it is factored out

    def coordinates(fixed, moving):
        return torch.nn.functional.affine_grid(identity, [1, 1, *shape[::-1]], align_corners=True) + shift

    deformable = SimpleNamespace(
        get_warped_coordinates=coordinates,
        get_warp_parameters=lambda fixed, moving: {"affine": linear, "grid": shift},
    )
    run = SimpleNamespace(fixed=_grid_images(shape), moving=_grid_images(shape), deformable=deformable)
    expected = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    expected[0] += 1.0
    assert fireants_moving_voxels(deformable, run) == pytest.approx(expected)
    field = fireants_field_in_voxels(run)
    assert field.shape == (3, *shape)
    assert field[0] == pytest.approx(np.full(shape, 0.5)) and field[1:] == pytest.approx(np.zeros((2, *shape)))
