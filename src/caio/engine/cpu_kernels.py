"""Fused CPU kernels of the engine (Numba), the fast path on a CPU.

On a CPU, PyTorch runs each element-wise step of an iteration as a separate pass over memory
(and ``grid_sample`` is slow there), so one full-resolution iteration costs seconds. These
kernels fuse the steps: trilinear warping together with the gradient of the interpolant, box
filters as short sums along one axis, separable Gaussian smoothing and field composition, each
parallel over the first array axis. They implement exactly the maths of the PyTorch path
(:mod:`caio.engine.similarity`, :mod:`caio.spatial`), which the tests check.

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

from caio.engine.cpu_filters import Workspace, separable_filter


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
                    value, d0, d1, d2 = _trilinear(
                        moving[c, i0, j0, k0],
                        moving[c, i0, j0, k1],
                        moving[c, i0, j1, k0],
                        moving[c, i0, j1, k1],
                        moving[c, i1, j0, k0],
                        moving[c, i1, j0, k1],
                        moving[c, i1, j1, k0],
                        moving[c, i1, j1, k1],
                        fx,
                        fy,
                        fz,
                    )
                    warped[c, i, j, k] = value
                    gradient[c, 0, i, j, k] = gx * d0
                    gradient[c, 1, i, j, k] = gy * d1
                    gradient[c, 2, i, j, k] = gz * d2


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
                    c00 = u[c, i0, j0, k0] + (u[c, i0, j0, k1] - u[c, i0, j0, k0]) * fz
                    c01 = u[c, i0, j1, k0] + (u[c, i0, j1, k1] - u[c, i0, j1, k0]) * fz
                    c10 = u[c, i1, j0, k0] + (u[c, i1, j0, k1] - u[c, i1, j0, k0]) * fz
                    c11 = u[c, i1, j1, k0] + (u[c, i1, j1, k1] - u[c, i1, j1, k0]) * fz
                    c0 = c00 + (c01 - c00) * fy
                    c1 = c10 + (c11 - c10) * fy
                    out[c, i, j, k] = v[c, i, j, k] + c0 + (c1 - c0) * fx


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


def scale_to_quantile_norm(field: np.ndarray, length: float, quantile: float, clamp: float) -> None:
    """Scale ``(3, D0, D1, D2)`` in place so that the ``quantile`` of its vector lengths (over the
    non-zero vectors, estimated on every 2nd voxel per axis) is ``length``; longer vectors are
    clamped to ``clamp * length``."""
    sample = field[:, ::2, ::2, ::2]
    norms = np.sqrt((sample * sample).sum(axis=0)).ravel()
    norms = norms[norms > 0]
    if norms.size == 0:
        return
    top = float(np.quantile(norms, quantile))
    if top > 0:
        _scale_and_clamp(field, np.float32(length / top), np.float32(clamp * length))


def scale_to_max_norm(field: np.ndarray, length: float) -> None:
    """Scale ``(3, D0, D1, D2)`` in place so that its longest vector is ``length`` (zero stays zero)."""
    top = math.sqrt(_max_squared_norm(field))
    if top > 0:
        _scale(field, np.float32(length / top))


@njit(cache=True, parallel=True, fastmath=True)
def _lncc_products(fixed, warped, out):
    _, n0, n1, n2 = out.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                f = fixed[i, j, k]
                w = warped[i, j, k]
                out[0, i, j, k] = f
                out[1, i, j, k] = w
                out[2, i, j, k] = f * f
                out[3, i, j, k] = w * w
                out[4, i, j, k] = f * w


@njit(cache=True, parallel=True, fastmath=True)
def _lncc_terms(stats, n, e, squared, out):
    """Per window: ncc (or ncc^2) and the four terms of its gradient (see similarity.lncc_and_gradient)."""
    _, n0, n1, n2 = stats.shape
    partial = np.zeros(n0)
    for i in prange(n0):
        acc = 0.0
        for j in range(n1):
            for k in range(n2):
                s_i = stats[0, i, j, k]
                s_j = stats[1, i, j, k]
                a = stats[4, i, j, k] - s_i * s_j / n
                b = max(stats[2, i, j, k] - s_i * s_i / n, 0.0)
                c = max(stats[3, i, j, k] - s_j * s_j / n, 0.0)
                inv = 1.0 / math.sqrt(b * c + e)
                ncc = a * inv
                beta = a * b * inv * inv * inv
                if squared:  # d ncc^2 = 2 ncc d ncc
                    acc += ncc * ncc
                    inv = 2.0 * ncc * inv
                    beta = 2.0 * ncc * beta
                else:
                    acc += ncc
                out[0, i, j, k] = inv
                out[1, i, j, k] = inv * s_i / n
                out[2, i, j, k] = beta
                out[3, i, j, k] = beta * s_j / n
        partial[i] = acc
    return partial.sum()


@njit(cache=True, parallel=True, fastmath=True)
def _lncc_field(fixed, warped, gradient, terms, scale, out):
    _, n0, n1, n2 = out.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                g = (
                    fixed[i, j, k] * terms[0, i, j, k]
                    - terms[1, i, j, k]
                    - warped[i, j, k] * terms[2, i, j, k]
                    + terms[3, i, j, k]
                ) * scale
                out[0, i, j, k] = _flushed(g * gradient[0, 0, i, j, k])
                out[1, i, j, k] = _flushed(g * gradient[0, 1, i, j, k])
                out[2, i, j, k] = _flushed(g * gradient[0, 2, i, j, k])


def lncc_displacement_gradient(
    fixed: np.ndarray,
    moving: np.ndarray,
    disp: np.ndarray,
    radius: int,
    eps: float,
    squared: bool = False,
    warped_gradient: bool = False,
    work: Workspace | None = None,
) -> tuple[float, np.ndarray]:
    """Mean LNCC (or squared LNCC) of ``fixed`` and ``moving`` warped by ``disp``, and its
    gradient as a field.

    Args:
        fixed, moving: ``(D0, D1, D2)``.
        disp: ``(3, D0, D1, D2)`` voxels.
    Returns:
        ``(similarity, field)``: field ``(3, D0, D1, D2)`` = d similarity / d warped times the
        gradient of the moving image at the warped point (ascent direction); it is ``work``'s array
        ``"field"``, overwritten by the next call with the same workspace.
    """
    shape = fixed.shape
    work = work or Workspace()
    warped = work.get("warped", (1, *shape))
    grad = work.get("gradient", (1, 3, *shape))
    warp_with_gradient(moving[None], disp, warped, grad)
    if warped_gradient:  # gradient of the warped image itself (includes the field's Jacobian)
        central_gradient(warped[0], grad[0])
    products = work.get("products", (5, *shape))
    _lncc_products(fixed, warped[0], products)
    ones = np.ones(2 * radius + 1, np.float32)
    stats = separable_filter(products, ones, False, work.get("stats", (5, *shape)), work)
    n = float((2 * radius + 1) ** 3)
    terms = products[:4]  # the products are no longer needed once filtered: their memory takes the terms,
    total = _lncc_terms(stats, n, (n * eps) ** 2, squared, terms)
    boxed = separable_filter(terms, ones, False, stats[:4], work)  # and the stats' memory takes the boxed terms
    count = float(fixed.size)
    out = work.get("field", (3, *shape))
    _lncc_field(fixed, warped[0], grad, boxed, 1.0 / count, out)
    return float(total) / count, out


@njit(cache=True, parallel=True, fastmath=True)
def _ssd_warp_field(fixed, moving_last, disp, scale, out):
    """Warp every feature channel, compare it with ``fixed`` and accumulate the SSD's gradient, fused.

    ``moving_last`` is channel-last ``(D0, D1, D2, C)`` so that the 8 corners of a voxel are 8
    contiguous runs of ``C`` values; ``fixed`` is ``(C, D0, D1, D2)``. Writes
    ``out[a] = scale * sum_c (F_c - W_c) * dW_c / d axis a`` (magnitudes below :data:`TINY` as 0) and returns
    ``sum (F - W)^2``.
    """
    nc, n0, n1, n2 = fixed.shape
    partial = np.zeros(n0)
    for i in prange(n0):
        acc = 0.0
        for j in range(n1):
            for k in range(n2):
                i0, fx, gx = _corner(n0, i + disp[0, i, j, k])
                j0, fy, gy = _corner(n1, j + disp[1, i, j, k])
                k0, fz, gz = _corner(n2, k + disp[2, i, j, k])
                i1, j1, k1 = min(i0 + 1, n0 - 1), min(j0 + 1, n1 - 1), min(k0 + 1, n2 - 1)
                g0 = 0.0
                g1 = 0.0
                g2 = 0.0
                for c in range(nc):
                    value, d0, d1, d2 = _trilinear(
                        moving_last[i0, j0, k0, c],
                        moving_last[i0, j0, k1, c],
                        moving_last[i0, j1, k0, c],
                        moving_last[i0, j1, k1, c],
                        moving_last[i1, j0, k0, c],
                        moving_last[i1, j0, k1, c],
                        moving_last[i1, j1, k0, c],
                        moving_last[i1, j1, k1, c],
                        fx,
                        fy,
                        fz,
                    )
                    d = fixed[c, i, j, k] - value
                    acc += d * d
                    g0 += d * d0
                    g1 += d * d1
                    g2 += d * d2
                out[0, i, j, k] = _flushed(scale * gx * g0)
                out[1, i, j, k] = _flushed(scale * gy * g1)
                out[2, i, j, k] = _flushed(scale * gz * g2)
        partial[i] = acc
    return partial.sum()


def ssd_displacement_gradient(
    fixed: np.ndarray, moving_last: np.ndarray, disp: np.ndarray, out: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """``-mean(sum_c (F_c - W_c)^2)`` of feature maps and its gradient as a field.

    Args:
        fixed: ``(C, D0, D1, D2)`` features.
        moving_last: the moving features channel-last, ``(D0, D1, D2, C)`` (C-contiguous).
        disp: ``(3, D0, D1, D2)`` voxels.
        out: ``(3, D0, D1, D2)`` float32 array that receives the field (default: a new one).
    Returns:
        ``(similarity, field)`` as :func:`lncc_displacement_gradient`.
    """
    shape = fixed.shape[1:]
    if moving_last.shape != (*shape, fixed.shape[0]):
        raise ValueError(f"moving features {moving_last.shape} are not channel-last {(*shape, fixed.shape[0])}")
    out = np.empty((3, *shape), np.float32) if out is None else out
    count = float(np.prod(shape))
    total = _ssd_warp_field(fixed, moving_last, disp, 2.0 / count, out)
    return -float(total) / count, out
