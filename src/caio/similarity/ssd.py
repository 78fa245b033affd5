"""Squared difference of feature maps (MIND-SSC descriptors of a cross-contrast pair), with its gradient.

Like :func:`caio.similarity.lncc.lncc_and_gradient`, it scores the fixed features against the *already warped*
moving features and returns the gradient with respect to the warped features; the fused CPU version is
:func:`caio.kernels.similarity.ssd_displacement_gradient`.
"""

from __future__ import annotations

import torch


def ssd_and_gradient(
    fixed_features: torch.Tensor, warped_features: torch.Tensor, robust: float = 0.0
) -> tuple[float, torch.Tensor]:
    """Negative mean (robust) squared difference of feature maps and its gradient.

    With ``r(x) = sum_c (F_c(x) - W_c(x))^2`` per voxel, the score is ``-mean(rho(r))``: ``rho(r) = r`` when
    ``robust`` is 0; else the Geman-McClure ``rho(r) = robust * r / (robust + r)``, which grows like ``r`` for
    small differences and levels off at ``robust``, so voxels that match nothing in the other image (a lesion
    seen in one contrast only) stop pulling the field: their gradient is scaled by ``(robust / (robust + r))^2``.

    Args:
        fixed_features: ``[1, C, D0, D1, D2]``.
        warped_features: ``[1, C, D0, D1, D2]`` moving features warped onto the fixed grid.
        robust: the Geman-McClure scale (in units of ``r``), or 0.
    Returns:
        ``(similarity, gradient)``: the score and its gradient ``[1, C, D0, D1, D2]`` with respect to the warped
        features.
    """
    diff = fixed_features - warped_features
    count = diff[0, 0].numel()
    if robust <= 0:
        return -float((diff * diff).sum()) / count, diff * (2.0 / count)
    r = (diff * diff).sum(dim=1, keepdim=True)
    shrink = robust / (robust + r)
    return -float((robust * r / (robust + r)).sum()) / count, diff * (shrink * shrink * (2.0 / count))
