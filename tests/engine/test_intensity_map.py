"""Intensity remapping of a cross-contrast pair (caio.engine.intensity_map)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from caio.engine.intensity_map import FIXED_BINS, IntensityMap, fit_intensity_map

DATA = Path(__file__).resolve().parents[1] / "data"


def _spm(name: str) -> torch.Tensor:
    """An SPM avg152 template (2 mm, brain only), ``[1, 1, 91, 109, 91]`` float32."""
    image = np.asarray(nib.load(DATA / f"spm_avg152{name}_brain.nii.gz").dataobj, np.float32)
    return torch.from_numpy(image)[None, None]


def _correlation(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    a, b = a[where], b[where]
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_the_map_of_a_real_t2_to_its_t1_makes_it_correlate_with_the_t1():
    t1, t2 = _spm("T1"), _spm("T2")  # voxel-aligned averages of the same subjects: the identity is the truth
    mapped = fit_intensity_map(t1, t2)(t2)
    brain = t1 > 0
    assert _correlation(t2, t1, brain) < 0  # inside the brain: CSF bright, white matter dark
    assert _correlation(mapped, t1, brain) > 0.6


def test_the_map_is_the_conditional_median_of_the_fixed_image_per_moving_intensity():
    """Three fixed intensities per moving one; one voxel in each bin is an outlier (misaligned, or mixed from two
    tissues): the median keeps the bin's value, the mean is pulled a third of the way to the outlier."""
    moving = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]).reshape(1, 1, 1, 2, 3)
    fixed = torch.tensor([8.0, 8.0, 2.0, 2.0, 2.0, 8.0]).reshape(1, 1, 1, 2, 3)
    step = 8.0 / (FIXED_BINS - 1)  # the median is read to the centre of a fixed-intensity bin
    median = fit_intensity_map(fixed, moving, bins=2, min_count=1)
    assert median.values.tolist() == pytest.approx([8.0, 2.0], abs=step)
    mean = fit_intensity_map(fixed, moving, bins=2, min_count=1, statistic="mean")
    assert mean.values.tolist() == pytest.approx([6.0, 4.0], rel=1e-6)
    with pytest.raises(ValueError, match="statistic"):
        fit_intensity_map(fixed, moving, statistic="mode")


def test_the_mean_map_is_the_conditional_mean_of_the_fixed_image_per_moving_intensity():
    moving = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0]).reshape(1, 1, 1, 2, 3)
    fixed = torch.tensor([5.0, 7.0, 1.0, 3.0, 10.0, 10.0]).reshape(1, 1, 1, 2, 3)
    table = fit_intensity_map(fixed, moving, bins=3, min_count=1, statistic="mean")
    assert table.top == pytest.approx(2.0, rel=1e-2)
    assert table.values.tolist() == pytest.approx([6.0, 2.0, 10.0], rel=1e-2)
    # between bins the map is linear: halfway between 1 (-> 2) and 2 (-> 10) gives 6
    assert float(table(torch.tensor([0.5 * table.top * 1.5]))) == pytest.approx(6.0, rel=1e-2)


def test_applying_a_map_interpolates_between_bins_clamps_beyond_them_and_leaves_its_input_alone():
    table = IntensityMap(top=4.0, values=torch.tensor([0.0, 10.0, 30.0, 20.0, 50.0]))  # bins at 0, 1, 2, 3, 4
    moving = torch.tensor([-1.0, 0.0, 0.25, 1.5, 2.5, 3.999, 4.0, 9.0]).reshape(1, 1, 1, 2, 4)
    kept = moving.clone()
    mapped = table(moving)
    assert mapped.flatten().tolist() == pytest.approx([0.0, 0.0, 2.5, 20.0, 25.0, 49.97, 50.0, 50.0], abs=1e-4)
    assert torch.equal(moving, kept)


def test_bins_with_too_few_voxels_take_their_neighbours_value():
    moving = torch.cat([torch.zeros(50), torch.full((50,), 4.0), torch.full((3,), 2.0)]).reshape(1, 1, 1, 1, -1)
    fixed = torch.cat([torch.full((50,), 1.0), torch.full((50,), 9.0), torch.full((3,), 100.0)]).reshape(moving.shape)
    table = fit_intensity_map(fixed, moving, bins=5, min_count=10)
    middle = float(table(torch.tensor([2.0])))  # 3 voxels only: interpolated between 1 and 9, not 100
    assert middle == pytest.approx(5.0, rel=0.05)


def test_an_empty_moving_image_gives_the_identity_and_mismatched_shapes_are_rejected():
    table = fit_intensity_map(torch.rand(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4))
    values = torch.linspace(0, 1, 9)
    assert torch.allclose(table(values), values, atol=1e-6)
    assert isinstance(table, IntensityMap)
    with pytest.raises(ValueError, match="differ in shape"):
        fit_intensity_map(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 5))


def test_explained_variance_is_one_for_a_function_of_the_fixed_image_and_near_zero_for_unrelated_noise():
    from caio.engine.intensity_map import explained_variance

    t1 = _spm("T1")
    brain = t1 > 0
    inverted = torch.where(brain, float(t1.max()) + 1 - t1, torch.zeros(()))  # a T2-like function of the T1
    noise = torch.where(brain, torch.rand(t1.shape, generator=torch.Generator().manual_seed(0)) + 0.1, 0.0)
    assert explained_variance(t1, inverted) > 0.98
    assert explained_variance(t1, noise) < 0.05
    assert explained_variance(t1, torch.zeros_like(t1)) == 0.0  # no voxel non-zero in both


@pytest.mark.parametrize("seed", range(5))
def test_empty_bins_take_values_interpolated_between_populated_ones_and_constant_beyond(seed):
    from caio.engine.intensity_map import _fill_between

    generator = np.random.default_rng(seed)
    values = generator.normal(size=40)
    known = generator.random(40) < 0.3
    known[generator.integers(40, size=2)] = True  # at least two known bins
    position = np.arange(40.0)
    expected = np.interp(position, position[known], values[known])  # constant beyond the ends
    filled = _fill_between(torch.from_numpy(values), torch.from_numpy(known))
    np.testing.assert_allclose(filled.numpy(), expected, rtol=0, atol=1e-12)
