"""The same-contrast pipeline data register two different people, and the pipeline brings them closer.

``tests/helpers/pipeline_data.py`` once mapped same-contrast ids onto two byte-identical ``test_data`` files, so the
same-contrast pipeline tests registered an image to itself (issue 30). Here: every T1 subject is a different
person, and the real pipeline (gate + engine, CPU, 3 s) aligns one to another better than the zero field does,
scored by a similarity the engine does not use (brain-masked global correlation and squared difference).
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch
from helpers.pipeline_data import OASIS_T1, SHAPE, T1_SUBJECTS, make_dataset, small_volume, source_of

from caio import spatial
from caio.io import load_pairs
from caio.pipeline import Models, PipelineConfig, register_pair

SAME_CONTRAST_IDS = ("0001_0000", "0002_0000", "0003_0000", "0004_0000")
"""The same-contrast ids the pipeline tests use (tests/pipeline/test_pair.py, tests/cli/test_predict.py ...)."""


def _correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def test_the_four_t1_subjects_are_four_different_people():
    volumes = {name: small_volume(name) for name in T1_SUBJECTS}
    assert all(v.shape == SHAPE and v.dtype == np.float32 and 250 <= v.max() <= 255 for v in volumes.values())
    digests = {hashlib.sha256(v.tobytes()).hexdigest() for v in volumes.values()}
    assert len(digests) == len(T1_SUBJECTS)  # no copy of another subject (test_data's 4024 is one of 3455)
    for a, b in itertools.combinations(T1_SUBJECTS, 2):
        mask = (volumes[a] > 0) | (volumes[b] > 0)
        # two people's brains after an affine alignment correlate ~0.9; an image with itself, or a resampled
        # copy of itself, correlates > 0.98
        assert _correlation(volumes[a], volumes[b], mask) < 0.97, (a, b)
    assert OASIS_T1.stat().st_size < 300_000


def test_the_same_contrast_ids_of_the_tests_map_onto_different_subjects():
    sources = [source_of(i) for i in SAME_CONTRAST_IDS]
    assert len(set(sources)) == len(SAME_CONTRAST_IDS), sources
    assert source_of("0003_0001") not in T1_SUBJECTS  # the T2-like subject


@pytest.fixture(scope="module", autouse=True)
def _engine_kernels_loaded():
    from caio.engine import warm_up

    warm_up()


@pytest.mark.parametrize("fixed_id, moving_id", [("0002_0000", "0001_0000"), ("0003_0000", "0004_0000")])
def test_the_pipeline_aligns_two_different_subjects_better_than_the_zero_field(tmp_path, fixed_id, moving_id):
    root = tmp_path / "data"
    (pair,) = load_pairs(make_dataset(root, [(fixed_id, moving_id)]), root)
    cfg = PipelineConfig(device="cpu", expected_shape=None, budget_s=3.0)
    result = register_pair(pair, cfg, Models(device=torch.device("cpu")))
    assert result.status == "ok" and not result.cross_contrast, result.message
    engine = next(s for s in result.trace.steps if s.name == "engine").info["engine"]
    assert engine["similarity_after"] > engine["similarity_before"]  # strictly: the images differ
    fixed, moving = small_volume(source_of(fixed_id)), small_volume(source_of(moving_id))
    warped = spatial.warp(torch.from_numpy(moving)[None, None], torch.from_numpy(result.disp)[None])[0, 0].numpy()
    brain = fixed > 0
    before, after = _correlation(fixed, moving, brain), _correlation(fixed, warped, brain)
    mse_before, mse_after = (float(np.mean((fixed - m)[brain] ** 2)) for m in (moving, warped))
    assert after > before + 0.01, (before, after)
    assert mse_after < 0.9 * mse_before, (mse_before, mse_after)
