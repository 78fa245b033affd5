"""The registration engine (caio.register): kernels, gradients, recovery of known warps, deadlines."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from caio import spatial
from caio.engine import EngineConfig, register, warm_up
from caio.engine import cpu_filters as cf
from caio.engine import cpu_kernels as ck
from caio.engine.cpu_backend import NumbaKernels
from caio.engine.optimizer import LevelSettings, TorchKernels, optimise_level
from caio.engine.schedule import CostModel, plan_iterations
from caio.engine.similarity import box_sum, lncc_and_gradient

TEST_DATA = Path(__file__).resolve().parents[1] / "test_data"


def _smooth_random(shape, channels, sigma, scale, seed):
    """Smooth random ``[1, channels, *shape]`` with root-mean-square ``scale / 2``."""
    gen = torch.Generator().manual_seed(seed)
    field = spatial.gaussian_blur(torch.randn(1, channels, *shape, generator=gen), sigma)
    return field * (0.5 * scale / field.square().mean().sqrt())


def _real_slab(factor: int = 3) -> torch.Tensor:
    """The test_data T1 (LUMIRMRI_3455_0000), downsampled ``factor`` times: ``[1, 1, ...]`` in [0, 255]."""
    image = np.asarray(nib.load(TEST_DATA / "imagesVal" / "LUMIRMRI_3455_0000.nii.gz").dataobj, np.float32)
    volume = torch.from_numpy(image)[None, None]
    return spatial.resize_image(volume, spatial.scaled_shape(volume.shape[2:], factor))


def _brain_rms(error: torch.Tensor, mask: torch.Tensor) -> float:
    return float(error.square().sum(dim=1)[0][mask].mean().sqrt())


# ------------------------------------------------------------------ kernels against the reference maths


def test_numba_warp_compose_blur_and_box_match_the_torch_reference():
    shape = (18, 22, 20)
    moving = _smooth_random(shape, 1, 1.0, 1.0, 0)
    u = _smooth_random(shape, 3, 2.0, 3.0, 1)
    v = _smooth_random(shape, 3, 2.0, 1.5, 2)
    warped = np.empty((1, *shape), np.float32)
    gradient = np.empty((1, 3, *shape), np.float32)
    ck.warp_with_gradient(moving[0].numpy(), u[0].numpy(), warped, gradient)
    assert np.allclose(warped, spatial.warp(moving, u)[0].numpy(), atol=1e-5)
    composed = np.empty((3, *shape), np.float32)
    ck.compose_fields(u[0].numpy(), v[0].numpy(), composed)
    assert np.allclose(composed, spatial.compose(u, v)[0].numpy(), atol=1e-5)
    weights = spatial.gaussian_kernel1d(1.5).numpy()
    assert np.allclose(
        cf.separable_filter(u[0].numpy(), weights, True), spatial.gaussian_blur(u, 1.5)[0].numpy(), atol=1e-5
    )
    ones = np.ones(5, np.float32)
    assert np.allclose(cf.separable_filter(u[0].numpy(), ones, False), box_sum(u, 2)[0].numpy(), atol=1e-4)


def test_warp_gradient_is_the_derivative_of_the_interpolated_image():
    shape = (16, 18, 17)
    moving = _smooth_random(shape, 1, 1.5, 1.0, 3)[0].numpy()
    u = _smooth_random(shape, 3, 2.0, 2.0, 4)[0].numpy()
    warped = np.empty((1, *shape), np.float32)
    gradient = np.empty((1, 3, *shape), np.float32)
    ck.warp_with_gradient(moving, u, warped, gradient)
    h = 1e-2
    for axis in range(3):
        shifted = u.copy()
        shifted[axis] += h
        plus = np.empty_like(warped)
        ck.warp_with_gradient(moving, shifted, plus, np.empty_like(gradient))
        inner = (slice(2, -2),) * 3
        numeric = ((plus - warped) / h)[0][inner]
        # exact except where the finite step crosses a voxel boundary (a kink of the interpolant)
        assert np.isclose(gradient[0, axis][inner], numeric, atol=2e-3).mean() > 0.97


@pytest.mark.parametrize("squared", [False, True])
def test_lncc_gradient_equals_autograd_in_float64(squared):
    shape = (12, 13, 11)
    fixed = _smooth_random(shape, 1, 1.0, 1.0, 5).double()
    warped = _smooth_random(shape, 1, 1.0, 1.0, 6).double().requires_grad_()
    n = 125.0
    stats = [box_sum(x, 2) for x in (fixed, warped, fixed * fixed, warped * warped, fixed * warped)]
    a = stats[4] - stats[0] * stats[1] / n
    b = stats[2] - stats[0] ** 2 / n
    c = stats[3] - stats[1] ** 2 / n
    ncc = a / torch.sqrt(b * c + (n * 1e-3) ** 2)
    (ncc.square() if squared else ncc).mean().backward()
    similarity, gradient = lncc_and_gradient(fixed, warped.detach(), 2, 1e-3, squared=squared)
    assert similarity == pytest.approx(float((ncc.square() if squared else ncc).mean().detach()), rel=1e-12)
    assert torch.allclose(gradient, warped.grad, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("kind", ["lncc", "lncc2", "mind"])
def test_numba_similarity_field_matches_the_torch_path(kind):
    shape = (14, 16, 15)
    channels = 12 if kind == "mind" else 1
    fixed = _smooth_random(shape, channels, 1.0, 1.0, 7)
    moving = _smooth_random(shape, channels, 1.0, 1.0, 8)
    u = _smooth_random(shape, 3, 2.0, 1.5, 9)
    sim, field = NumbaKernels(kind, 2, 1e-3).similarity_field(fixed, moving, u)
    # reference: torch similarity gradient on the Numba-warped image, times the interpolant's gradient
    warped = np.empty((channels, *shape), np.float32)
    grad = np.empty((channels, 3, *shape), np.float32)
    ck.warp_with_gradient(moving[0].numpy(), u[0].numpy(), warped, grad)
    warped_t = torch.from_numpy(warped)[None]
    if kind == "mind":
        ref_sim, ref_grad = (
            -float((fixed - warped_t).square().sum(1).mean()),
            2 * (fixed - warped_t) / fixed[0, 0].numel(),
        )
    else:
        ref_sim, ref_grad = lncc_and_gradient(fixed, warped_t, 2, 1e-3, squared=kind == "lncc2")
    reference = (ref_grad[0][:, None] * torch.from_numpy(grad)).sum(0)
    assert sim == pytest.approx(ref_sim, rel=1e-4)
    assert torch.allclose(field[0], reference, atol=1e-4 * float(reference.abs().max()))


def test_numba_and_torch_paths_recover_the_same_warp_equally_well():
    shape = (24, 26, 24)
    moving = _smooth_random(shape, 1, 1.5, 1.0, 10)
    truth = _smooth_random(shape, 3, 4.0, 2.0, 11)
    fixed = spatial.warp(moving, truth)
    start = torch.zeros((1, 3, *shape))
    settings = LevelSettings(step=0.5)
    torch_kernels = TorchKernels(lambda f, w: lncc_and_gradient(f, w, 2, 1e-3))
    errors = []
    for kernels in (NumbaKernels("lncc", 2, 1e-3), torch_kernels):
        level = optimise_level(fixed, moving, start, kernels, 40, settings)
        assert level.similarity_best > level.similarity_start
        errors.append(float((level.displacement - truth).square().sum(1).mean().sqrt()))
    before = float(truth.square().sum(1).mean().sqrt())
    # they differ only in the image gradient (the interpolant's vs central differences)
    assert max(errors) < 0.6 * before and abs(errors[0] - errors[1]) < 0.25 * before, (errors, before)


def test_cpu_update_writes_into_the_spare_field_and_gives_the_same_step():
    shape = (10, 12, 11)
    disp, gradient = _smooth_random(shape, 3, 2.0, 1.0, 20), _smooth_random(shape, 3, 1.0, 1.0, 21)
    settings = LevelSettings(step=0.5)
    fresh = NumbaKernels("lncc", 2, 1e-3).update(disp, gradient, settings)
    spare = torch.full((1, 3, *shape), float("nan"))
    reused = NumbaKernels("lncc", 2, 1e-3).update(disp, gradient, settings, spare)
    assert reused.data_ptr() == spare.data_ptr() and torch.equal(reused, fresh)
    assert fresh.data_ptr() != disp.data_ptr()


def test_the_best_field_a_level_returns_is_never_overwritten_by_later_updates():
    shape = (24, 26, 24)
    moving = _smooth_random(shape, 1, 1.5, 1.0, 10)
    fixed = spatial.warp(moving, _smooth_random(shape, 3, 4.0, 2.0, 11))
    init = torch.zeros((1, 3, *shape))
    kernels = NumbaKernels("lncc", 2, 1e-3)
    # a large step overshoots, so that the best field is an early one while later updates reuse buffers
    level = optimise_level(fixed, moving, init, kernels, 30, LevelSettings(step=3.0))
    rescored, _ = kernels.similarity_field(fixed, moving, level.displacement)
    assert rescored == pytest.approx(level.similarity_best, abs=1e-6)
    assert torch.count_nonzero(init) == 0  # the caller's field is never a spare


# ------------------------------------------------------------------ registration behaviour


def test_recovers_a_known_smooth_deformation_of_a_real_image():
    moving = _real_slab()
    truth = _smooth_random(moving.shape[2:], 3, 4.0, 3.0, 12)
    fixed = spatial.warp(moving, truth)  # fixed(x) = moving(x + truth(x)): the answer is truth itself
    disp, trace = register(fixed, moving, similarity="lncc", config=EngineConfig(factors=(2, 1), iterations=(60, 30)))
    mask = fixed[0, 0] > 0.1 * float(fixed.max())
    before, after = _brain_rms(truth, mask), _brain_rms(disp - truth, mask)
    assert after < 0.4 * before, (before, after)
    assert trace.similarity_after > trace.similarity_before
    assert float(spatial.jacobian_determinant(disp).min()) > 0


class _WarpedT1T2:
    """A T1-like image warped by a known field and a T2-like moving image, drawn from the test_data T1's
    label map at 3 mm voxels; :meth:`gain` scores a field by the label Dice it adds."""

    def __init__(self) -> None:
        from caio.synth.contrast_models import SynthConfig, generator_for, synthesize_image
        from caio.synth.generator import canonical_labels

        raw = np.asarray(nib.load(TEST_DATA / "labelsVal" / "LUMIRMRI_3455_0000.nii.gz").dataobj)[::3, ::3, ::3]
        self.labels = canonical_labels(raw.astype(np.int64))
        t1 = synthesize_image(self.labels, "t1", generator_for(0, 1), SynthConfig())
        self.moving = synthesize_image(self.labels, "t2", generator_for(0, 2), SynthConfig())
        truth = _smooth_random(t1.shape[2:], 3, 5.0, 2.0, 13)
        self.fixed = spatial.warp(t1, truth)
        self.label_map = torch.from_numpy(self.labels.astype(np.float32))[None, None]
        self.fixed_labels = spatial.warp(self.label_map, truth, mode="nearest")

    def dice(self, warped_labels: torch.Tensor) -> float:
        pairs = [(self.fixed_labels == float(v), warped_labels == float(v)) for v in np.unique(self.labels)[1:]]
        return float(np.mean([2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0) for a, b in pairs]))

    def dice_before_and_after(self, disp: torch.Tensor) -> tuple[float, float]:
        return self.dice(self.label_map), self.dice(spatial.warp(self.label_map, disp, mode="nearest"))


# two levels for the 3 mm pair; the default 1.5-voxel step was measured on 1 mm grids, where a voxel is a third as long
_CONFIG_3MM = EngineConfig(
    factors=(2, 1),
    iterations=(60, 30),
    mind_factors=(2, 1),
    mind_iterations=(60, 30),
    remap_factors=(2, 1),
    remap_iterations=(60, 30),
    remap_from=1,
    level=LevelSettings(step=1.0),
)


@pytest.mark.parametrize("similarity", ["lncc2", "remap", "mind"])
def test_cross_contrast_recovers_a_known_warp_between_t1_and_t2_like_images(similarity):
    pair = _WarpedT1T2()
    disp, trace = register(pair.fixed, pair.moving, similarity=similarity, config=_CONFIG_3MM)
    before, after = pair.dice_before_and_after(disp)
    # a quarter of the gap closed at 3 mm voxels; a fifth by remapping: at 3 mm the two drawn contrasts are
    # far from a function of each other (mapped T2 correlates 0.46 with the T1 in the brain; 0.67 at 1 mm)
    share = 0.2 if similarity == "remap" else 0.25
    assert after > before + share * (1 - before), (before, after)
    assert trace.similarity == similarity and trace.similarity_after > trace.similarity_before
    if similarity == "remap":  # squared LNCC first, then LNCC against the remapped moving image
        assert [level.similarity for level in trace.levels] == ["lncc2", "lncc"]


@pytest.mark.parametrize("threshold, route", [(0.0, "remap"), (1.0, "mind")])
def test_cross_remaps_when_the_map_explains_enough_and_takes_mind_ssc_when_not(threshold, route):
    pair = _WarpedT1T2()
    config = EngineConfig(
        remap_factors=(2, 2, 1),
        remap_iterations=(60, 30, 30),
        remap_from=1,
        remap_min_explained=threshold,
        mind_factors=(2, 1),
        mind_iterations=(60, 30),
        level=LevelSettings(step=1.0),
        mind_level=LevelSettings(step=1.0, sigma_field=0.75),
    )
    disp, trace = register(pair.fixed, pair.moving, similarity="cross", config=config)
    assert trace.similarity == route and 0.0 < trace.explained <= 1.0
    kinds = [level.similarity for level in trace.levels]
    # the first level (squared LNCC) runs either way; MIND-SSC then starts its own pyramid from that field and
    # ends with LNCC against the moving image remapped on the MIND-SSC-aligned pair
    assert kinds == (["lncc2", "lncc", "lncc"] if route == "remap" else ["lncc2", "mind", "mind", "lncc"]), kinds
    before, after = pair.dice_before_and_after(disp)
    assert after > before + 0.2 * (1 - before), (before, after)  # as the cross-contrast test above


def test_mind_ends_with_lncc_against_the_moving_image_remapped_on_the_mind_aligned_pair():
    pair = _WarpedT1T2()
    config = _CONFIG_3MM
    alone, trace_alone = register(
        pair.fixed,
        pair.moving,
        similarity="mind",
        config=dataclasses.replace(config, mind_remap_factors=(), mind_remap_iterations=()),
    )
    assert [level.similarity for level in trace_alone.levels] == ["lncc2", "mind", "mind"]
    refined, trace = register(pair.fixed, pair.moving, similarity="mind", config=config)
    last = trace.levels[-1]
    assert [level.similarity for level in trace.levels] == ["lncc2", "mind", "mind", "lncc"] and last.factor == 1
    assert last.done == 10 and last.similarity_end > last.similarity_start  # LNCC of intensities, not descriptors
    # drawn from labels, the two contrasts are a function of each other: the remapped image sharpens the field
    # (measured 0.753 -> 0.783; 1 mm LUMIR-like pairs 0.598 -> 0.622, README)
    assert pair.dice_before_and_after(refined)[1] > pair.dice_before_and_after(alone)[1] + 0.01


def test_mind_starts_with_squared_lncc_and_keeps_to_it_when_the_descriptors_would_miss_the_deadline():
    pair = _WarpedT1T2()
    config = EngineConfig(remap_factors=(2, 1), remap_iterations=(60, 30), remap_from=1, level=LevelSettings(step=1.0))
    disp, trace = register(pair.fixed, pair.moving, similarity="mind", config=config)
    assert [level.similarity for level in trace.levels] == ["lncc2", "mind", "mind", "mind", "lncc"]
    # descriptors priced at 1 s per voxel never fit a 20 s deadline: squared LNCC goes on to the finer levels
    slow = dataclasses.replace(config, mind_seconds_per_voxel=1.0)
    start = time.monotonic()
    disp, trace = register(pair.fixed, pair.moving, similarity="mind", deadline=start + 20.0, config=slow)
    assert time.monotonic() - start < 20.0
    assert trace.similarity == "lncc2" and [level.similarity for level in trace.levels] == ["lncc2", "lncc2"]
    before, after = pair.dice_before_and_after(disp)
    assert after > before and float(disp.abs().max()) > 0.5, (before, after)  # a field, not the zero field


def test_auto_takes_the_cross_contrast_similarity_for_a_cross_contrast_or_ambiguous_pair():
    from conftest import textured_pair

    from caio.engine.api import CROSS_CONTRAST_SIMILARITY, SAME_CONTRAST_SIMILARITY, resolve_similarity

    a, related = textured_pair(0.9)
    _, weakly_related = textured_pair(0.3)  # gate score in the ambiguous band (tests/test_gate.py)
    inverted = torch.where(a > 0, 256 - a, torch.zeros(()))
    assert resolve_similarity("auto", a, related) == SAME_CONTRAST_SIMILARITY
    assert resolve_similarity("auto", a, weakly_related) == CROSS_CONTRAST_SIMILARITY
    assert resolve_similarity("auto", a, inverted) == CROSS_CONTRAST_SIMILARITY
    assert resolve_similarity("lncc", a, inverted) == "lncc"


def test_a_deadline_is_kept_and_still_gives_a_field_better_than_zero():
    moving = _real_slab(2)
    fixed = spatial.warp(moving, _smooth_random(moving.shape[2:], 3, 4.0, 3.0, 14))
    warm_up()  # one-off kernel loading is not part of a pair's budget
    budget = 3.0
    start = time.monotonic()
    disp, trace = register(fixed, moving, similarity="lncc", deadline=start + budget)
    elapsed = time.monotonic() - start
    assert elapsed <= budget * 1.1 + 0.3, elapsed
    assert trace.iterations > 0 and trace.similarity_after > trace.similarity_before
    assert float(disp.abs().max()) > 0


def test_a_level_does_not_start_a_pass_that_would_end_after_its_deadline():
    moving = _real_slab(1)
    fixed = spatial.warp(moving, _smooth_random(moving.shape[2:], 3, 4.0, 3.0, 21))
    kernels, zero = NumbaKernels("lncc", 3), torch.zeros((1, 3, *fixed.shape[2:]))
    optimise_level(fixed, moving, zero, kernels, 1, LevelSettings())  # compile and warm the workspace
    one = optimise_level(fixed, moving, zero, kernels, 1, LevelSettings())  # one pass scored, updated, scored
    one_pass = one.seconds / 2
    start = time.monotonic()
    result = optimise_level(fixed, moving, zero, kernels, 100, LevelSettings(), deadline=start + 1.5 * one_pass)
    elapsed = time.monotonic() - start
    # a pass that starts shortly before the deadline would end about one pass after it: none may start then
    assert result.stopped_by_deadline and 1 <= result.iterations < 100
    assert elapsed <= 1.5 * one_pass * 1.15, (elapsed, one_pass)


def test_a_level_whose_deadline_has_passed_scores_nothing_and_returns_its_starting_field():
    fixed = _smooth_random((16, 16, 16), 1, 1.0, 1.0, 22)
    start_field = _smooth_random((16, 16, 16), 3, 2.0, 1.0, 23)
    result = optimise_level(
        fixed, fixed, start_field, NumbaKernels("lncc", 1), 5, LevelSettings(), deadline=time.monotonic() - 1
    )
    assert result.passes == 0 and result.iterations == 0 and result.stopped_by_deadline
    assert result.displacement is start_field


def test_every_deadline_after_the_coarse_level_keeps_at_least_the_coarse_field():
    """Deadlines swept in quarter steps of a fine pass across the moment the coarse level ends: whenever
    a level improved the field, the result keeps that gain -- also when the fine level is planned but
    its deadline (less the two passes it reserves) has already passed when it starts."""
    moving = _real_slab(3)
    fixed = spatial.warp(moving, _smooth_random(moving.shape[2:], 3, 4.0, 3.0, 24))
    config = EngineConfig(factors=(2, 1), iterations=(5, 10), min_iterations=1)
    warm_up()
    register(fixed, moving, similarity="lncc", config=config)  # warm the workspaces
    _, full = register(fixed, moving, similarity="lncc", config=config)
    coarse, fine = full.levels
    fine_pass = fine.seconds / (fine.done + 1)
    for quarter in range(14):
        deadline = time.monotonic() + coarse.seconds + 0.25 * quarter * fine_pass
        disp, trace = register(fixed, moving, similarity="lncc", deadline=deadline, config=config)
        improved = [lv for lv in trace.levels if lv.done > 0 and lv.similarity_end > lv.similarity_start]
        if improved:
            assert trace.similarity_after > trace.similarity_before, (quarter, trace.levels)
            assert float(disp.abs().max()) > 0


def test_a_deadline_already_past_returns_the_zero_field_at_once():
    fixed = _smooth_random((16, 16, 16), 1, 1.0, 1.0, 15)
    disp, trace = register(fixed, fixed, similarity="lncc", deadline=time.monotonic() - 1)
    assert disp.shape == (1, 3, 16, 16, 16) and float(disp.abs().max()) == 0
    assert trace.stopped_by_deadline and trace.iterations == 0


def test_init_field_is_the_starting_point():
    moving = _real_slab()
    truth = _smooth_random(moving.shape[2:], 3, 4.0, 3.0, 16)
    fixed = spatial.warp(moving, truth)
    disp, trace = register(
        fixed, moving, similarity="lncc", init=truth, config=EngineConfig(factors=(1,), iterations=(0,))
    )
    assert torch.allclose(disp, truth, atol=1e-5)


def test_output_is_on_the_full_grid_with_the_crop_undone():
    fixed = torch.zeros(1, 1, 40, 44, 36)
    fixed[..., 10:30, 12:34, 8:28] = _smooth_random((20, 22, 20), 1, 1.0, 100.0, 17).abs() + 10
    moving = torch.roll(fixed, 2, dims=2)
    disp, _ = register(fixed, moving, similarity="lncc", config=EngineConfig(factors=(2, 1), iterations=(30, 10)))
    assert disp.shape == (1, 3, 40, 44, 36)
    centre = disp[0, 0, 15:25, 17:29, 13:23]
    assert float(centre.mean()) == pytest.approx(2.0, abs=0.6)


def test_bad_inputs_are_rejected_with_a_message():
    with pytest.raises(ValueError, match="share a grid"):
        register(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 9))
    with pytest.raises(ValueError, match="NaN"):
        register(torch.full((1, 1, 8, 8, 8), float("nan")), torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="similarity"):
        register(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8), similarity="ncc")
    # a window per level of factors cannot serve the longer MIND-SSC pyramid (its remapped level would index past it)
    per_level = EngineConfig(radius=(3, 3, 3), remap_factors=(4, 2, 1), remap_iterations=(20, 10, 5), remap_from=1)
    with pytest.raises(ValueError, match=r"mind_factors \+ mind_remap_factors have 4"):
        register(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8), similarity="mind", config=per_level)


# ------------------------------------------------------------------ schedule


def test_schedule_cuts_the_finest_level_before_skipping_a_level():
    cost = CostModel(1e-6)
    voxels = [1_000, 8_000, 64_000]  # 1 ms, 8 ms, 64 ms per iteration
    assert plan_iterations([100, 50, 20], voxels, 10.0, cost) == [100, 50, 20]
    # 0.1 + 0.4 s for the coarse levels leaves 0.3 s for the finest: 4 iterations
    assert plan_iterations([100, 50, 20], voxels, 0.8, cost) == [100, 50, 4]
    # too little for 3 finest iterations: the finest level is skipped, the middle one cut
    assert plan_iterations([100, 50, 20], voxels, 0.3001, cost) == [100, 25, 0]
    # the coarsest level always gets what fits
    assert plan_iterations([100, 50, 20], voxels, 0.05, cost) == [50, 0, 0]


def test_schedule_counts_the_passes_a_running_level_pays_besides_its_iterations():
    cost = CostModel(1e-6)
    voxels = [1_000, 8_000, 64_000]
    overhead = [2 * cost.iteration_seconds(v) for v in voxels]  # the engine's two extra passes per level
    # 0.1 + 0.4 s of coarse iterations and 0.002 + 0.016 s of their passes leave 0.282 s: four finest
    # iterations would fit, but with the finest level's own 0.128 s of passes only two -> skipped
    assert plan_iterations([100, 50, 20], voxels, 0.8, cost, 3, overhead) == [100, 50, 0]
    # 0.518 + 0.128 + 3 x 0.064 s: three finest iterations and their passes
    assert plan_iterations([100, 50, 20], voxels, 0.84, cost, 3, overhead) == [100, 50, 3]


def test_cost_model_learns_from_measurements():
    cost = CostModel(1e-9)
    cost.update(seconds=1.0, iterations=10, voxels=1000)
    assert cost.measured and cost.iteration_seconds(1000) == pytest.approx(0.1)


def test_quantile_step_scaling_sets_the_quantile_and_clamps_the_tail():
    field = _smooth_random((12, 14, 12), 3, 1.0, 2.0, 18)[0].numpy().copy()
    ck.scale_to_quantile_norm(field, 1.0, 0.9, 2.0)
    lengths = np.sqrt((field**2).sum(0))
    assert np.quantile(lengths[::2, ::2, ::2], 0.9) == pytest.approx(1.0, rel=0.05)
    assert lengths.max() <= 2.0 + 1e-5
    torch_field = TorchKernels(None).update(
        torch.zeros(1, 3, 12, 14, 12),
        _smooth_random((12, 14, 12), 3, 1.0, 2.0, 18),
        LevelSettings(step=1.0, sigma_update=0, sigma_field=0, compose=False, quantile=0.9),
    )
    assert torch.allclose(torch_field[0], torch.from_numpy(field), atol=1e-4)


def test_annealed_step_shrinks_linearly_from_step_to_final_step():
    settings = LevelSettings(step=1.0, final_step=0.25)
    steps = [settings.at_iteration(done, 4).step for done in range(4)]
    assert steps == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert LevelSettings(step=1.0).at_iteration(3, 4).step == 1.0  # no final_step: constant
    # in a level, the last update of an annealed run is the small one: a run of 1 iteration
    # moves as far as the plain step, and annealed runs move less than plain ones overall
    moving = _real_slab(4)
    fixed = spatial.warp(moving, _smooth_random(moving.shape[2:], 3, 3.0, 2.0, 5))
    kernels = NumbaKernels("lncc", 2)
    zero = torch.zeros((1, 3, *fixed.shape[2:]))
    plain = optimise_level(fixed, moving, zero, kernels, 6, LevelSettings(sigma_field=0))
    annealed = optimise_level(fixed, moving, zero, kernels, 6, LevelSettings(sigma_field=0, final_step=0.1))
    assert annealed.displacement.abs().max() < plain.displacement.abs().max()


def test_lncc_window_can_change_per_level():
    fixed, moving = _real_slab(4), torch.roll(_real_slab(4), 1, dims=3)
    config = EngineConfig(factors=(2, 1), iterations=(5, 5), radius=(1, 3))
    assert [config.level_radius("lncc", i) for i in (0, 1)] == [1, 3]
    assert config.level_radius("lncc2", 1) == config.squared_radius
    disp, trace = register(fixed, moving, similarity="lncc", config=config)
    same = dict(factors=(2, 1), iterations=(5, 5))
    # the finest level's similarity is that of its own window: 7^3 here, not 3^3
    _, wide = register(fixed, moving, similarity="lncc", config=EngineConfig(**same, radius=3))
    _, narrow = register(fixed, moving, similarity="lncc", config=EngineConfig(**same, radius=1))
    assert trace.levels[0].similarity_start == pytest.approx(narrow.levels[0].similarity_start)
    assert trace.levels[1].similarity_start != pytest.approx(narrow.levels[1].similarity_start)
    assert abs(trace.levels[1].similarity_end - wide.levels[1].similarity_end) < abs(
        trace.levels[1].similarity_end - narrow.levels[1].similarity_end
    )
    with pytest.raises(ValueError, match="one value per level"):
        EngineConfig(factors=(2, 1), iterations=(5, 5), radius=(1, 2, 3))
    with pytest.raises(ValueError, match="remap_factors has 4"):  # per-level values but another pyramid
        register(fixed, moving, similarity="remap", config=config)


def test_warm_up_loads_the_kernels_and_reports_seconds():
    assert warm_up() >= 0.0
