"""Local normalised cross-correlation (LNCC): the one implementation in PyTorch, in three windows.

LNCC compares two images window by window: ``ncc_w = cov_w(I, J) / sqrt(var_w(I) var_w(J))``, in ``[-1, 1]``
(1: locally identical up to a linear intensity change). Higher is better everywhere in this module.

* :func:`lncc_and_gradient` -- box window (cubic, ``2 r + 1`` voxels, sums by :func:`box_sum`), the mean over all
  window centres and its *exact analytic* gradient with respect to the warped image: the registration engine
  never differentiates through the warp (autograd through ``grid_sample`` is its bottleneck on a CPU), it
  multiplies this gradient by the warped image's spatial gradient (:mod:`caio.engine.optimizer`).
  ``squared=True`` scores ``ncc_w^2``: a locally linear relation of either sign counts as a match (T1 against
  T2, where tissue contrasts invert). Its fused CPU version is
  :func:`caio.kernels.similarity.lncc_displacement_gradient`.
* :func:`local_ncc`, :func:`lncc`, :func:`lncc_loss` -- Gaussian window (sigma in voxels), variances clamped
  from below; differentiable by autograd (the instance-optimisation cascade, :mod:`caio.refine`). Multi-channel
  inputs are correlated channel by channel.
* :func:`masked_lncc` -- Gaussian window whose statistics are normalised by the window's weight in a mask, so
  that voxels outside it never enter a window (the contrast gate, :mod:`caio.contrast.gate`).

Images are expected in a fixed intensity range (callers scale them to about [0, 1]); ``eps`` is relative to it.
"""

from __future__ import annotations

import torch

from caio import spatial
from caio.similarity.windows import box_sum

DEFAULT_EPS = 1e-4
"""Lower bound of the Gaussian-window variances, in squared normalised-intensity units (std 0.01)."""


def _products(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """``[I, J, I^2, J^2, I J]`` stacked on the channel axis: what every window of this module averages."""
    return torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], dim=1)


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
    stats = box_sum(_products(fixed, warped), radius)
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


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, sigma_vox: float, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Local normalised cross-correlation map with a Gaussian window.

    Both local variances are clamped from below by ``eps`` so that flat regions (the background) correlate near
    0 instead of dividing by zero.

    Args:
        fixed, warped: ``[B, C, D0, D1, D2]`` images or feature maps on the same grid.
        sigma_vox: Gaussian window standard deviation, in voxels of this grid.
        eps: lower bound of each local variance (squared intensity units).
    Returns:
        ``[B, C, D0, D1, D2]`` float32 correlation in ``[-1, 1]``.
    """
    if fixed.shape != warped.shape:
        raise ValueError(f"fixed {tuple(fixed.shape)} and warped {tuple(warped.shape)} must have the same shape")
    f = fixed.float()
    w = warped.float()
    channels = f.shape[1]
    stats = spatial.gaussian_blur(_products(f, w), sigma_vox)
    mean_f, mean_w, mean_ff, mean_ww, mean_fw = torch.split(stats, channels, dim=1)
    var_f = (mean_ff - mean_f * mean_f).clamp_min(eps)
    var_w = (mean_ww - mean_w * mean_w).clamp_min(eps)
    cov = mean_fw - mean_f * mean_w
    return (cov * torch.rsqrt(var_f * var_w)).clamp(-1.0, 1.0)


def lncc(fixed: torch.Tensor, warped: torch.Tensor, sigma_vox: float, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Mean local NCC: a similarity in ``[-1, 1]`` (higher is better); scalar tensor.

    See :func:`local_ncc` for the arguments; channels are averaged.
    """
    return local_ncc(fixed, warped, sigma_vox, eps).mean()


def lncc_loss(fixed: torch.Tensor, warped: torch.Tensor, sigma_vox: float, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``1 - lncc``: a loss in ``[0, 2]``, 0 for a perfect local match; scalar tensor."""
    return 1.0 - lncc(fixed, warped, sigma_vox, eps)


def masked_lncc(
    fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor, sigma_vox: float, eps: float
) -> torch.Tensor:
    """Local NCC map whose Gaussian-window statistics count only the voxels inside a mask.

    Each local mean is the window's weighted sum divided by the window's weight, so voxels of weight 0 (outside
    the brain) never enter a window and a mask's outline does not count as agreement. ``eps`` is added to each
    local variance.

    Args:
        fixed, moving: ``[1, 1, D0, D1, D2]`` images already multiplied by ``weight``.
        weight: ``[1, 1, D0, D1, D2]`` mask (0 or 1).
        sigma_vox: Gaussian window standard deviation, in voxels.
        eps: added to each local variance.
    Returns:
        ``[1, 1, D0, D1, D2]`` correlation (meaningful where ``weight`` > 0).
    """
    local = spatial.gaussian_blur(torch.cat([weight, _products(fixed, moving)], dim=1), float(sigma_vox))
    window_weight = local[:, :1].clamp_min(1e-6)
    mean_f, mean_m, ff, mm, fm = (local[:, k : k + 1] / window_weight for k in range(1, 6))
    var_f = (ff - mean_f * mean_f).clamp_min(0.0)
    var_m = (mm - mean_m * mean_m).clamp_min(0.0)
    return (fm - mean_f * mean_m) / torch.sqrt((var_f + eps) * (var_m + eps))
