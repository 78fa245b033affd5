"""Shared test fixtures: the reference fixtures and small data in the repository, and small helpers.

Everything the default suite reads is in the repository: ``tests/fixtures/`` (reference outputs,
see its README) and ``tests/data/`` (small files derived from ``../shared/data``, see its README).
``../shared`` beside the checkout is only needed by slow or optional checks (``shared_dir``).
Under ``CI=true`` a test that would skip for missing data fails instead (:func:`require_path`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from caio.spatial import gaussian_blur

REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout; tests that need it skip without it (fail under CI=true)."""
    return require_path(SHARED, "shared/ must sit beside the checkout")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures``: reference outputs (VFA, Brain-ID, LUMIR evaluator), see its README."""
    return require_path(FIXTURES, "reference fixtures")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``tests/data``: small files derived from ``../shared/data``, see its README."""
    return require_path(DATA, "derived test data")


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(autouse=True)
def _two_threads():
    """Keep torch on at most 2 threads, as on the project's machines."""
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a 2-core machine small 3-D convolutions run faster so."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
