"""MIND-SSC descriptors on the CPU in two fused Numba passes (same result as :func:`caio.contrast.mind.mind_ssc`'s
PyTorch code up to float rounding, about 3x faster on 2 cores at 1 mm).

The PyTorch code materialises the 12 squared-difference images, pads them, and sums each axis in a
separate pass (about 25 passes over a 12-channel volume). Here:

1. :func:`_patch_distances`: per channel (parallel over channels), the squared differences of the
   image's two shifted copies are made one row at a time, box-summed along the last axis, then along
   the middle axis into one slab, and the last ``2 * radius + 1`` slabs kept in a ring buffer are summed
   along the first axis into the output: the 12-channel volume is written once. Replicate padding at
   every axis, as :func:`caio.contrast.mind.box_mean`.
2. :func:`_descriptors`: per voxel, the local variance (mean of the 12 distances, clamped around its
   volume mean), ``exp(-D / V)`` and the division by the largest channel, in place.

Arrays: ``padded`` is the image padded by ``dilation`` (replicate), ``(D0 + 2d, D1 + 2d, D2 + 2d)``
float32; distances and descriptors are ``(12, D0, D1, D2)`` float32.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True, fastmath=True)
def _patch_distances(padded, first, second, dilation, radius, out, sums):
    """``out[c]`` = box mean (side ``2 radius + 1``) of ``(I(x + first[c]) - I(x + second[c]))**2``;
    ``sums[c]`` = its sum over the volume (float64)."""
    nc, n0, n1, n2 = out.shape
    width = 2 * radius + 1
    scale = np.float32(1.0 / (width * width * width))
    for c in prange(nc):
        a0, a1, a2 = first[c, 0] + dilation, first[c, 1] + dilation, first[c, 2] + dilation
        b0, b1, b2 = second[c, 0] + dilation, second[c, 1] + dilation, second[c, 2] + dilation
        ring = np.zeros((width, n1, n2), np.float32)  # the last `width` slabs, summed along axes 2 and 1
        rows = np.empty((n1, n2), np.float32)  # one slab summed along axis 2
        squared = np.empty(n2, np.float32)
        total = 0.0
        for s in range(n0 + radius):
            if s < n0:
                for j in range(n1):
                    pa, pb = padded[s + a0, j + a1], padded[s + b0, j + b1]
                    for k in range(n2):
                        d = pa[k + a2] - pb[k + b2]
                        squared[k] = d * d
                    for k in range(n2):
                        acc = np.float32(0.0)
                        for t in range(-radius, radius + 1):
                            acc += squared[min(max(k + t, 0), n2 - 1)]
                        rows[j, k] = acc
                slab = ring[s % width]
                for j in range(n1):
                    for k in range(n2):
                        slab[j, k] = 0.0
                    for t in range(-radius, radius + 1):
                        row = rows[min(max(j + t, 0), n1 - 1)]
                        for k in range(n2):
                            slab[j, k] += row[k]
            i = s - radius  # every slab it needs (i - radius ... i + radius, clamped) is in the ring now
            if i >= 0:
                target = out[c, i]
                for j in range(n1):
                    for k in range(n2):
                        target[j, k] = 0.0
                for t in range(-radius, radius + 1):
                    slab = ring[min(max(i + t, 0), n0 - 1) % width]
                    for j in range(n1):
                        for k in range(n2):
                            target[j, k] += slab[j, k]
                for j in range(n1):
                    for k in range(n2):
                        target[j, k] *= scale
                        total += target[j, k]
        sums[c] = total


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
    sums = np.zeros(first.shape[0], np.float64)
    _patch_distances(padded, first.astype(np.int64), second.astype(np.int64), dilation, radius, out, sums)
    mean_variance = sums.sum() / out.size  # volume mean of the per-voxel channel mean
    _descriptors(out, np.float32(mean_variance * 1e-3 + 1e-12), np.float32(mean_variance * 1e3))
    return out
