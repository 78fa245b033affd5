"""Regulariser of the instance-optimisation cascade: diffusion (the mean squared forward difference of the field).

The cascade's similarity is the Gaussian-window LNCC loss of :mod:`caio.similarity.lncc`
(:func:`~caio.similarity.lncc.lncc_loss`, ``1 - lncc``, in ``[0, 2]``).
"""

from __future__ import annotations

import torch


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
