"""``caio register`` on your own scans: affine + deformable across grids, masks, the inverse, ITK outputs, and
``caio warp`` applying them; every new bad input is one line and exit code 2."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from helpers.affine_cases import (
    brain_box,
    crop_to_content,
    known_transform,
    moved_image,
    oriented_grid,
    reduce,
    save,
    spm_image,
)

from caio import cli
from caio.io.fields import read_field
from caio.io.itk import read_itk_affine
from caio.transforms import corner_error_mm
from caio.transforms.world import centre_of_mass

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MOVING_SHAPE = (56, 64, 54)


def ncc(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    a, b = a[where] - a[where].mean(), b[where] - b[where].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Fixed: SPM T1 at 4 mm (RAS); moving: the same brain moved by a known affine on an LPS 3 mm grid; a fixed mask
    on the 2 mm grid of the original (another grid), a moving label map (brain / bright tissue)."""
    folder = tmp_path_factory.mktemp("own_scans")
    source, source_affine = spm_image()
    fixed, fixed_affine = crop_to_content(*reduce(source, source_affine, 4.0))
    centre = centre_of_mass(fixed, fixed_affine)
    truth = known_transform((5, -4, 6), (6, -5, 4), centre, scale=(1.04, 0.96, 1.02))
    moving_affine = oriented_grid(3.0, MOVING_SHAPE, truth[:3, :3] @ centre + truth[:3, 3] + [2, -3, 1])
    moving = moved_image(source, source_affine, truth, MOVING_SHAPE, moving_affine)
    labels = (moving > 20).astype(np.int16) + (moving > np.percentile(moving[moving > 20], 60)).astype(np.int16)
    paths = {
        "fixed": save(folder / "fixed.nii.gz", fixed, fixed_affine),
        "moving": save(folder / "moving.nii.gz", moving, moving_affine),
        "labels": save(folder / "labels.nii.gz", labels, moving_affine),
        "fixed_mask": save(folder / "fixed_mask_2mm.nii.gz", (source > 0).astype(np.uint8), source_affine),
    }
    outputs = {name: folder / f"{name}.nii.gz" for name in ("disp", "warped", "warp", "inverse")}
    outputs["affine"] = folder / "affine.mat"
    argv = ["register", str(paths["fixed"]), str(paths["moving"]), "-o", str(outputs["disp"])]
    argv += ["--warped", str(outputs["warped"]), "--itk-affine", str(outputs["affine"])]
    argv += ["--itk-warp", str(outputs["warp"]), "--inverse-warp", str(outputs["inverse"])]
    argv += ["--fixed-mask", str(paths["fixed_mask"]), "--similarity", "lncc"]
    argv += ["--device", "cpu", "--threads", "1", "--budget-s", "120"]
    return folder, paths, outputs, truth, argv


@pytest.fixture(scope="module")
def registered(scans):
    folder, paths, outputs, truth, argv = scans
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(argv)
    return code, buffer.getvalue()


def test_register_recovers_the_known_affine_and_aligns_the_scans(scans, registered):
    folder, paths, outputs, truth, _ = scans
    code, printed = registered
    assert code == 0, printed
    assert "affine=affine" in printed and "inverse_error_mm=" in printed
    fixed_img = nib.load(str(paths["fixed"]))
    fixed = fixed_img.get_fdata()
    estimate = read_itk_affine(outputs["affine"])
    assert corner_error_mm(estimate, truth, *brain_box(fixed, fixed_img.affine)) < 1.5
    brain = fixed > 0
    warped = nib.load(str(outputs["warped"])).get_fdata()
    header_only = outputs["warped"].with_name("header_only.nii.gz")
    reference = ["--reference", str(paths["fixed"]), "--moving", str(paths["moving"]), "-o", str(header_only)]
    assert cli.main(["warp", "--itk-affine", str(_identity_affine(folder)), *reference]) == 0
    assert ncc(warped, fixed, brain) > 0.9 > ncc(nib.load(str(header_only)).get_fdata(), fixed, brain)


def _identity_affine(folder):
    path = folder / "identity.txt"
    path.write_text(
        "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
        "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n"
    )
    return path


