"""Similarity terms of the registration engine, with their analytic gradients.

Autograd through ``grid_sample`` is the bottleneck of an optimiser on the CPU, so the engine
never differentiates through the warp: each function here takes the fixed image and the
*already warped* moving image (both ``[1, C, D0, D1, D2]`` on the fixed grid) and returns the
similarity and its gradient with respect to the warped image. The chain rule to the
displacement (:func:`caio.engine.optimizer.displacement_gradient`) multiplies that by the
spatial gradient of the warped image.

* :func:`lncc_and_gradient` -- local normalised cross-correlation over a cubic window of
  ``2 r + 1`` voxels (box filter, computed with cumulative sums), for same-contrast pairs.
  Exact gradient of the mean of the local NCC over all window centres.
* :func:`ssd_and_gradient` -- mean squared difference of feature maps (MIND-SSC descriptors
  for cross-contrast pairs, see :mod:`caio.contrast.mind`).

Images are expected in a fixed intensity range (the engine scales them to about [0, 1]);
``eps`` is relative to that range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over a cube of ``2 radius + 1`` voxels around every voxel (zeros outside the volume).

    Separable: one cumulative sum per axis.

    Args:
        x: ``[B, C, D0, D1, D2]``.
        radius: half-width in voxels (``0`` returns ``x``).
    Returns:
        Same shape as ``x``.
    """
    if radius <= 0:
        return x
    out = x
    for axis in (2, 3, 4):
        n = out.shape[axis]
        pad = [0, 0] * (4 - axis) + [radius + 1, radius]
        csum = F.pad(out, pad).cumsum(axis)
        out = csum.narrow(axis, 2 * radius + 1, n) - csum.narrow(axis, 0, n)
    return out


def lncc_and_gradient(
    fixed: torch.Tensor, warped: torch.Tensor, radius: int = 2, eps: float = 1e-4, squared: bool = False
) -> tuple[float, torch.Tensor]:
    """Mean local NCC (or squared local NCC) and its gradient with respect to the warped image.

    ``squared=True`` scores ``ncc_w^2``: a locally linear intensity relation of either sign
    (e.g. T1 against T2, where tissue contrasts invert) counts as a match.

    For a window ``w`` of ``n`` voxels: ``A = sum(I J) - sum(I) sum(J) / n``,
    ``B = sum(I^2) - sum(I)^2 / n``, ``C = sum(J^2) - sum(J)^2 / n`` and
    ``ncc_w = A / sqrt(B C + e)`` with ``e = (n eps)^2``. The returned similarity is the mean of
    ``ncc_w`` over all window centres; the gradient is ``d mean(ncc) / d J(x)``, summed over the
    windows that contain ``x`` (so it is exact, not the usual point-wise approximation).

    Args:
        fixed: ``[1, 1, D0, D1, D2]`` fixed image ``I``.
        warped: ``[1, 1, D0, D1, D2]`` warped moving image ``J``.
        radius: window half-width (window ``2 radius + 1`` voxels per axis).
        eps: regularises flat windows, in intensity-variance units of images scaled to [0, 1].
    Returns:
        ``(similarity, gradient)``: similarity in [-1, 1] (higher is better) and a
        ``[1, 1, D0, D1, D2]`` tensor (ascent direction of the similarity).
    """
    n = float((2 * radius + 1) ** 3)
    count = fixed.numel()
    stats = box_sum(torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], dim=1), radius)
    s_i, s_j, s_ii, s_jj, s_ij = stats.unbind(1)
    del stats
    a = s_ij - s_i * s_j / n
    b = (s_ii - s_i * s_i / n).clamp_min_(0)
    c = (s_jj - s_j * s_j / n).clamp_min_(0)
    inv = (b * c + (n * eps) ** 2).rsqrt_()
    ncc = a * inv
    # d ncc_w / d J(x) = alpha_w (I(x) - mean_I,w) - beta_w (J(x) - mean_J,w)
    alpha = inv
    beta = a * b * inv.pow(3)
    if squared:  # d ncc^2 = 2 ncc d ncc
        similarity = float((ncc * ncc).sum()) / count
        alpha, beta = 2 * ncc * alpha, 2 * ncc * beta
    else:
        similarity = float(ncc.sum()) / count
    terms = box_sum(torch.stack([alpha, alpha * s_i / n, beta, beta * s_j / n], dim=1), radius)
    box_alpha, box_alpha_mi, box_beta, box_beta_mj = terms.unbind(1)
    grad = fixed[:, 0] * box_alpha - box_alpha_mi - warped[:, 0] * box_beta + box_beta_mj
    return similarity, (grad / count).unsqueeze(1)


def ssd_and_gradient(fixed_features: torch.Tensor, warped_features: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Negative mean squared difference of feature maps and its gradient.

    Args:
        fixed_features: ``[1, C, D0, D1, D2]``.
        warped_features: ``[1, C, D0, D1, D2]`` moving features warped onto the fixed grid.
    Returns:
        ``(similarity, gradient)``: ``-mean((F - W)^2)`` over voxels (summed over channels)
        and its gradient ``[1, C, D0, D1, D2]`` with respect to the warped features.
    """
    diff = fixed_features - warped_features
    count = diff[0, 0].numel()
    similarity = -float((diff * diff).sum()) / count
    return similarity, diff * (2.0 / count)
