"""The engine's CPU kernels and update rules against the reference maths: warps, filters, LNCC gradients, steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.engine_cases import real_slab, smooth_random

from caio import spatial
from caio.engine.cpu_backend import NumbaKernels
from caio.engine.optimizer import LevelSettings, TorchKernels, optimise_level
from caio.kernels import fields as ck
from caio.kernels import filters as cf
from caio.kernels import similarity as cs
from caio.similarity.lncc import lncc_and_gradient
from caio.similarity.ssd import ssd_and_gradient
from caio.similarity.windows import box_sum

# ------------------------------------------------------------------ kernels against the reference maths


def test_numba_warp_compose_blur_and_box_match_the_torch_reference():
    shape = (18, 22, 20)
    moving = smooth_random(shape, 1, 1.0, 1.0, 0)
    u = smooth_random(shape, 3, 2.0, 3.0, 1)
    v = smooth_random(shape, 3, 2.0, 1.5, 2)
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


def test_both_backends_warp_an_image_as_spatial_warp_does():
    shape = (18, 22, 20)
    moving = smooth_random(shape, 1, 1.0, 1.0, 3)
    disp = smooth_random(shape, 3, 2.0, 4.0, 4)  # reaches past the border: clamped as spatial.warp's border padding
    expected = spatial.warp(moving, disp)
    cpu = NumbaKernels("lncc")
    assert torch.allclose(cpu.warp(moving, disp), expected, atol=1e-5)
    assert torch.allclose(TorchKernels(lncc_and_gradient).warp(moving, disp), expected, atol=1e-6)
    smaller = smooth_random((9, 11, 10), 3, 1.0, 1.0, 5)  # the workspace follows the grid of each call
    coarse = moving[..., ::2, ::2, ::2]
    assert torch.allclose(cpu.warp(coarse, smaller), spatial.warp(coarse, smaller), atol=1e-5)


def test_warp_gradient_is_the_derivative_of_the_interpolated_image():
    shape = (16, 18, 17)
    moving = smooth_random(shape, 1, 1.5, 1.0, 3)[0].numpy()
    u = smooth_random(shape, 3, 2.0, 2.0, 4)[0].numpy()
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
    fixed = smooth_random(shape, 1, 1.0, 1.0, 5).double()
    warped = smooth_random(shape, 1, 1.0, 1.0, 6).double().requires_grad_()
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


@pytest.mark.parametrize("kind", ["lncc", "lncc2", "mind", "robust mind"])
def test_numba_similarity_field_matches_the_torch_path(kind):
    shape = (14, 16, 15)
    robust = 0.3 if kind == "robust mind" else 0.0
    kind = kind.removeprefix("robust ")
    channels = 12 if kind == "mind" else 1
    fixed = smooth_random(shape, channels, 1.0, 1.0, 7)
    moving = smooth_random(shape, channels, 1.0, 1.0, 8)
    u = smooth_random(shape, 3, 2.0, 1.5, 9)
    sim, field = NumbaKernels(kind, 2, 1e-3, robust=robust).similarity_field(fixed, moving, u)
    # reference: torch similarity gradient on the Numba-warped image, times the interpolant's gradient
    warped = np.empty((channels, *shape), np.float32)
    grad = np.empty((channels, 3, *shape), np.float32)
    ck.warp_with_gradient(moving[0].numpy(), u[0].numpy(), warped, grad)
    warped_t = torch.from_numpy(warped)[None]
    if kind == "mind":
        ref_sim, ref_grad = ssd_and_gradient(fixed, warped_t, robust)
    else:
        ref_sim, ref_grad = lncc_and_gradient(fixed, warped_t, 2, 1e-3, squared=kind == "lncc2")
    reference = (ref_grad[0][:, None] * torch.from_numpy(grad)).sum(0)
    assert sim == pytest.approx(ref_sim, rel=1e-4)
    assert torch.allclose(field[0], reference, atol=1e-4 * float(reference.abs().max()))


def test_sampling_through_a_matrix_matches_grid_sample_with_zero_padding():
    volume = smooth_random((13, 17, 15), 4, 1.0, 1.0, 14)[0].numpy()
    matrix = np.array([[0.9, 0.2, 0.0, -2.5], [-0.1, 1.1, 0.1, 1.0], [0.05, 0.0, 0.8, 3.2]])  # part lands outside
    out = np.empty((4, 11, 12, 16), np.float32)
    ck.sample_through_matrix(volume, matrix, out)
    index = spatial.identity_grid(out.shape[1:], dtype=torch.float64)
    m = torch.from_numpy(matrix)
    coords = torch.einsum("ij,bjxyz->bixyz", m[:, :3], index) + m[:, 3].view(1, 3, 1, 1, 1)
    expected = spatial.sample(torch.from_numpy(volume)[None].double(), coords, padding_mode="zeros")[0].numpy()
    assert (expected == 0).any() and (expected != 0).any()
    assert np.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("squared", [False, True])
def test_fused_lncc_image_gradient_matches_the_torch_reference(squared):
    shape = (15, 19, 17)
    fixed, warped = smooth_random(shape, 1, 1.0, 1.0, 12), smooth_random(shape, 1, 1.0, 1.0, 13)
    sim, gradient = cs.lncc_image_gradient(fixed[0, 0].numpy(), warped[0, 0].numpy(), 2, 1e-3, squared)
    ref_sim, ref_grad = lncc_and_gradient(fixed, warped, 2, 1e-3, squared=squared)
    assert sim == pytest.approx(ref_sim, rel=1e-4)
    assert np.allclose(gradient, ref_grad[0, 0].numpy(), atol=1e-4 * float(ref_grad.abs().max()))


def test_numba_and_torch_paths_recover_the_same_warp_equally_well():
    shape = (24, 26, 24)
    moving = smooth_random(shape, 1, 1.5, 1.0, 10)
    truth = smooth_random(shape, 3, 4.0, 2.0, 11)
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
    disp, gradient = smooth_random(shape, 3, 2.0, 1.0, 20), smooth_random(shape, 3, 1.0, 1.0, 21)
    settings = LevelSettings(step=0.5)
    fresh = NumbaKernels("lncc", 2, 1e-3).update(disp, gradient, settings)
    spare = torch.full((1, 3, *shape), float("nan"))
    reused = NumbaKernels("lncc", 2, 1e-3).update(disp, gradient, settings, spare)
    assert reused.data_ptr() == spare.data_ptr() and torch.equal(reused, fresh)
    assert fresh.data_ptr() != disp.data_ptr()


def test_the_best_field_a_level_returns_is_never_overwritten_by_later_updates():
    shape = (24, 26, 24)
    moving = smooth_random(shape, 1, 1.5, 1.0, 10)
    fixed = spatial.warp(moving, smooth_random(shape, 3, 4.0, 2.0, 11))
    init = torch.zeros((1, 3, *shape))
    kernels = NumbaKernels("lncc", 2, 1e-3)
    # a large step overshoots, so that the best field is an early one while later updates reuse buffers
    level = optimise_level(fixed, moving, init, kernels, 30, LevelSettings(step=3.0))
    rescored, _ = kernels.similarity_field(fixed, moving, level.displacement)
    assert rescored == pytest.approx(level.similarity_best, abs=1e-6)
    assert torch.count_nonzero(init) == 0  # the caller's field is never a spare


# ------------------------------------------------------------------ update rules


def test_quantile_step_scaling_sets_the_quantile_and_clamps_the_tail():
    field = smooth_random((12, 14, 12), 3, 1.0, 2.0, 18)[0].numpy().copy()
    ck.scale_to_quantile_norm(field, 1.0, 0.9, 2.0)
    lengths = np.sqrt((field**2).sum(0))
    assert np.quantile(lengths[::2, ::2, ::2], 0.9) == pytest.approx(1.0, rel=0.05)
    assert lengths.max() <= 2.0 + 1e-5
    torch_field = TorchKernels(None).update(
        torch.zeros(1, 3, 12, 14, 12),
        smooth_random((12, 14, 12), 3, 1.0, 2.0, 18),
        LevelSettings(step=1.0, sigma_update=0, sigma_field=0, compose=False, quantile=0.9),
    )
    assert torch.allclose(torch_field[0], torch.from_numpy(field), atol=1e-4)


def test_outlier_ratio_keeps_a_few_long_vectors_from_setting_the_step_of_the_field():
    """One corner of outlying vectors 50x longer than the rest (the edge of a moving scan's field of view): scaled
    by the longest vector the bulk barely moves; with ``outlier_ratio`` 2 the longest counts as twice the 99.9th
    percentile, the bulk moves over 10x further and no vector exceeds the step. Both backends agree."""
    gradient = smooth_random((32, 32, 32), 3, 1.0, 2.0, 7)
    gradient[:, :, :2, :2, :2] *= 50.0  # 8 of 32768 voxels (1 of the 4096 sampled)
    settings = LevelSettings(step=1.5, sigma_update=0, sigma_field=0, compose=False, outlier_ratio=2.0)
    zero = torch.zeros(1, 3, 32, 32, 32)
    plain = TorchKernels(None).update(zero, gradient, LevelSettings(step=1.5, sigma_update=0, sigma_field=0))
    robust = TorchKernels(None).update(zero, gradient, settings)
    field = gradient[0].numpy().copy()
    ck.scale_to_robust_max_norm(field, 1.5, 0.999, 2.0)
    assert torch.allclose(robust[0], torch.from_numpy(field), atol=1e-5)
    lengths = np.sqrt((field**2).sum(0))
    bulk = np.ones((32, 32, 32), bool)
    bulk[:2, :2, :2] = False
    plain_lengths = plain[0].square().sum(0).sqrt().numpy()
    assert lengths.max() <= 1.5 + 1e-5 and plain_lengths.max() == pytest.approx(1.5, rel=1e-5)
    assert np.median(lengths[bulk]) > 10 * np.median(plain_lengths[bulk])  # measured 18x
    calm = smooth_random((32, 32, 32), 3, 1.0, 2.0, 7)  # no outliers: the longest vector is within 2x the 99.9th
    assert torch.allclose(
        TorchKernels(None).update(zero, calm, settings),
        TorchKernels(None).update(zero, calm, LevelSettings(step=1.5, sigma_update=0, sigma_field=0)),
        atol=1e-6,
    )


def test_sampled_quantile_of_the_torch_path_stays_within_torch_quantile_input_limit():
    from caio.engine.optimizer import _sampled_quantile

    lengths = torch.rand(1, 40, 40, 40)
    exact = torch.quantile(lengths[:, ::2, ::2, ::2].double().flatten(), 0.999).item()
    assert _sampled_quantile(lengths, 0.999) == pytest.approx(exact)
    assert _sampled_quantile(lengths, 0.999, limit=1000) == pytest.approx(exact, abs=0.01)  # 8000 -> 889 samples


def test_annealed_step_shrinks_linearly_from_step_to_final_step():
    settings = LevelSettings(step=1.0, final_step=0.25)
    steps = [settings.at_iteration(done, 4).step for done in range(4)]
    assert steps == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert LevelSettings(step=1.0).at_iteration(3, 4).step == 1.0  # no final_step: constant
    # in a level, the last update of an annealed run is the small one: a run of 1 iteration
    # moves as far as the plain step, and annealed runs move less than plain ones overall
    moving = real_slab(4)
    fixed = spatial.warp(moving, smooth_random(moving.shape[2:], 3, 3.0, 2.0, 5))
    kernels = NumbaKernels("lncc", 2)
    zero = torch.zeros((1, 3, *fixed.shape[2:]))
    plain = optimise_level(fixed, moving, zero, kernels, 6, LevelSettings(sigma_field=0))
    annealed = optimise_level(fixed, moving, zero, kernels, 6, LevelSettings(sigma_field=0, final_step=0.1))
    assert annealed.displacement.abs().max() < plain.displacement.abs().max()


def test_max_norm_scaling_reaches_the_step_for_a_field_of_tiny_vectors():
    """Squares of float32 values below ~4e-23 underflow: summed in float32 the longest length read as 0 and the
    field was left unscaled (a step of 0 voxels instead of 1)."""
    field = np.full((3, 6, 7, 5), 1e-24, np.float32)
    field[0, 2, 3, 1] = 2e-24
    ck.scale_to_max_norm(field, 1.0)
    lengths = np.sqrt((field.astype(np.float64) ** 2).sum(axis=0))
    assert lengths.max() == pytest.approx(1.0, rel=1e-5)


def test_feature_ssd_gradient_has_no_denormal_values():
    """Gradient values that would be denormal float32 (features that differ only at the scale of rounding) are
    written as 0: every later smoothing and composition pass runs 10-100x slower on denormal numbers."""
    rng = np.random.default_rng(3)
    shape = (4, 10, 12, 9)
    moving = (1e-18 * (1.0 + rng.random(shape))).astype(np.float32)
    fixed = np.zeros(shape, np.float32)
    disp = (0.3 * rng.standard_normal((3, *shape[1:]))).astype(np.float32)
    _, field = cs.ssd_displacement_gradient(fixed, np.ascontiguousarray(moving.transpose(1, 2, 3, 0)), disp)
    denormal = (field != 0) & (np.abs(field) < np.finfo(np.float32).tiny)
    assert not denormal.any()
    assert np.abs(field).max() == 0 or np.abs(field).max() >= ck.TINY