def test_the_field_points_into_the_moving_grid_and_warp_reproduces_warped(scans, registered):
    folder, paths, outputs, *_ = scans
    assert registered[0] == 0
    field = read_field(outputs["disp"])
    moving = nib.load(str(paths["moving"]))
    assert field.target.shape == MOVING_SHAPE and np.allclose(field.target.affine, moving.affine)
    np.testing.assert_array_equal(field.affine, nib.load(str(paths["fixed"])).affine)
    again = folder / "again.nii.gz"
    assert cli.main(["warp", "--disp", str(outputs["disp"]), "--moving", str(paths["moving"]), "-o", str(again)]) == 0
    np.testing.assert_allclose(
        nib.load(str(again)).get_fdata(), nib.load(str(outputs["warped"])).get_fdata(), atol=1e-3
    )
    itk = folder / "itk.nii.gz"
    argv = ["warp", "--itk-warp", str(outputs["warp"]), "--itk-affine", str(outputs["affine"])]
    assert cli.main([*argv, "--moving", str(paths["moving"]), "-o", str(itk)]) == 0
    np.testing.assert_allclose(nib.load(str(itk)).get_fdata(), nib.load(str(again)).get_fdata(), atol=2e-2)


def test_labels_follow_with_nearest_and_keep_their_dtype(scans, registered):
    folder, paths, outputs, *_ = scans
    assert registered[0] == 0
    out = folder / "labels_on_fixed.nii.gz"
    argv = ["warp", "--disp", str(outputs["disp"]), "--moving", str(paths["labels"]), "-o", str(out), "--nearest"]
    assert cli.main(argv) == 0
    warped = nib.load(str(out))
    assert warped.get_data_dtype() == np.int16
    fixed = nib.load(str(paths["fixed"])).get_fdata()
    assert dice(np.asarray(warped.dataobj) > 0, fixed > 20) > 0.9


def test_the_inverse_brings_the_fixed_scan_onto_the_moving_grid(scans, registered):
    folder, paths, outputs, *_ = scans
    code, printed = registered
    assert code == 0
    error = float(printed.split("inverse_error_mm=")[1].split()[0])
    assert error < 0.5
    inverse = read_field(outputs["inverse"])
    moving = nib.load(str(paths["moving"]))
    assert inverse.shape == MOVING_SHAPE and inverse.target.shape == nib.load(str(paths["fixed"])).shape
    back = folder / "fixed_on_moving.nii.gz"
    assert cli.main(["warp", "--disp", str(outputs["inverse"]), "--moving", str(paths["fixed"]), "-o", str(back)]) == 0
    moving_data = moving.get_fdata()
    assert ncc(nib.load(str(back)).get_fdata(), moving_data, moving_data > 0) > 0.85


def test_a_displacement_of_another_grid_is_refused_by_warp(scans, registered, capsys):
    folder, paths, outputs, *_ = scans
    assert registered[0] == 0
    capsys.readouterr()
    argv = ["warp", "--disp", str(outputs["disp"]), "--moving", str(paths["fixed"]), "-o", str(folder / "x.nii.gz")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disp.nii.gz" in err[0] and "fixed.nii.gz" in err[0] and "grid" in err[0]


@pytest.mark.parametrize("case", ["empty", "identity_other_shape", "no_overlap", "bad_suffix", "not_itk"])
def test_bad_inputs_are_one_line_and_exit_2(scans, tmp_path, capsys, case):
    _, paths, _, _, argv = scans
    argv = [a for a in argv]  # the fixture's command, then one thing made wrong
    fixed = nib.load(str(paths["fixed"]))
    if case == "empty":
        bad = save(tmp_path / "empty_mask.nii.gz", np.zeros(fixed.shape, np.uint8), fixed.affine)
        argv[argv.index("--fixed-mask") + 1], expected = str(bad), "empty mask"
    elif case == "identity_other_shape":
        bad = save(tmp_path / "headerless_mask.nii.gz", np.ones((10, 11, 12), np.uint8), np.eye(4))
        argv[argv.index("--fixed-mask") + 1], expected = str(bad), "no affine maps it"
    elif case == "no_overlap":
        far = fixed.affine.copy()
        far[:3, 3] += 1000.0
        bad = save(tmp_path / "far_mask.nii.gz", np.ones(fixed.shape, np.uint8), far)
        argv += ["--moving-mask", str(bad)]
        expected = "does not overlap"
    elif case == "bad_suffix":
        bad = tmp_path / "affine.xfm"
        argv[argv.index("--itk-affine") + 1], expected = str(bad), "must end in .mat or .txt"
    else:
        bad = tmp_path / "not_itk.txt"
        bad.write_text("this is not a transform\n")
        argv = ["warp", "--itk-affine", str(bad), "--reference", str(paths["fixed"]), "--moving", str(paths["moving"])]
        argv += ["-o", str(tmp_path / "out.nii.gz")]
        expected = "not an ITK transform file"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad.name in err[0] and expected in err[0], err
