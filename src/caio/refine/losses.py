"""Losses of the instance-optimisation cascade: Gaussian-window LNCC and diffusion.

Sign and range conventions (read before using):

* :func:`local_ncc` returns the per-voxel, per-channel local normalised cross-correlation
  map in ``[-1, 1]`` (1: locally identical up to a linear intensity change, -1: inverted).
* :func:`lncc` is its mean over voxels and channels: a **similarity** in ``[-1, 1]``,
  higher is better.
* :func:`lncc_loss` is ``1 - lncc``: a **loss** in ``[0, 2]``, 0 for a perfect match.
  This is what the cascade minimises.

Local statistics are Gaussian-weighted (window sigma in voxels of the grid the images are
on, via :func:`caio.spatial.gaussian_blur`, replicate padding). Both local variances are
clamped from below by ``eps`` (in squared image units; caio's cascade normalises images to
about [0, 1], MIND features lie in (0, 1]) so flat regions such as the background give a
correlation near 0 instead of dividing by zero. Multi-channel inputs (e.g. MIND-SSC maps with
12 channels) are correlated channel by channel and averaged.
"""

from __future__ import annotations

import torch

from caio import spatial

DEFAULT_EPS = 1e-4
"""Lower bound of the local variances, in squared normalised-intensity units (std 0.01)."""


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, sigma_vox: float, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Local normalised cross-correlation map with a Gaussian window.

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
    stats = spatial.gaussian_blur(torch.cat([f, w, f * f, w * w, f * w], dim=1), sigma_vox)
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


def diffusion(disp: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser: sum over the 3 axes of the mean squared forward difference.

    Args:
        disp: ``[B, 3, D0, D1, D2]`` displacement in voxels of its grid.
    Returns:
        scalar tensor in voxels^2 per voxel^2 (0 for a constant field).
    """
    d0 = disp[:, :, 1:] - disp[:, :, :-1]
    d1 = disp[:, :, :, 1:] - disp[:, :, :, :-1]
    d2 = disp[:, :, :, :, 1:] - disp[:, :, :, :, :-1]
    return (d0 * d0).mean() + (d1 * d1).mean() + (d2 * d2).mean()
