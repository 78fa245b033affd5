"""The safeguard (caio.engine.safeguard): a level that makes the pair worse by a criterion it did not optimise is
undone, and the trace says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.data import require_path

from caio import spatial
from caio.engine import EngineConfig, register
from caio.engine.cpu_backend import NumbaKernels
from caio.engine.optimizer import TorchKernels
from caio.engine.safeguard import AlignmentCheck, CheckedField, judge
from caio.similarity.ssd import ssd_and_gradient
from caio.synth.generator import random_displacement

LESION_CROP = "brats_lesion_t1_t2_flair_3mm.npz"
QUICK = EngineConfig(iterations=(60, 30, 10))


@pytest.fixture(scope="module")
def lesion_case(data_dir):
    """A real brain-tumour patient at 3 mm: T1, T2, FLAIR, lesion mask, and the T1 warped by a known field."""
    crop = np.load(require_path(data_dir / LESION_CROP))
    images = {name: torch.from_numpy(crop[name])[None, None] for name in ("t1", "t2", "flair")}
    shape = tuple(images["t1"].shape[2:])
    truth = random_displacement(shape, torch.Generator().manual_seed(0), max_disp=1.0, control_spacing=12)
    truth = truth * (3.0 / float(truth.abs().max()))
    brain = spatial.warp((images["t1"] > 0).float(), truth, mode="nearest")[0, 0] > 0.5
    lesion = torch.from_numpy(crop["lesion"]).float()[None, None]
    lesion = spatial.warp(lesion, truth, mode="nearest")[0, 0] > 0.5
    return dict(images, truth=truth, fixed=spatial.warp(images["t1"], truth), brain=brain, lesion=lesion)


def _error(disp: torch.Tensor, case: dict, region: torch.Tensor) -> float:
    return float((disp - case["truth"]).norm(dim=1)[0][region].mean())


# ------------------------------------------------------------------ the decision


def _field(score: float, label: str) -> CheckedField:
    return CheckedField(score, None, label)


def test_a_level_that_gains_or_loses_little_is_kept():
    start, best = _field(1.0, "the start"), _field(2.0, "level 1/4")
    assert judge(start, best, _field(2.5, "level 1/2"), 0.5).keep
    assert judge(start, best, _field(1.6, "level 1/2"), 0.5).keep  # lost 40 % of the gain


def test_a_level_that_loses_most_of_the_gain_falls_back_to_the_best_field():
    start, best = _field(1.0, "the start"), _field(2.0, "level 1/4")
    verdict = judge(start, best, _field(1.4, "level 1/2"), 0.5)
    assert not verdict.keep and verdict.fallback is best
    assert verdict.note == "level 1/2 lowered MIND-SSC agreement 2.0000 -> 1.4000; kept level 1/4"
    assert not verdict.below_start


def test_a_loss_within_the_criterion_noise_is_not_a_failure():
    start = _field(-0.0066, "the start")  # a pair aligned from the start: interpolation alone costs ~0.005
    assert judge(start, start, _field(-0.0116, "level 1/1"), 0.5).keep
    assert not judge(start, start, _field(-0.0266, "level 1/1"), 0.5).keep


def test_a_level_below_the_start_falls_back_to_the_start():
    start = _field(1.0, "the start")
    verdict = judge(start, start, _field(0.9, "level 1/4"), 0.5)
    assert not verdict.keep and verdict.fallback is start and verdict.below_start


# ------------------------------------------------------------------ the criteria


def test_the_check_scores_the_true_field_above_no_field_in_every_contrast(lesion_case):
    for moving in ("t1", "t2", "flair"):
        check = AlignmentCheck(lesion_case["fixed"], lesion_case[moving], max_factor=1)
        assert check.score(lesion_case["truth"]) > check.score(None), moving


def test_the_fused_cpu_score_equals_the_torch_score(lesion_case):
    cpu, torch_path = NumbaKernels("mind"), TorchKernels(ssd_and_gradient)  # the engine's two backends
    fused = AlignmentCheck(lesion_case["fixed"], lesion_case["t2"], max_factor=1, kernels=cpu)
    plain = AlignmentCheck(lesion_case["fixed"], lesion_case["t2"], max_factor=1, kernels=torch_path)
    assert fused.fused and not plain.fused
    for disp in (
        lesion_case["truth"],
        2.5 * lesion_case["truth"],
        spatial.resize_displacement(lesion_case["truth"], (24, 32, 24)),
    ):
        assert fused.score(disp) == pytest.approx(plain.score(disp), rel=1e-5)


# ------------------------------------------------------------------ in the engine


def test_the_safeguard_keeps_the_start_when_lncc_is_made_to_fail_on_an_inverted_contrast(lesion_case):
    t1 = lesion_case["t1"]
    inverted = torch.where(t1 > 0, 256.0 - t1, torch.zeros_like(t1))  # LNCC pulls edges onto the wrong edges
    brain = lesion_case["brain"]
    unguarded, _ = register(
        lesion_case["fixed"],
        inverted,
        similarity="lncc",
        deadline=None,
        config=EngineConfig(iterations=QUICK.iterations, safeguard=False),
    )
    disp, trace = register(lesion_case["fixed"], inverted, similarity="lncc", deadline=None, config=QUICK)
    zero = float(lesion_case["truth"].norm(dim=1)[0][brain].mean())
    assert _error(unguarded, lesion_case, brain) > 2 * zero  # the level did fail
    assert len(trace.safeguard) == 1 and "kept the start; the route stops" in trace.safeguard[0]
    assert [check["kept"] for check in trace.checks] == [False]  # the coarsest level failed: no finer one ran
    assert _error(disp, lesion_case, brain) == pytest.approx(zero, abs=1e-4)  # the start, exactly


def test_the_safeguard_leaves_a_same_contrast_registration_alone(lesion_case):
    guarded, trace = register(lesion_case["fixed"], lesion_case["t1"], similarity="lncc", deadline=None, config=QUICK)
    plain, _ = register(
        lesion_case["fixed"],
        lesion_case["t1"],
        similarity="lncc",
        deadline=None,
        config=EngineConfig(iterations=QUICK.iterations, safeguard=False),
    )
    assert trace.safeguard == [] and trace.checks and all(check["kept"] for check in trace.checks)
    assert torch.equal(guarded, plain)


def test_with_the_lesion_settings_a_lesion_in_the_moving_image_does_not_pull_the_field(lesion_case, data_dir):
    """T1 fixed (warped by a known field), the patient's T2 moving with a bright lesion-like blob (12 mm across, in
    white matter away from the real tumour) that the T1 does not have: with ``EngineConfig.for_lesions()`` the
    field inside the blob stays closer to the known warp than no registration (the default settings' remapped
    levels pull it: 1.24 voxels against 1.00), and outside it the field is as good as without the blob."""
    from scipy import ndimage

    crop = np.load(data_dir / LESION_CROP)
    away = (crop["t1"] > 0) & ~ndimage.binary_dilation(crop["lesion"] > 0, iterations=3)
    depth = ndimage.distance_transform_edt(away)
    centre = np.array(np.unravel_index(np.argmax(depth), depth.shape))[:, None, None, None]
    blob = torch.from_numpy(((np.indices(depth.shape) - centre) ** 2).sum(axis=0) <= 16)[None, None]
    truth = random_displacement(blob.shape[2:], torch.Generator().manual_seed(1), max_disp=1.0, control_spacing=12)
    truth = truth * (4.0 / float(truth.abs().max()))
    case = dict(lesion_case, truth=truth, fixed=spatial.warp(lesion_case["t1"], truth))
    region = spatial.warp(blob.float(), truth, mode="nearest")[0, 0] > 0.5
    outside = (spatial.warp((lesion_case["t1"] > 0).float(), truth, mode="nearest")[0, 0] > 0.5) & ~region
    t2 = lesion_case["t2"]
    with_blob = torch.where(blob, torch.full_like(t2, 255.0), t2)
    lesions = EngineConfig.for_lesions()
    plain, _ = register(case["fixed"], t2, similarity="mind", deadline=None, config=lesions)
    disp, _ = register(case["fixed"], with_blob, similarity="mind", deadline=None, config=lesions)
    assert _error(disp, case, region) < _error(torch.zeros_like(disp), case, region)
    assert _error(disp, case, outside) < 1.05 * _error(plain, case, outside)
