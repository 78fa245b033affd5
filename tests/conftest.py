"""Shared test fixtures: the reference fixtures and small data in the repository (helpers: ``tests/helpers/``).

Everything the default suite reads is in the repository: ``tests/fixtures/`` (reference outputs,
see its README) and ``tests/data/`` (small files derived from ``../shared/data``, see its README).
``../shared`` beside the checkout is only needed by slow or optional checks (``shared_dir``).
Under ``CI=true`` a test that would skip for missing data fails instead (:func:`require_path`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers.data import DATA, FIXTURES, REPO, SHARED, require_path
from helpers.unprivileged import shared_folder


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


@pytest.fixture
def shared_tmp_path() -> Path:
    """A fresh folder (mode 0755) under the system temp dir that an unprivileged child can reach
    (``tests/helpers/unprivileged.py``; pytest's ``tmp_path`` lies under a mode-0700 folder as root); removed after."""
    path = shared_folder()
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
