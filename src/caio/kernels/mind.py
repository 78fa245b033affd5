"""MIND-SSC descriptors on the CPU in three Numba passes (same result as :func:`caio.similarity.mind.mind_ssc`'s
PyTorch code up to float rounding, about 3x faster on 2 cores at 1 mm).

The PyTorch code materialises the 12 squared-difference images, pads them, and sums each axis in a
separate pass (about 25 passes over a 12-channel volume). Here:

1. :func:`_squared_differences`: the 12 squared differences of the image's shifted copies, one pass.
2. The patch mean: the engine's separable filter (:func:`caio.kernels.filters.separable_filter`, one
   streaming pass at 1 mm) with a box kernel and replicate padding, as :func:`caio.similarity.windows.box_mean`.
3. :func:`_descriptors`: per voxel, the local variance (mean of the 12 distances, clamped around its
   volume mean), ``exp(-D / V)`` and the division by the largest channel, in place.

Arrays: ``padded`` is the image padded by ``dilation`` (replicate), ``(D0 + 2d, D1 + 2d, D2 + 2d)``
float32; distances and descriptors are ``(12, D0, D1, D2)`` float32.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from caio.kernels.filters import separable_filter


@njit(cache=True, parallel=True, fastmath=True)
def _squared_differences(padded, first, second, dilation, out):
    """``out[c]`` = ``(I(x + first[c]) - I(x + second[c]))**2`` for the image ``padded`` by ``dilation``."""
    nc, n0, n1, n2 = out.shape
    for i in prange(n0):
        for c in range(nc):
            a0, a1, a2 = first[c, 0] + dilation, first[c, 1] + dilation, first[c, 2] + dilation
            b0, b1, b2 = second[c, 0] + dilation, second[c, 1] + dilation, second[c, 2] + dilation
            for j in range(n1):
                pa, pb, row = padded[i + a0, j + a1], padded[i + b0, j + b1], out[c, i, j]
                for k in range(n2):
                    d = pa[k + a2] - pb[k + b2]
                    row[k] = d * d


@njit(cache=True, parallel=True, fastmath=True)
def _descriptors(dist, low, high):
    """In place: ``dist`` -> ``exp(-dist / V)`` divided by its channel maximum, ``V`` = the channel mean of
    ``dist`` clamped to ``[low, high]``."""
    nc, n0, n1, n2 = dist.shape
    for i in prange(n0):
        variance = np.empty(n2, np.float32)
        largest = np.empty(n2, np.float32)
        for j in range(n1):
            for k in range(n2):
                variance[k] = 0.0
                largest[k] = 0.0
            for c in range(nc):
                for k in range(n2):
                    variance[k] += dist[c, i, j, k]
            for k in range(n2):
                variance[k] = min(max(variance[k] / nc, low), high)
            for c in range(nc):
                for k in range(n2):
                    value = np.exp(-dist[c, i, j, k] / variance[k])
                    dist[c, i, j, k] = value
                    largest[k] = max(largest[k], value)
            for c in range(nc):
                for k in range(n2):
                    dist[c, i, j, k] /= largest[k]


def mind_ssc_numpy(
    image: np.ndarray, first: np.ndarray, second: np.ndarray, radius: int, dilation: int, out: np.ndarray
) -> np.ndarray:
    """MIND-SSC of one normalised ``(D0, D1, D2)`` image for the neighbour pairs ``first[c]``, ``second[c]``
    (``(12, 3)`` integer offsets in voxels), written into ``out`` (``(12, D0, D1, D2)`` float32) and returned."""
    padded = np.pad(np.asarray(image, np.float32), dilation, mode="edge")
    squared = np.empty_like(out)
    _squared_differences(padded, first.astype(np.int64), second.astype(np.int64), dilation, squared)
    box = np.full(2 * radius + 1, 1.0 / (2 * radius + 1), np.float32)  # the patch mean, one axis at a time
    separable_filter(squared, box, True, out)
    del squared
    mean_variance = float(out.mean(dtype=np.float64))  # volume mean of the per-voxel channel mean
    _descriptors(out, np.float32(mean_variance * 1e-3 + 1e-12), np.float32(mean_variance * 1e3))
    return out
