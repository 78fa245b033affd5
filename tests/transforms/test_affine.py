"""The affine step (:mod:`caio.transforms`): known rigid and affine transforms of real anatomy are recovered, also
across grids of other voxel sizes and orientations and across contrasts; masks decide what the similarity sees; the
deadline is kept; the inverse of a displacement (:func:`caio.transforms.fields.invert_displacement`)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from helpers.affine_cases import (
    brain_box,
    crop_to_content,
    known_transform,
    moved_image,
    oriented_grid,
    reduce,
    spm_image,
)

from caio import spatial
from caio.transforms import AffineConfig, corner_error_mm, register_affine
from caio.transforms.fields import invert_displacement, preimage
from caio.transforms.world import centre_of_mass

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small volumes: one thread is faster on 2 shared cores

FIXED_SPACING = 4.0
CONFIG = AffineConfig(
    spacings_mm=(8.0, 4.0), iterations=(80, 30), rigid_iterations=40, learning_rates=(0.02, 0.01), patience=10
)
AFFINE = AffineConfig(spacings_mm=(8.0, 4.0), iterations=(100, 40), rigid_iterations=40, learning_rates=(0.02, 0.01))
COARSE = AffineConfig(spacings_mm=(8.0,), iterations=(60,), rigid_iterations=30, learning_rates=(0.02,))


@pytest.fixture(scope="module")
def anatomy():
    """``(source 2 mm, source affine, fixed 4 mm, fixed affine, centre of mass)``."""
    source, source_affine = spm_image()
    fixed, fixed_affine = crop_to_content(*reduce(source, source_affine, FIXED_SPACING))
    return source, source_affine, fixed, fixed_affine, centre_of_mass(fixed, fixed_affine)


def box_error(estimate, truth, fixed, fixed_affine) -> float:
    return corner_error_mm(estimate, truth, *brain_box(fixed, fixed_affine))


def test_known_rigid_transform_is_recovered_on_real_anatomy(anatomy):
    source, source_affine, fixed, fixed_affine, centre = anatomy
    truth = known_transform((6, -4, 5), (5, -7, 4), centre)
    moving = moved_image(source, source_affine, truth, fixed.shape, fixed_affine)
    estimate, trace = register_affine(fixed, fixed_affine, moving, fixed_affine, model="rigid", config=CONFIG)
    assert box_error(np.eye(4), truth, fixed, fixed_affine) > 15
    assert box_error(estimate, truth, fixed, fixed_affine) < 1.0, trace
    assert np.allclose(estimate[:3, :3] @ estimate[:3, :3].T, np.eye(3), atol=1e-6)  # rigid stays rigid
    assert trace.after > trace.before and not trace.stopped_by_deadline and trace.iterations > 0


def test_known_affine_transform_is_recovered_across_grids_and_orientations(anatomy):
    """Fixed: RAS, 4 mm; moving: LPS, 2.67 mm (1.5 times finer), another field of view."""
    source, source_affine, fixed, fixed_affine, centre = anatomy
    truth = known_transform((5, 3, -6), (-6, 4, 8), centre, scale=(1.06, 0.95, 1.03), shear=0.04)
    shape = (62, 72, 58)
    moving_affine = oriented_grid(FIXED_SPACING / 1.5, shape, truth[:3, :3] @ centre + truth[:3, 3] + [3, -2, 4])
    moving = moved_image(source, source_affine, truth, shape, moving_affine)
    estimate, trace = register_affine(fixed, fixed_affine, moving, moving_affine, model="affine", config=AFFINE)
    assert box_error(np.eye(4), truth, fixed, fixed_affine) > 15
    assert box_error(estimate, truth, fixed, fixed_affine) < 1.5, trace
    assert trace.after > trace.before


def test_cross_contrast_rigid_transform_is_recovered_with_squared_lncc(anatomy):
    """SPM avg152 T1 (fixed) against T2 (moving, LPS grid): the contrast inverts, squared LNCC still aligns."""
    t1, affine = spm_image("spm_avg152T1_brain")
    t2, _ = spm_image("spm_avg152T2_brain")
    fixed, fixed_affine = crop_to_content(*reduce(t1, affine, FIXED_SPACING))
    truth = known_transform((-5, 6, 4), (6, 5, -6), centre_of_mass(fixed, fixed_affine))
    moving_affine = oriented_grid(FIXED_SPACING, fixed.shape, centre_of_mass(fixed, fixed_affine))
    moving = moved_image(t2, affine, truth, fixed.shape, moving_affine)
    estimate, trace = register_affine(
        fixed, fixed_affine, moving, moving_affine, model="rigid", similarity="lncc2", config=CONFIG
    )
    assert box_error(estimate, truth, fixed, fixed_affine) < 1.0, trace


def test_masked_out_content_does_not_change_the_result(anatomy):
    source, source_affine, fixed, fixed_affine, centre = anatomy
    truth = known_transform((4, 0, -3), (4, -3, 2), centre)
    moving = moved_image(source, source_affine, truth, fixed.shape, fixed_affine)
    mask = np.zeros(fixed.shape, bool)
    mask[:, :30] = True  # the front of the image (array axis 1) is masked out
    cluttered = fixed.copy()
    cluttered[8:28, 35:42, 8:28] = 255.0  # a bright block far inside the masked-out part

    def run(image, fixed_mask=None):
        return register_affine(image, fixed_affine, moving, fixed_affine, model="rigid", fixed_mask=fixed_mask,
                               config=COARSE)[0]  # fmt: skip

    clean, with_clutter = run(fixed, mask), run(cluttered, mask)
    np.testing.assert_allclose(with_clutter, clean, atol=1e-6)
    unmasked = run(cluttered)  # the block does pull when nothing hides it
    assert corner_error_mm(unmasked, clean, fixed.shape, fixed_affine) > 0.5


def test_deadline_returns_the_best_transform_so_far(anatomy):
    source, source_affine, fixed, fixed_affine, centre = anatomy
    truth = known_transform((0, 0, 0), (8, -6, 5), centre)
    moving = moved_image(source, source_affine, truth, fixed.shape, fixed_affine)
    start = time.monotonic()
    estimate, trace = register_affine(fixed, fixed_affine, moving, fixed_affine, deadline=start, config=CONFIG)
    assert trace.stopped_by_deadline and trace.iterations == 0
    assert time.monotonic() - start < 10
    # the moments initialisation alone already brings the centres together
    assert trace.initialisation == "moments"
    assert corner_error_mm(estimate, truth, fixed.shape, fixed_affine) < 0.5 * corner_error_mm(
        np.eye(4), truth, fixed.shape, fixed_affine
    )


def test_bad_model_or_similarity_is_a_value_error(anatomy):
    _, _, fixed, fixed_affine, _ = anatomy
    with pytest.raises(ValueError, match="model"):
        register_affine(fixed, fixed_affine, fixed, fixed_affine, model="similarity")
    with pytest.raises(ValueError, match="similarity"):
        register_affine(fixed, fixed_affine, fixed, fixed_affine, similarity="nmi")


def smooth_field(shape, amplitude: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    field = torch.randn((1, 3, *shape), generator=generator)
    field = spatial.gaussian_blur(field, 3.0)
    return field / field.abs().max() * amplitude


def test_inverse_displacement_composed_with_the_field_is_close_to_identity():
    disp = smooth_field((32, 32, 32), amplitude=3.0)
    assert float(spatial.jacobian_determinant(disp).min()) > 0.1  # invertible, but far from a small shift
    inverse = invert_displacement(disp, iterations=30)
    inner = (slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    forward_back = spatial.inverse_consistency_error(disp, inverse)[inner]  # disp, then inverse
    back_forward = spatial.compose(disp, inverse).norm(dim=1)[inner]  # inverse, then disp: what the iteration solves
    naive = spatial.inverse_consistency_error(disp, -disp)[inner]
    assert float(forward_back.mean()) < 0.02 and float(back_forward.mean()) < 1e-3
    assert float(naive.mean()) > 2 * float(forward_back.mean())
    in_mm = spatial.inverse_consistency_error(disp, -disp, spacing=(2.0, 2.0, 2.0))
    torch.testing.assert_close(in_mm, 2 * spatial.inverse_consistency_error(disp, -disp))


def radial_expansion(shape, gain: float, sigma: float) -> torch.Tensor:
    """``u(x) = gain (x - c) exp(-|x - c|^2 / 2 sigma^2)``: the map expands ``1 + gain`` times per axis at the
    centre ``c`` and stays invertible for ``gain < e``."""
    grid = spatial.identity_grid(shape, dtype=torch.float64)
    offset = grid - torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64).view(1, 3, 1, 1, 1)
    weight = torch.exp(-(offset**2).sum(dim=1, keepdim=True) / (2 * sigma**2))
    return (gain * offset * weight).float()


def test_inverse_holds_where_the_map_expands_more_than_twice():
    disp = radial_expansion((32, 32, 32), gain=2.0, sigma=4.0)
    assert float(spatial.jacobian_determinant(disp).max()) > 8 and float(spatial.jacobian_determinant(disp).min()) > 0
    inverse = invert_displacement(disp)
    assert float(spatial.compose(disp, inverse).norm(dim=1).max()) < 1e-3  # x + v(x) lands where disp maps it from
    plain = -disp  # the plain fixed-point iteration v <- -disp(x + v(x)) oscillates where the expansion exceeds 2
    for _ in range(30):
        plain = -spatial.warp(disp, plain)
    assert float(spatial.compose(disp, plain).norm(dim=1).max()) > 0.1


def test_preimage_of_points_off_the_grid():
    disp = smooth_field((24, 24, 24), amplitude=2.0, seed=3).double()
    targets = 4 + 15 * torch.rand((1, 3, 5, 6, 7), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    points, residual = preimage(disp, targets)
    assert points.shape == targets.shape and residual.shape == (1, 5, 6, 7)
    torch.testing.assert_close(points + spatial.sample(disp, points), targets, atol=1e-4, rtol=0)
    assert float(residual.max()) <= 1e-4


def test_the_affine_stages_adam_takes_torch_optim_adams_steps():
    from caio.transforms.affine import _Adam

    theta = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    reference = theta.detach().clone().requires_grad_(True)
    ours, torchs = _Adam(theta), torch.optim.Adam([reference], lr=0.02)
    for step in range(50):
        lr = 0.02 * (1 - 0.8 * step / 50)  # the decaying step of the affine stage
        for x in (theta, reference):
            x.grad = None
            ((x - 1.0) ** 4).sum().backward()
        ours.step(lr)
        torchs.param_groups[0]["lr"] = lr
        torchs.step()
    torch.testing.assert_close(theta.detach(), reference.detach(), rtol=0, atol=1e-12)


def test_the_affine_pyramids_cpu_blur_equals_resize_image():
    from caio.transforms.world import antialiased_resize

    image = torch.rand((1, 2, 30, 25, 21), generator=torch.Generator().manual_seed(4))
    for shape in ((10, 25, 7), (15, 12, 21), (29, 24, 20), (30, 25, 21)):  # one axis kept, some shrunk, none
        torch.testing.assert_close(
            antialiased_resize(image, shape), spatial.resize_image(image, shape), atol=1e-5, rtol=0
        )
