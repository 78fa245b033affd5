"""ITK transform files (:mod:`caio.io.itk`): caio's affine and field, written for ANTs/ITK/Slicer, applied by
SimpleITK reproduce ``caio warp``; both are read back (``caio warp --itk-warp/--itk-affine``); files that are not
ITK transforms are refused with one line."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.affine_cases import crop_to_content, known_transform, moved_image, oriented_grid, reduce, save, spm_image
from scipy.spatial.transform import Rotation

from caio import cli, spatial
from caio.io.fields import write_target_field
from caio.io.itk import (
    RAS_TO_LPS,
    grid_centre,
    read_itk_affine,
    read_itk_displacement,
    write_itk_affine,
    write_itk_displacement,
)
from caio.transforms import moving_voxel_displacement
from caio.transforms.world import centre_of_mass

sitk = pytest.importorskip("SimpleITK")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Fixed: 4 mm with an oblique header; moving: LPS 3 mm; a known affine ``T`` and a smooth field ``d``."""
    folder = tmp_path_factory.mktemp("itk")
    source, source_affine = spm_image()
    fixed, fixed_affine = crop_to_content(*reduce(source, source_affine, 4.0))
    centre = centre_of_mass(fixed, fixed_affine)
    tilt = np.eye(4)
    tilt[:3, :3] = Rotation.from_euler("xyz", (7, -5, 3), degrees=True).as_matrix()
    tilt[:3, 3] = centre - tilt[:3, :3] @ centre
    fixed_affine = tilt @ fixed_affine  # oblique: ITK's direction matrix is not diagonal
    transform = known_transform((4, -3, 5), (5, -4, 3), centre, scale=(1.04, 0.97, 1.02), shear=0.03)
    moving_affine = oriented_grid(3.0, (56, 64, 54), transform[:3, :3] @ centre + transform[:3, 3])
    moving = moved_image(source, source_affine, transform, (56, 64, 54), moving_affine)
    generator = torch.Generator().manual_seed(3)
    disp = spatial.gaussian_blur(torch.randn((1, 3, *fixed.shape), generator=generator), 3.0)
    disp = disp / disp.abs().max() * 1.5
    paths = {
        "fixed": save(folder / "fixed.nii.gz", fixed, fixed_affine),
        "moving": save(folder / "moving.nii.gz", moving, moving_affine),
        "mat": folder / "affine.mat",
        "txt": folder / "affine.txt",
        "warp": folder / "warp.nii.gz",
        "disp": folder / "disp.nii.gz",
    }
    fixed_affine, moving_affine = nib.load(str(paths["fixed"])).affine, nib.load(str(paths["moving"])).affine
    field = moving_voxel_displacement(fixed.shape, fixed_affine, moving_affine, transform, disp)
    write_target_field(paths["disp"], field[0].numpy(), fixed_affine, moving.shape, moving_affine)
    write_itk_affine(paths["mat"], transform, grid_centre(fixed.shape, fixed_affine))
    write_itk_affine(paths["txt"], transform, grid_centre(fixed.shape, fixed_affine))
    write_itk_displacement(paths["warp"], disp[0].numpy(), fixed_affine)
    return folder, paths, transform, disp, fixed_affine, moving_affine, field


def sitk_array(image) -> np.ndarray:
    """SimpleITK's (z, y, x) array back in NIfTI's (x, y, z) order."""
    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))


def inside_margin(field: torch.Tensor, shape, margin: float = 1.0) -> np.ndarray:
    """Fixed voxels whose moving sample lies ``margin`` voxels inside the moving grid (both resamplers agree)."""
    coords = (field + spatial.identity_grid(field.shape[2:]))[0].numpy()
    return np.all([(coords[c] >= margin) & (coords[c] <= n - 1 - margin) for c, n in enumerate(shape)], axis=0)


def test_itk_affine_files_read_back_and_map_points_as_simpleitk(pair):
    _, paths, transform, *_ = pair
    points_ras = np.array([[10.0, -20.0, 15.0], [-40.0, 30.0, -5.0], [0.0, 0.0, 0.0]])
    for name in ("mat", "txt"):
        np.testing.assert_allclose(read_itk_affine(paths[name]), transform, atol=1e-9)
        itk = sitk.ReadTransform(str(paths[name]))
        for p in points_ras:
            p_lps = RAS_TO_LPS[:3, :3] @ p
            expected = RAS_TO_LPS[:3, :3] @ (transform[:3, :3] @ p + transform[:3, 3])
            np.testing.assert_allclose(itk.TransformPoint(tuple(p_lps)), expected, atol=1e-6)


