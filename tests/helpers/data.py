"""Small data helpers of the tests: the repository's data folders, :func:`require_path`, synthetic brain-like
volumes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from caio.spatial import gaussian_blur

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
FIXTURES = REPO / "tests" / "fixtures"
DATA = REPO / "tests" / "data"


def require_path(path: Path, why: str = "test data") -> Path:
    """``path`` if it exists; else skip the test, or fail it when ``CI=true`` (CI must run every test)."""
    if Path(path).exists():
        return Path(path)
    message = f"{path} not found ({why})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; under CI=true missing data is an error")
    pytest.skip(message)


def blob_volume(seed: int = 0, shape=(48, 56, 52)) -> torch.Tensor:
    """Brain-like test volume: smooth random texture inside an ellipsoid, background 0."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, 1, *shape), generator=gen)
    texture = gaussian_blur(noise, 3.0)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape) - 1) / 2
    inside = (((grid - centre[:, None, None, None]) / (0.4 * np.array(shape))[:, None, None, None]) ** 2).sum(0) < 1
    return torch.where(torch.from_numpy(inside)[None, None], 20 + 200 * texture, torch.zeros(()))


def textured_pair(weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two blob volumes whose textures share ``weight`` of the first one's (same brain outline)."""
    a, b = blob_volume(0), blob_volume(1)
    return a, torch.where(a > 0, weight * a + (1 - weight) * b, torch.zeros(()))
