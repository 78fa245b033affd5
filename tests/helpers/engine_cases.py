"""Small engine test cases shared by the engine tests: smooth random fields and a real image slab."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from caio import spatial

TEST_DATA = Path(__file__).resolve().parents[2] / "test_data"


def smooth_random(shape, channels, sigma, scale, seed):
    """Smooth random ``[1, channels, *shape]`` with root-mean-square ``scale / 2``."""
    gen = torch.Generator().manual_seed(seed)
    field = spatial.gaussian_blur(torch.randn(1, channels, *shape, generator=gen), sigma)
    return field * (0.5 * scale / field.square().mean().sqrt())


def real_slab(factor: int = 3) -> torch.Tensor:
    """The test_data T1 (LUMIRMRI_3455_0000), downsampled ``factor`` times: ``[1, 1, ...]`` in [0, 255]."""
    image = np.asarray(nib.load(TEST_DATA / "imagesVal" / "LUMIRMRI_3455_0000.nii.gz").dataobj, np.float32)
    volume = torch.from_numpy(image)[None, None]
    return spatial.resize_image(volume, spatial.scaled_shape(volume.shape[2:], factor))


def brain_rms(error: torch.Tensor, mask: torch.Tensor) -> float:
    return float(error.square().sum(dim=1)[0][mask].mean().sqrt())
