"""Shared test fixtures: locations of ../shared (fixtures, data) and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (CI has it there); tests that need it skip without it."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found (shared/ must sit beside the checkout)")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures"


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
