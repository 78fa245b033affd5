"""Separable filters of the engine's CPU kernels (Numba): Gaussian smoothing and box sums.

A 1-D kernel is applied along each spatial axis of a ``(C, D0, D1, D2)`` float32 array, each pass
parallel over the first array axis, with the inner loop over the contiguous last axis and no branch
in it. ``replicate=True`` extends edge values (as :func:`caio.spatial.gaussian_blur`); ``False``
treats the outside as zero (as :func:`caio.engine.similarity.box_sum`). :class:`Workspace` keeps
scratch arrays across iterations (fresh full-size allocations cost page faults).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True, fastmath=True)
def _filter_outer_axis(src, dst, weights, replicate, axis):
    """The 1-D kernel along spatial axis 0 or 1 (``axis``): each output row along the contiguous last axis is a
    weighted sum of whole source rows, and stays in the L1 cache while the taps add up."""
    nc, n0, n1, n2 = src.shape
    r = (weights.shape[0] - 1) // 2
    n = n0 if axis == 0 else n1
    for i in prange(n0):
        for c in range(nc):
            for j in range(n1):
                for k in range(n2):
                    dst[c, i, j, k] = 0.0
                centre = np.int64(i) if axis == 0 else np.int64(j)  # one integer type (prange may be unsigned)
                for t in range(-r, r + 1):
                    along = centre + t
                    if along < 0 or along >= n:
                        if not replicate:
                            continue
                        along = min(max(along, 0), n - 1)
                    row = src[c, along, j] if axis == 0 else src[c, i, along]
                    w = weights[t + r]
                    for k in range(n2):
                        dst[c, i, j, k] += w * row[k]


@njit(cache=True, parallel=True, fastmath=True)
def _filter_axis2(src, dst, weights, replicate):
    nc, n0, n1, n2 = src.shape
    width = weights.shape[0]
    r = (width - 1) // 2
    for i in prange(n0):
        row = np.empty(n2 + 2 * r, np.float32)  # the row with its padding: no branch in the inner loop
        for c in range(nc):
            for j in range(n1):
                for k in range(n2):
                    row[k + r] = src[c, i, j, k]
                for t in range(r):
                    row[t] = src[c, i, j, 0] if replicate else 0.0
                    row[n2 + r + t] = src[c, i, j, n2 - 1] if replicate else 0.0
                for k in range(n2):
                    dst[c, i, j, k] = 0.0
                for t in range(width):
                    w = weights[t]
                    for k in range(n2):
                        dst[c, i, j, k] += w * row[k + t]


class Workspace:
    """Scratch arrays reused across iterations (fresh full-size allocations cost page faults)."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of ``shape`` owned by the workspace under ``name`` (contents undefined)."""
        array = self._arrays.get(name)
        if array is None or array.shape != shape:
            array = np.empty(shape, np.float32)
            self._arrays[name] = array
        return array


def separable_filter(
    x: np.ndarray, weights: np.ndarray, replicate: bool, out: np.ndarray | None = None, work: Workspace | None = None
) -> np.ndarray:
    """Apply the odd-length 1-D kernel ``weights`` along each spatial axis of ``(C, D0, D1, D2)``.

    ``replicate=True`` extends edge values (Gaussian smoothing, as :func:`caio.spatial.gaussian_blur`);
    ``False`` treats the outside as zero (box sums, as :func:`caio.engine.similarity.box_sum`).
    ``out`` (not ``x``) receives the result; ``work`` supplies the scratch array.
    """
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    a = np.empty_like(x) if out is None else out
    b = np.empty_like(x) if work is None else work.get(f"filter{x.shape[0]}", x.shape)
    _filter_outer_axis(x, a, weights, replicate, 0)
    _filter_outer_axis(a, b, weights, replicate, 1)
    _filter_axis2(b, a, weights, replicate)
    return a
