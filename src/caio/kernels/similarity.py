"""Fused CPU kernels of the engine's similarity terms (Numba): LNCC and feature SSD, each returning the similarity
and its gradient with respect to the displacement in one call.

The same maths as the PyTorch functions of :mod:`caio.similarity.lncc` and :mod:`caio.similarity.ssd` (the tests
check it), fused with the trilinear warp of :mod:`caio.kernels.fields` so that a full-resolution iteration reads
each volume a few times instead of once per element-wise step. Conventions: as :mod:`caio.kernels.fields`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from caio.kernels.fields import _corner, _flushed, _trilinear, central_gradient, warp_with_gradient
from caio.kernels.filters import Workspace, separable_filter


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


@njit(cache=True, inline="always")
def _lncc_warped_derivative(fixed, warped, terms, i, j, k):
    """``d similarity / d warped`` at voxel ``(i, j, k)`` (before the ``1 / voxels`` scale) from the boxed terms."""
    return (
        fixed[i, j, k] * terms[0, i, j, k] - terms[1, i, j, k] - warped[i, j, k] * terms[2, i, j, k] + terms[3, i, j, k]
    )


@njit(cache=True, parallel=True, fastmath=True)
def _lncc_field(fixed, warped, gradient, terms, scale, out):
    _, n0, n1, n2 = out.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                g = _lncc_warped_derivative(fixed, warped, terms, i, j, k) * scale
                out[0, i, j, k] = _flushed(g * gradient[0, 0, i, j, k])
                out[1, i, j, k] = _flushed(g * gradient[0, 1, i, j, k])
                out[2, i, j, k] = _flushed(g * gradient[0, 2, i, j, k])


@njit(cache=True, parallel=True, fastmath=True)
def _lncc_image_gradient(fixed, warped, terms, scale, out):
    """``out = d similarity / d warped`` from the boxed terms (the factor of ``_lncc_field`` alone)."""
    n0, n1, n2 = out.shape
    for i in prange(n0):
        for j in range(n1):
            for k in range(n2):
                out[i, j, k] = _lncc_warped_derivative(fixed, warped, terms, i, j, k) * scale


def _lncc_boxed_terms(
    fixed: np.ndarray, warped: np.ndarray, radius: int, eps: float, squared: bool, work: Workspace
) -> tuple[float, np.ndarray]:
    """Sum of ``ncc_w`` (or ``ncc_w^2``) over the window centres and the four box-summed gradient terms
    ``(4, D0, D1, D2)`` (a ``work`` array) that :func:`caio.similarity.lncc.lncc_and_gradient` defines."""
    shape = fixed.shape
    products = work.get("products", (5, *shape))
    _lncc_products(fixed, warped, products)
    ones = np.ones(2 * radius + 1, np.float32)
    stats = separable_filter(products, ones, False, work.get("stats", (5, *shape)), work)
    n = float((2 * radius + 1) ** 3)
    terms = products[:4]  # the products are no longer needed once filtered: their memory takes the terms,
    total = _lncc_terms(stats, n, (n * eps) ** 2, squared, terms)
    boxed = separable_filter(terms, ones, False, stats[:4], work)  # and the stats' memory takes the boxed terms
    return float(total), boxed


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
    total, boxed = _lncc_boxed_terms(fixed, warped[0], radius, eps, squared, work)
    count = float(fixed.size)
    out = work.get("field", (3, *shape))
    _lncc_field(fixed, warped[0], grad, boxed, 1.0 / count, out)
    return total / count, out


def lncc_image_gradient(
    fixed: np.ndarray, warped: np.ndarray, radius: int, eps: float, squared: bool = False, work: Workspace | None = None
) -> tuple[float, np.ndarray]:
    """Mean LNCC (or squared LNCC) of two images on one grid and its gradient with respect to ``warped``: the
    fused CPU version of :func:`caio.similarity.lncc.lncc_and_gradient` (the affine step's similarity).

    Args:
        fixed, warped: ``(D0, D1, D2)`` float32, C-contiguous.
    Returns:
        ``(similarity, gradient)``: gradient ``(D0, D1, D2)``, ``work``'s array ``"image_gradient"``.
    """
    work = work or Workspace()
    total, boxed = _lncc_boxed_terms(fixed, warped, radius, eps, squared, work)
    count = float(fixed.size)
    out = work.get("image_gradient", fixed.shape)
    _lncc_image_gradient(fixed, warped, boxed, 1.0 / count, out)
    return total / count, out


@njit(cache=True, parallel=True, fastmath=True)
def _ssd_warp_field(fixed, moving_last, disp, scale, robust, out):
    """Warp every feature channel, compare it with ``fixed`` and accumulate the SSD's gradient, fused.

    ``moving_last`` is channel-last ``(D0, D1, D2, C)`` so that the 8 corners of a voxel are 8
    contiguous runs of ``C`` values; ``fixed`` is ``(C, D0, D1, D2)``. With ``r = sum_c (F_c - W_c)^2`` per voxel,
    writes ``out[a] = scale * w(r) * sum_c (F_c - W_c) * dW_c / d axis a`` (magnitudes below :data:`TINY` as 0) and
    returns the sum of ``rho(r)``: ``rho(r) = r``, ``w = 1`` when ``robust`` is 0, else the Geman-McClure
    ``rho(r) = robust * r / (robust + r)``, ``w = (robust / (robust + r))^2``.
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
                r = 0.0
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
                    r += d * d
                    g0 += d * d0
                    g1 += d * d1
                    g2 += d * d2
                w = scale
                if robust > 0.0:
                    shrink = robust / (robust + r)
                    w = scale * shrink * shrink
                    r = robust * r / (robust + r)
                acc += r
                out[0, i, j, k] = _flushed(w * gx * g0)
                out[1, i, j, k] = _flushed(w * gy * g1)
                out[2, i, j, k] = _flushed(w * gz * g2)
        partial[i] = acc
    return partial.sum()


def ssd_displacement_gradient(
    fixed: np.ndarray, moving_last: np.ndarray, disp: np.ndarray, out: np.ndarray | None = None, robust: float = 0.0
) -> tuple[float, np.ndarray]:
    """``-mean(rho(sum_c (F_c - W_c)^2))`` of feature maps and its gradient as a field.

    Args:
        fixed: ``(C, D0, D1, D2)`` features.
        moving_last: the moving features channel-last, ``(D0, D1, D2, C)`` (C-contiguous).
        disp: ``(3, D0, D1, D2)`` voxels.
        out: ``(3, D0, D1, D2)`` float32 array that receives the field (default: a new one).
        robust: ``0``: ``rho(r) = r`` (squared differences); else the Geman-McClure scale of
            :func:`caio.similarity.ssd.ssd_and_gradient`.
    Returns:
        ``(similarity, field)`` as :func:`lncc_displacement_gradient`.
    """
    shape = fixed.shape[1:]
    if moving_last.shape != (*shape, fixed.shape[0]):
        raise ValueError(f"moving features {moving_last.shape} are not channel-last {(*shape, fixed.shape[0])}")
    out = np.empty((3, *shape), np.float32) if out is None else out
    count = float(np.prod(shape))
    total = _ssd_warp_field(fixed, moving_last, disp, 2.0 / count, float(robust), out)
    return -float(total) / count, out
