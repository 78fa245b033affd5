"""caio.spatial: warping, composition, resizing, Jacobians, and the evaluator mirrors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from caio import io, spatial
from caio.metrics import ndv

SHAPE = (20, 24, 28)  # all different, so that an axis mix-up cannot pass


def smooth_field(shape=SHAPE, amplitude: float = 2.0, sigma: float = 3.0, seed: int = 0) -> torch.Tensor:
    """``[1, 3, *shape]`` float64 random smooth displacement, largest component ``amplitude`` voxels."""
    rng = np.random.default_rng(seed)
    comps = [ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="nearest") for _ in range(3)]
    field = np.stack([c / np.abs(c).max() * amplitude for c in comps])
    return torch.from_numpy(field)[None]


def smooth_image(shape=SHAPE, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0, mode="nearest")
    return torch.from_numpy(image / image.std())[None, None]


def folding_field(shape=SHAPE) -> torch.Tensor:
    """A Gaussian bump of height 8 voxels along axis 0: folds the map near its centre."""
    grid = spatial.identity_grid(shape, dtype=torch.float64)
    centre = torch.tensor([s / 2 for s in shape], dtype=torch.float64).view(1, 3, 1, 1, 1)
    bump = 8.0 * torch.exp(-((grid - centre) ** 2).sum(1) / 8.0)
    disp = torch.zeros((1, 3, *shape), dtype=torch.float64)
    disp[:, 0] = bump
    return disp


def interior(array, margin: int):
    return array[..., margin:-margin, margin:-margin, margin:-margin]


def test_warp_by_constant_integer_shift_equals_roll_in_the_interior():
    image = smooth_image()
    shift = (2, -3, 1)
    disp = torch.zeros((1, 3, *SHAPE), dtype=torch.float64)
    for axis, s in enumerate(shift):
        disp[:, axis] = s
    warped = spatial.warp(image, disp)
    # warped(x) = image(x + shift)  <=>  np.roll by -shift
    rolled = np.roll(image.numpy(), [-s for s in shift], axis=(2, 3, 4))
    np.testing.assert_allclose(interior(warped.numpy(), 3), interior(rolled, 3), atol=1e-12)


def test_warp_matches_scipy_map_coordinates_linear_nearest_mode():
    image, disp = smooth_image(), smooth_field(amplitude=3.0)
    warped = spatial.warp(image, disp, mode="bilinear", padding_mode="border")[0, 0].numpy()
    coords = spatial.identity_grid_np(SHAPE) + disp[0].numpy()
    reference = ndimage.map_coordinates(image[0, 0].numpy(), coords, order=1, mode="nearest")
    assert (coords < 0).any() or (coords[0] > SHAPE[0] - 1).any()  # some samples are outside: border mode is tested
    np.testing.assert_allclose(warped, reference, atol=1e-5)


def test_compose_with_zero_is_identity():
    u = smooth_field()
    zero = torch.zeros_like(u)
    torch.testing.assert_close(spatial.compose(u, zero), u, atol=1e-10, rtol=0)
    torch.testing.assert_close(spatial.compose(zero, u), u, atol=1e-10, rtol=0)


def test_compose_translation_with_its_negative_is_zero():
    t = torch.zeros((1, 3, *SHAPE), dtype=torch.float64)
    t[:, 0], t[:, 1], t[:, 2] = 1.5, -2.25, 0.75
    torch.testing.assert_close(spatial.compose(t, -t), torch.zeros_like(t), atol=1e-10, rtol=0)


def test_warp_twice_equals_warp_by_composition_for_smooth_fields():
    # On a linear image trilinear interpolation is exact, so both sides agree to rounding
    # wherever no sample leaves the volume; on a smooth image only interpolation blur remains.
    grid = spatial.identity_grid(SHAPE, dtype=torch.float64)
    linear = (0.3 * grid[:, 0] - 0.2 * grid[:, 1] + 0.1 * grid[:, 2])[:, None]
    u, v = smooth_field(amplitude=2.0, sigma=4.0, seed=2), smooth_field(amplitude=2.0, sigma=4.0, seed=3)
    for image, tolerance in ((linear, 1e-9), (smooth_image(), 0.1)):
        twice = spatial.warp(spatial.warp(image, u), v)
        once = spatial.warp(image, spatial.compose(u, v))
        assert (interior(twice, 5) - interior(once, 5)).abs().max() < tolerance  # |u|, |v| <= 2: all inside
    # the other order is clearly different, so the test can fail
    wrong = spatial.warp(linear, spatial.compose(v, u))
    assert (interior(spatial.warp(spatial.warp(linear, u), v), 5) - interior(wrong, 5)).abs().mean() > 1e-3


@pytest.mark.parametrize("new_shape", [(10, 12, 14), (39, 47, 55)])
def test_resize_displacement_scales_a_translation_by_grid_ratio(new_shape):
    disp = torch.zeros((1, 3, *SHAPE), dtype=torch.float64)
    values = (1.0, -2.0, 3.0)
    for axis, value in enumerate(values):
        disp[:, axis] = value
    resized = spatial.resize_displacement(disp, new_shape)
    assert tuple(resized.shape) == (1, 3, *new_shape)
    for axis, value in enumerate(values):
        expected = value * (new_shape[axis] - 1) / (SHAPE[axis] - 1)
        torch.testing.assert_close(resized[0, axis], torch.full(new_shape, expected, dtype=torch.float64))


def test_jacobian_determinant_of_identity_is_one_and_folding_is_negative():
    jac = spatial.jacobian_determinant(torch.zeros((1, 3, *SHAPE), dtype=torch.float64))
    assert tuple(jac.shape) == (1, *SHAPE)
    torch.testing.assert_close(jac, torch.ones_like(jac))
    assert (spatial.jacobian_determinant(folding_field()) < 0).any()
    # a uniform stretch by 1.1 along axis 2 has determinant 1.1 everywhere
    stretch = torch.zeros((1, 3, *SHAPE), dtype=torch.float64)
    stretch[:, 2] = 0.1 * spatial.identity_grid(SHAPE, dtype=torch.float64)[:, 2]
    torch.testing.assert_close(spatial.jacobian_determinant(stretch), torch.full_like(jac, 1.1))


def test_ndv_of_identity_is_zero_and_of_a_folded_field_positive():
    assert ndv.ndv_percent(np.zeros((3, *SHAPE))) == 0.0
    assert ndv.ndv_percent(smooth_field(amplitude=0.3, sigma=4.0)[0].numpy()) == 0.0
    folded = folding_field()[0].numpy()
    assert ndv.ndv_percent(folded) > 0.0
    mask = np.zeros(SHAPE, bool)  # a mask away from the fold sees nothing
    mask[:3, :3, :3] = True
    assert ndv.ndv_percent(folded, mask) == 0.0


@pytest.mark.parametrize("rows_per_chunk", [1, 5, 100])
def test_ndv_percent_equals_the_sum_over_the_ten_full_jacobian_maps(rows_per_chunk):
    disp = (folding_field() + smooth_field(amplitude=1.5, sigma=2.0, seed=4))[0].numpy()
    mask = np.random.default_rng(5).random(SHAPE) > 0.3
    crop = (slice(1, -1),) * 3
    reference = sum(np.maximum(-j[crop], 0)[mask[crop]].sum() for j in ndv.tetrahedral_jacobians(disp))
    reference = 100.0 * reference / 12.0 / mask[crop].sum()
    assert reference > 0.1
    assert ndv.ndv_percent(disp, mask, rows_per_chunk=rows_per_chunk) == pytest.approx(reference, rel=1e-12)


def test_gaussian_blur_keeps_constants_and_resize_image_keeps_shape():
    image = torch.full((1, 1, *SHAPE), 3.0)
    torch.testing.assert_close(spatial.gaussian_blur(image, [1.0, 0.0, 2.0]), image)
    impulse = torch.zeros((1, 1, *SHAPE))
    impulse[0, 0, 10, 12, 14] = 1.0
    blurred = spatial.gaussian_blur(impulse, [0.0, 0.0, 1.5])[0, 0]  # spreads along axis 2 only
    assert blurred.sum() == pytest.approx(1.0, abs=1e-6)
    assert blurred[10, 12].sum() == pytest.approx(1.0, abs=1e-6) and blurred[10, 12, 13] > 0.1
    assert tuple(spatial.resize_image(smooth_image().float(), (10, 12, 14)).shape) == (1, 1, 10, 12, 14)


# ------------------------------------------------------------------ official evaluator fixture


@pytest.fixture(scope="module")
def lumir_eval(fixtures_dir: Path) -> Path:
    return fixtures_dir / "lumir_eval"


@pytest.mark.parametrize("case,fixed_id,moving_id", [("A", "3455", "3454"), ("B", "3457", "3456")])
def test_warp_labels_nearest_and_ndv_reproduce_fixture(lumir_eval, case, fixed_id, moving_id):
    expected = json.loads((lumir_eval / "expected.json").read_text())["cases"][case]
    intermediates = np.load(lumir_eval / "intermediates.npz")
    gt = lumir_eval / "ground_truth"
    disp = io.read_displacement(
        lumir_eval / "submission" / f"disp_{fixed_id}_{moving_id}.nii.gz", expected_shape=(40, 48, 44)
    )
    for kind, key in (("labelsVal", "seg"), ("landmarksVal", "landmarks")):
        moving = np.asarray(nib.load(str(gt / kind / f"LUMIRMRI_{moving_id}_0000.nii.gz")).dataobj)
        warped = spatial.warp_labels_nearest(moving, disp)
        wanted = intermediates[f"case{case}_warped_moving_{key}"]
        assert warped.dtype == moving.dtype
        np.testing.assert_array_equal(warped, wanted)
    fixed_image = np.asarray(nib.load(str(gt / "imagesVal" / f"LUMIRMRI_{fixed_id}_0000.nii.gz")).get_fdata())
    assert ndv.ndv_percent(disp, fixed_image > 0) == pytest.approx(expected["ndv_percent"], rel=1e-9, abs=1e-15)
    sums = dict(
        zip(
            ["+x+y+z", "+x+y-z", "+x-y+z", "+x-y-z", "-x+y+z", "-x+y-z", "-x-y+z", "-x-y-z", "Jstar_1", "Jstar_2"],
            ndv.tetrahedral_jacobians(disp),
        )
    )
    mask = (fixed_image > 0)[1:-1, 1:-1, 1:-1]
    for name, jac in sums.items():
        neg = np.maximum(-jac[1:-1, 1:-1, 1:-1], 0)[mask].sum()
        assert neg == pytest.approx(expected["ndv_per_scheme_sum_neg_part_in_mask"][name], rel=1e-6, abs=1e-9)


def test_warp_labels_nearest_matches_map_coordinates_probe(lumir_eval):
    probe = json.loads((lumir_eval / "map_coordinates_order0_probe.json").read_text())

    def sample(array: np.ndarray, point) -> float:
        # a 1-voxel fixed grid: the identity is 0, so the coordinate equals the displacement exactly
        disp = np.array(point, dtype=np.float64).reshape(3, 1, 1, 1)
        return float(spatial.warp_labels_nearest(array, disp)[0, 0, 0])

    line = np.array(probe["array_1d"]).reshape(-1, 1, 1)
    assert [sample(line, (x, 0.0, 0.0)) for x in probe["coords_1d"]] == probe["values_1d"]
    cube = np.arange(1, 61, dtype=np.float64).reshape(probe["array_3d_shape"])
    points = np.array(probe["coords_3d_rows_are_axes"]).T
    assert [sample(cube, p) for p in points] == probe["values_3d"]
