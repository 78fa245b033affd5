"""Fused CPU kernels of the engine (Numba), the fast path on a CPU.

On a CPU, PyTorch runs each element-wise step of an iteration as a separate pass over memory
(and ``grid_sample`` is slow there), so one full-resolution iteration costs seconds. These
kernels fuse the steps: trilinear warping together with the gradient of the interpolant, box
filters as short sums along one axis, separable Gaussian smoothing and field composition, each
parallel over the first array axis. They implement exactly the maths of the PyTorch path
(:mod:`caio.similarity`, :mod:`caio.spatial`), which the tests check.

Conventions: float32 NumPy arrays, C-contiguous; images ``(D0, D1, D2)``; fields and
multi-channel images ``(C, D0, D1, D2)``; displacements in voxels, channel ``c`` along array axis
``c``, ``warped(x) = moving(x + u(x))`` with coordinates clamped to the volume (border
padding), as :func:`caio.spatial.warp`. Compiled on first use; the compiled code is cached on
disk (``NUMBA_CACHE_DIR``), so only the first process on a machine pays the compilation.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _corner(n: int, x: float) -> tuple[int, float, float]:
    """Lower corner index, fraction and whether the derivative exists (1.0) after clamping."""
    inside = 1.0
    if x < 0.0:
        x, inside = 0.0, 0.0
    elif x > n - 1:
        x, inside = float(n - 1), 0.0
    i = min(int(math.floor(x)), max(n - 2, 0))
    return i, x - i, inside


TINY = 1e-30
"""Gradient values below this magnitude are written as 0: scaled by ``1 / voxels`` they would become denormal
float32 numbers, which every later pass (smoothing, composition) then handles 10-100x slower. They arise where
the fixed and warped features differ only by rounding (a MIND-SSC level's background: its filters' update took
26 instead of 12 ms per iteration at 1/2 of a 1 mm pair); a step is normalised by the field's largest vector,
so such values never move it."""


@njit(cache=True, inline="always")
def _flushed(value):
    return value if abs(value) >= TINY else 0.0


@njit(cache=True, inline="always")
def _trilinear(c000, c001, c010, c011, c100, c101, c110, c111, fx, fy, fz):
    """Trilinear value of the 8 corners ``c<i><j><k>`` at fractions ``(fx, fy, fz)`` and its three partial
    derivatives along the array axes (per voxel of the grid)."""
    c00 = c000 + (c001 - c000) * fz
    c01 = c010 + (c011 - c010) * fz
    c10 = c100 + (c101 - c100) * fz
    c11 = c110 + (c111 - c110) * fz
    c0 = c00 + (c01 - c00) * fy
    c1 = c10 + (c11 - c10) * fy
    d1 = (c01 - c00) * (1.0 - fx) + (c11 - c10) * fx
    e0 = (c001 - c000) * (1.0 - fy) + (c011 - c010) * fy
    e1 = (c101 - c100) * (1.0 - fy) + (c111 - c110) * fy
    return c0 + (c1 - c0) * fx, c1 - c0, d1, e0 * (1.0 - fx) + e1 * fx


@njit(cache=True, inline="always")
def _value_and_gradient(field, c, i0, j0, k0, i1, j1, k1, fx, fy, fz):
    """:func:`_trilinear` of channel ``c`` of ``field`` in the cell with corners ``(i0, j0, k0)``, ``(i1, j1, k1)``."""
    return _trilinear(
        field[c, i0, j0, k0], field[c, i0, j0, k1], field[c, i0, j1, k0], field[c, i0, j1, k1],
        field[c, i1, j0, k0], field[c, i1, j0, k1], field[c, i1, j1, k0], field[c, i1, j1, k1],
        fx, fy, fz,
    )  # fmt: skip


@njit(cache=True, inline="always")
def _value(field, c, i0, j0, k0, i1, j1, k1, fx, fy, fz):
    """Trilinear value of channel ``c`` of ``field`` in the cell with corners ``(i0, j0, k0)``, ``(i1, j1, k1)``."""
    c00 = field[c, i0, j0, k0] + (field[c, i0, j0, k1] - field[c, i0, j0, k0]) * fz
    c01 = field[c, i0, j1, k0] + (field[c, i0, j1, k1] - field[c, i0, j1, k0]) * fz
    c10 = field[c, i1, j0, k0] + (field[c, i1, j0, k1] - field[c, i1, j0, k0]) * fz
    c11 = field[c, i1, j1, k0] + (field[c, i1, j1, k1] - field[c, i1, j1, k0]) * fz
    c0 = c00 + (c01 - c00) * fy
    c1 = c10 + (c11 - c10) * fy
    return c0 + (c1 - c0) * fx


@njit(cache=True, parallel=True, fastmath=True)
def warp_with_gradient(moving, disp, warped, gradient):
    """Trilinear pull-back warp of every channel and the gradient of the interpolant there.

    Args:
        moving: ``(C, D0, D1, D2)``.
        disp: ``(3, D0, D1, D2)`` voxels.
        warped: output ``(C, D0, D1, D2)``: ``moving(x + disp(x))``.
        gradient: output ``(C, 3, D0, D1, D2)``: d moving / d axis at ``x + disp(x)``
            (zero along an axis where the point was clamped to the border).
    """
    nc, n0, n1, n2 = moving.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                i0, fx, gx = _corner(n0, i + disp[0, i, j, k])
                j0, fy, gy = _corner(n1, j + disp[1, i, j, k])
                k0, fz, gz = _corner(n2, k + disp[2, i, j, k])
                i1, j1, k1 = min(i0 + 1, n0 - 1), min(j0 + 1, n1 - 1), min(k0 + 1, n2 - 1)
                for c in range(nc):
                    value, d0, d1, d2 = _value_and_gradient(moving, c, i0, j0, k0, i1, j1, k1, fx, fy, fz)
                    warped[c, i, j, k] = value
                    gradient[c, 0, i, j, k] = gx * d0
                    gradient[c, 1, i, j, k] = gy * d1
                    gradient[c, 2, i, j, k] = gz * d2


@njit(cache=True, parallel=True, fastmath=True)
def sample_through_matrix(volume, matrix, out):
    """Trilinear samples of every channel of ``volume`` at ``matrix @ (i, j, k, 1)`` for every voxel of ``out``,
    zero outside the volume (each of the 8 corners beyond it counts 0): ``grid_sample`` with zeros padding and
    aligned corners, without a coordinate grid (the affine step's warp of its moving stack).

    Args:
        volume: ``(C, M0, M1, M2)``.
        matrix: ``(3, 4)`` float64, voxel of ``out`` -> voxel of ``volume``.
        out: ``(C, D0, D1, D2)``.
    """
    nc, m0, m1, m2 = volume.shape
    _, n0, n1, n2 = out.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                x = matrix[0, 0] * i + matrix[0, 1] * j + matrix[0, 2] * k + matrix[0, 3]
                y = matrix[1, 0] * i + matrix[1, 1] * j + matrix[1, 2] * k + matrix[1, 3]
                z = matrix[2, 0] * i + matrix[2, 1] * j + matrix[2, 2] * k + matrix[2, 3]
                for c in range(nc):
                    out[c, i, j, k] = 0.0
                if x <= -1.0 or y <= -1.0 or z <= -1.0 or x >= m0 or y >= m1 or z >= m2:
                    continue
                i0, j0, k0 = int(math.floor(x)), int(math.floor(y)), int(math.floor(z))
                fx, fy, fz = x - i0, y - j0, z - k0
                for a in range(2):
                    ia = i0 + a
                    if ia < 0 or ia >= m0:
                        continue
                    wa = fx if a else 1.0 - fx
                    for b in range(2):
                        jb = j0 + b
                        if jb < 0 or jb >= m1:
                            continue
                        wb = wa * (fy if b else 1.0 - fy)
                        for d in range(2):
                            kd = k0 + d
                            if kd < 0 or kd >= m2:
                                continue
                            w = wb * (fz if d else 1.0 - fz)
                            for c in range(nc):
                                out[c, i, j, k] += w * volume[c, ia, jb, kd]


@njit(cache=True, parallel=True, fastmath=True)
def central_gradient(image, gradient):
    """Central differences of ``image`` ``(D0, D1, D2)`` along each axis (one-sided at the
    border) into ``gradient`` ``(3, D0, D1, D2)``, as :func:`caio.engine.optimizer.spatial_gradient`."""
    n0, n1, n2 = image.shape
    for i in prange(n0):
        ia, ib = max(i - 1, 0), min(i + 1, n0 - 1)
        hi = 1.0 / max(ib - ia, 1)
        for j in range(n1):
            ja, jb = max(j - 1, 0), min(j + 1, n1 - 1)
            hj = 1.0 / max(jb - ja, 1)
            for k in range(n2):
                ka, kb = max(k - 1, 0), min(k + 1, n2 - 1)
                gradient[0, i, j, k] = (image[ib, j, k] - image[ia, j, k]) * hi
                gradient[1, i, j, k] = (image[i, jb, k] - image[i, ja, k]) * hj
                gradient[2, i, j, k] = (image[i, j, kb] - image[i, j, ka]) / max(kb - ka, 1)


@njit(cache=True, parallel=True, fastmath=True)
def compose_fields(u, v, out):
    """``out = v + u(x + v(x))`` (trilinear, border clamp): :func:`caio.spatial.compose`.

    Args:
        u, v, out: ``(3, D0, D1, D2)`` voxels.
    """
    _, n0, n1, n2 = u.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                i0, fx, _a = _corner(n0, i + v[0, i, j, k])
                j0, fy, _b = _corner(n1, j + v[1, i, j, k])
                k0, fz, _c = _corner(n2, k + v[2, i, j, k])
                i1, j1, k1 = min(i0 + 1, n0 - 1), min(j0 + 1, n1 - 1), min(k0 + 1, n2 - 1)
                for c in range(3):
                    out[c, i, j, k] = v[c, i, j, k] + _value(u, c, i0, j0, k0, i1, j1, k1, fx, fy, fz)


@njit(cache=True, parallel=True, fastmath=True)
def _max_squared_norm(field):
    """The largest squared vector length of ``(3, D0, D1, D2)``, summed in float64: the squares of float32
    values below 1e-19 (a smoothed gradient's tails) would be denormal floats, 10x slower to add up."""
    _, n0, n1, n2 = field.shape
    partial = np.zeros(n0)
    for i in prange(n0):
        best = 0.0
        for j in range(n1):
            for k in range(n2):
                a, b, c = np.float64(field[0, i, j, k]), np.float64(field[1, i, j, k]), np.float64(field[2, i, j, k])
                best = max(best, a * a + b * b + c * c)
        partial[i] = best
    return partial.max()


@njit(cache=True, parallel=True, fastmath=True)
def _scale(field, factor):
    _, n0, n1, n2 = field.shape
    for i in prange(n0):
        for c in range(3):
            for j in range(n1):
                for k in range(n2):
                    field[c, i, j, k] *= factor


@njit(cache=True, parallel=True, fastmath=True)
def _scale_and_clamp(field, factor, max_length):
    _, n0, n1, n2 = field.shape
    limit = max_length * max_length
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                a = field[0, i, j, k] * factor
                b = field[1, i, j, k] * factor
                c = field[2, i, j, k] * factor
                sq = a * a + b * b + c * c
                if sq > limit:
                    shrink = max_length / math.sqrt(sq)
                    a, b, c = a * shrink, b * shrink, c * shrink
                field[0, i, j, k] = a
                field[1, i, j, k] = b
                field[2, i, j, k] = c


def sampled_quantile_norm(field: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of the vector lengths of ``(3, D0, D1, D2)`` over its non-zero vectors, estimated on every
    2nd voxel per axis (squares in float64: no denormal float32 products); 0 if every vector is zero."""
    sample = field[:, ::2, ::2, ::2].astype(np.float64)
    norms = np.sqrt((sample * sample).sum(axis=0)).ravel()
    norms = norms[norms > 0]
    return float(np.quantile(norms, quantile)) if norms.size else 0.0


def scale_to_quantile_norm(field: np.ndarray, length: float, quantile: float, clamp: float) -> None:
    """Scale ``(3, D0, D1, D2)`` in place so that the ``quantile`` of its vector lengths
    (:func:`sampled_quantile_norm`) is ``length``; longer vectors are clamped to ``clamp * length``."""
    top = sampled_quantile_norm(field, quantile)
    if top > 0:
        _scale_and_clamp(field, np.float32(length / top), np.float32(clamp * length))


def scale_to_robust_max_norm(field: np.ndarray, length: float, quantile: float, ratio: float) -> None:
    """Scale ``(3, D0, D1, D2)`` in place so that its longest vector is ``length``, the longest counted as at most
    ``ratio`` times the ``quantile`` of the lengths (:func:`sampled_quantile_norm`); longer vectors are clamped to
    ``length`` (:attr:`caio.engine.optimizer.LevelSettings.outlier_ratio`)."""
    top = math.sqrt(_max_squared_norm(field))
    cap = ratio * sampled_quantile_norm(field, quantile)
    top = min(top, cap) if cap > 0 else top
    if top > 0:
        _scale_and_clamp(field, np.float32(length / top), np.float32(length))


def scale_to_max_norm(field: np.ndarray, length: float) -> None:
    """Scale ``(3, D0, D1, D2)`` in place so that its longest vector is ``length`` (zero stays zero)."""
    top = math.sqrt(_max_squared_norm(field))
    if top > 0:
        _scale(field, np.float32(length / top))


@njit(cache=True, inline="always")
def _warped_squared_difference(fixed, moving, disp, i, j, k):
    """``sum_c (fixed[c](x) - moving[c](x + disp(x)))^2`` at voxel ``x = (i, j, k)``."""
    nc, n0, n1, n2 = moving.shape
    i0, fx, _a = _corner(n0, i + disp[0, i, j, k])
    j0, fy, _b = _corner(n1, j + disp[1, i, j, k])
    k0, fz, _c = _corner(n2, k + disp[2, i, j, k])
    i1, j1, k1 = min(i0 + 1, n0 - 1), min(j0 + 1, n1 - 1), min(k0 + 1, n2 - 1)
    total = 0.0
    for c in range(nc):
        diff = fixed[c, i, j, k] - _value(moving, c, i0, j0, k0, i1, j1, k1, fx, fy, fz)
        total += diff * diff
    return total


@njit(cache=True, parallel=True, fastmath=True)
def masked_warped_ssd(fixed, moving, disp, mask):
    """Mean over ``mask`` of ``sum_c (fixed[c](x) - moving[c](x + disp(x)))^2`` (trilinear, border clamp): the
    safeguard's score (:class:`caio.engine.safeguard.AlignmentCheck`) without a warped copy of every channel.

    Args:
        fixed, moving: ``(C, D0, D1, D2)`` float32.
        disp: ``(3, D0, D1, D2)`` float32 voxels.
        mask: ``(D0, D1, D2)`` bool.
    Returns:
        The mean in float64 (0 for an empty mask).
    """
    _, n0, n1, n2 = moving.shape
    sums = np.zeros(n0)
    counts = np.zeros(n0)
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                if mask[i, j, k]:
                    sums[i] += _warped_squared_difference(fixed, moving, disp, i, j, k)
                    counts[i] += 1.0
    n = counts.sum()
    return sums.sum() / n if n > 0 else 0.0
