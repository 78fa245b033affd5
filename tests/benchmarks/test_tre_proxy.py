"""The benchmark tables' TRE proxy (bench.common.mean_tre_mm): label-centroid distances in mm."""

from __future__ import annotations

import numpy as np
import pytest

from bench.common import mean_tre_mm


def test_tre_proxy_is_the_centroid_shift_in_mm_through_the_affine():
    labels = np.zeros((20, 20, 20), np.int64)
    labels[2:6, 2:6, 2:6] = 1
    labels[10:16, 4:8, 3:9] = 2
    shifted = np.roll(labels, (2, 0, 1), axis=(0, 1, 2))  # every centroid moves by (2, 0, 1) voxels
    affine = np.diag([2.0, 1.0, 3.0, 1.0])  # voxel sizes 2, 1, 3 mm
    assert mean_tre_mm(labels, shifted, [1, 2], affine) == pytest.approx(np.hypot(4.0, 3.0))
    assert mean_tre_mm(labels, labels, [1, 2], affine) == 0.0
    half = np.where(shifted == 2, 0, shifted)  # label 2 vanished from the warped map: left out
    assert mean_tre_mm(labels, half, [1, 2], affine) == pytest.approx(5.0)
