"""World-coordinate helpers of the affine step (:mod:`caio.transforms.world`)."""

from __future__ import annotations

import numpy as np

from caio import spatial
from caio.transforms import world

OBLIQUE = np.array([[0.9, 0.1, 0.0, 3.0], [0.0, -1.2, 0.2, -5.0], [0.1, 0.0, 1.5, 7.0], [0.0, 0.0, 0.0, 1.0]])


def test_intensity_moments_equal_the_weighted_moments_of_every_voxels_world_point():
    image = np.random.default_rng(0).random((17, 23, 11)) - 0.2  # some negative values: they weigh 0
    weight = np.clip(image, 0, None).reshape(-1)
    points = (OBLIQUE[:3, :3] @ spatial.identity_grid_np(image.shape).reshape(3, -1) + OBLIQUE[:3, 3:4]).T  # (N, 3) mm
    centre = (weight[:, None] * points).sum(axis=0) / weight.sum()
    covariance = ((points - centre) * weight[:, None]).T @ (points - centre) / weight.sum()

    moments = world.intensity_moments(image, OBLIQUE)

    assert np.isclose(moments.total, weight.sum(), rtol=1e-12)
    np.testing.assert_allclose(moments.centre, centre, atol=1e-10)
    np.testing.assert_allclose(moments.covariance, covariance, atol=1e-10)


def test_principal_axes_of_an_elongated_blob_put_its_long_world_axis_first():
    index = np.stack(np.meshgrid(*(np.arange(n) for n in (20, 20, 20)), indexing="ij"))
    blob = np.exp(-(((index[0] - 10) / 2.0) ** 2 + ((index[1] - 10) / 6.0) ** 2 + ((index[2] - 10) / 3.0) ** 2))
    axes = world.principal_axes(world.intensity_moments(blob, np.diag([1.0, 1.0, 1.0, 1.0])))
    assert abs(axes[1, 0]) > 0.999 and abs(axes[2, 1]) > 0.999
    assert np.linalg.det(axes) > 0


def test_an_empty_image_has_its_grids_centre():
    np.testing.assert_allclose(world.centre_of_mass(np.zeros((5, 7, 9)), np.eye(4)), [2.0, 3.0, 4.0])
