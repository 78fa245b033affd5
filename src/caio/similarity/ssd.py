"""Squared difference of feature maps (MIND-SSC descriptors of a cross-contrast pair), with its gradient.

Like :func:`caio.similarity.lncc.lncc_and_gradient`, it scores the fixed features against the *already warped*
moving features and returns the gradient with respect to the warped features; the fused CPU version is
:func:`caio.kernels.similarity.ssd_displacement_gradient`.
"""

from __future__ import annotations

import torch


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
