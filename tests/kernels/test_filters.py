"""The engine's one-pass separable filter (caio.kernels.filters) against SciPy's axis-by-axis correlation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from caio.kernels import filters as cpu_filters


def _reference(x: np.ndarray, weights: np.ndarray, replicate: bool) -> np.ndarray:
    out = x.astype(np.float64)
    for axis in (1, 2, 3):
        mode = "nearest" if replicate else "constant"
        out = ndimage.correlate1d(out, weights.astype(np.float64), axis=axis, mode=mode)
    return out


@pytest.mark.parametrize("replicate", [True, False])
@pytest.mark.parametrize(
    ("shape", "weights"),
    [
        ((3, 12, 9, 10), [0.1, 0.2, 0.4, 0.2, 0.1]),
        ((2, 2, 7, 5), [0.5, 0.3, 0.05, 0.1, 0.05]),  # first axis shorter than the kernel; asymmetric weights
        ((5, 9, 3, 4), [1.0] * 7),  # box sum wider than two axes
        ((1, 6, 6, 6), [1.0]),
    ],
)
@pytest.mark.parametrize("chunks", [1, 2, 5])
def test_one_pass_filter_equals_filtering_each_axis_in_turn(shape, weights, replicate, chunks):
    x = np.random.default_rng(len(weights) + shape[1]).random(shape, dtype=np.float32)
    weights = np.asarray(weights, np.float32)
    out = np.full_like(x, np.nan)
    cpu_filters._filter_volume(x, out, weights, replicate, chunks)
    np.testing.assert_allclose(out, _reference(x, weights, replicate), rtol=1e-5, atol=1e-5)
    per_axis = cpu_filters.separable_filter(x, weights, replicate)  # small: one pass per axis
    np.testing.assert_allclose(per_axis, out, rtol=1e-6, atol=1e-6)


def test_a_volume_at_the_streaming_size_gives_the_same_filter():
    shape = (1, 128, 128, cpu_filters.STREAMING_MIN_VOXELS // (128 * 128))
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    weights = np.asarray([0.05, 0.25, 0.4, 0.25, 0.05], np.float32)
    for replicate in (True, False):
        out = cpu_filters.separable_filter(x, weights, replicate)
        np.testing.assert_allclose(out, _reference(x, weights, replicate), rtol=1e-5, atol=1e-5)


def test_warm_up_compiles_the_streaming_filter_that_its_small_volumes_never_reach():
    """Else the first 1 mm pair in a container (kernels compiled at build time by warm_up) compiles it on its clock."""
    code = (
        "from caio.kernels import filters as cpu_filters; from caio.engine import warm_up; "
        "assert not cpu_filters._filter_volume.signatures; warm_up(); "
        "print(len(cpu_filters._filter_volume.signatures))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= 1
