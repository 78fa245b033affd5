"""LNCC and diffusion losses of the cascade (caio.refine.losses)."""

from __future__ import annotations

import pytest
import torch

from caio.refine.losses import diffusion
from caio.similarity.lncc import lncc, lncc_loss, local_ncc


def _texture(shape=(20, 22, 18), channels=1, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(1, channels, 6, 6, 6, generator=gen)
    return torch.nn.functional.interpolate(low, size=shape, mode="trilinear", align_corners=True)


def test_lncc_is_one_for_a_linear_intensity_change():
    a = _texture()
    assert float(lncc(a, 3.0 * a + 0.5, sigma_vox=1.5)) == pytest.approx(1.0, abs=1e-3)
    assert float(lncc_loss(a, 3.0 * a + 0.5, sigma_vox=1.5)) == pytest.approx(0.0, abs=1e-3)


def test_lncc_is_minus_one_for_inverted_contrast():
    a = _texture()
    assert float(lncc(a, 1.0 - a, sigma_vox=1.5)) == pytest.approx(-1.0, abs=1e-3)
    assert float(lncc_loss(a, 1.0 - a, sigma_vox=1.5)) == pytest.approx(2.0, abs=1e-3)


def test_lncc_of_unrelated_images_is_between_the_extremes():
    value = float(lncc(_texture(seed=0), _texture(seed=1), sigma_vox=1.5))
    assert -0.9 < value < 0.9


def test_lncc_of_flat_images_is_zero_and_finite():
    flat = torch.full((1, 1, 10, 10, 10), 0.3)
    cc = local_ncc(flat, flat.clone(), sigma_vox=1.0)
    assert torch.isfinite(cc).all()
    assert float(cc.abs().max()) == 0.0


def test_lncc_averages_channels():
    a, b = _texture(channels=2, seed=2), _texture(channels=2, seed=3)
    per_channel = [float(lncc(a[:, c : c + 1], b[:, c : c + 1], 1.5)) for c in range(2)]
    assert float(lncc(a, b, 1.5)) == pytest.approx(sum(per_channel) / 2, abs=1e-6)


def test_lncc_gradient_is_finite_and_improves_alignment():
    fixed = _texture()
    moving = torch.roll(fixed, 1, dims=2).clone().requires_grad_(True)
    loss = lncc_loss(fixed, moving, 1.5)
    loss.backward()
    before = float(loss.detach())
    assert torch.isfinite(moving.grad).all()
    with torch.no_grad():
        stepped = moving - 50.0 * moving.grad
    assert float(lncc_loss(fixed, stepped, 1.5)) < before


def test_diffusion_is_zero_for_a_translation_and_matches_a_ramp():
    shift = torch.ones(1, 3, 8, 9, 10) * 2.5
    assert float(diffusion(shift)) == 0.0
    ramp = torch.zeros(1, 3, 8, 9, 10)
    ramp[:, 0] = 0.5 * torch.arange(8.0).view(8, 1, 1)
    # only d/dx0 of channel 0 is non-zero (0.5); the mean runs over the 3 channels
    assert float(diffusion(ramp)) == pytest.approx(0.25 / 3, rel=1e-6)