def test_itk_field_and_affine_in_simpleitk_reproduce_caio_warp(pair):
    folder, paths, _, _, _, moving_affine, field = pair
    out = folder / "caio_warped.nii.gz"
    assert cli.main(["warp", "--disp", str(paths["disp"]), "--moving", str(paths["moving"]), "-o", str(out)]) == 0
    caio = nib.load(str(out)).get_fdata()
    displacement = sitk.ReadImage(str(paths["warp"]), sitk.sitkVectorFloat64)
    affine = sitk.ReadTransform(str(paths["mat"]))
    composite = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(displacement)])
    fixed, moving = sitk.ReadImage(str(paths["fixed"])), sitk.ReadImage(str(paths["moving"]), sitk.sitkFloat32)
    itk = sitk_array(sitk.Resample(moving, fixed, composite, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    inside = inside_margin(field, nib.load(str(paths["moving"])).shape)
    assert inside.mean() > 0.5
    difference = np.abs(itk - caio)[inside]
    assert difference.max() < 0.05, difference.max()  # intensities in [0, 255]: interpolation rounding only
    displacement = sitk.ReadImage(str(paths["warp"]), sitk.sitkVectorFloat64)  # the transform took the first one
    wrong_order = sitk.CompositeTransform([sitk.DisplacementFieldTransform(displacement), affine])
    swapped = sitk_array(sitk.Resample(moving, fixed, wrong_order, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    assert np.abs(swapped - caio)[inside].mean() > 10 * difference.mean()  # the order matters


def test_caio_warp_applies_itk_files_like_its_own_field(pair):
    folder, paths, *_ = pair
    own, itk = folder / "own.nii.gz", folder / "from_itk.nii.gz"
    moving = str(paths["moving"])
    assert cli.main(["warp", "--disp", str(paths["disp"]), "--moving", moving, "-o", str(own)]) == 0
    argv = ["warp", "--itk-warp", str(paths["warp"]), "--itk-affine", str(paths["txt"]), "--moving", moving]
    assert cli.main([*argv, "-o", str(itk)]) == 0
    np.testing.assert_allclose(nib.load(str(itk)).get_fdata(), nib.load(str(own)).get_fdata(), atol=2e-3)
    np.testing.assert_array_equal(nib.load(str(itk)).affine, nib.load(str(own)).affine)


def test_itk_displacement_file_layout(pair):
    _, paths, _, disp, fixed_affine, *_ = pair
    img = nib.load(str(paths["warp"]))
    assert img.shape == (*disp.shape[2:], 1, 3) and img.header.get_intent()[0] == "vector"
    assert img.get_data_dtype() == np.float32
    vectors, affine = read_itk_displacement(paths["warp"])
    np.testing.assert_allclose(affine, fixed_affine, atol=1e-5)
    # LPS millimetres: the x and y components of the RAS displacement change sign
    ras = np.einsum("ij,j...->i...", fixed_affine[:3, :3], disp[0].double().numpy())
    np.testing.assert_allclose(vectors, ras * np.array([-1.0, -1.0, 1.0])[:, None, None, None], atol=1e-4)


@pytest.mark.parametrize(
    ("name", "content", "flag", "message"),
    [
        ("garbage.txt", b"hello\n", "--itk-affine", "not an ITK transform file"),
        ("garbage.mat", b"\x00\x01not matlab at all" * 10, "--itk-affine", "not an ITK transform file"),
        (
            "bspline.txt",
            b"#Insight Transform File V1.0\n#Transform 0\nTransform: BSplineTransform_double_3_3\n"
            b"Parameters: 0 0 0\nFixedParameters: 0 0 0\n",
            "--itk-affine",
            "not supported",
        ),  # fmt: skip
    ],
)
def test_a_file_that_is_not_an_itk_affine_is_refused_in_one_line(pair, tmp_path, capsys, name, content, flag, message):
    _, paths, *_ = pair
    bad = tmp_path / name
    bad.write_bytes(content)
    argv = ["warp", flag, str(bad), "--reference", str(paths["fixed"]), "--moving", str(paths["moving"])]
    assert cli.main([*argv, "-o", str(tmp_path / "out.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and message in err[0], err


def test_a_scalar_image_given_as_itk_warp_is_refused_in_one_line(pair, tmp_path, capsys):
    _, paths, *_ = pair
    argv = ["warp", "--itk-warp", str(paths["fixed"]), "--moving", str(paths["moving"])]
    assert cli.main([*argv, "-o", str(tmp_path / "out.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fixed.nii.gz" in err[0] and "not an ITK displacement field" in err[0], err
