"""The feature SSD of the MIND-SSC levels, plain and robust (Geman-McClure): values and gradients."""

from __future__ import annotations

import pytest
import torch
from helpers.engine_cases import smooth_random

from caio.similarity.ssd import ssd_and_gradient


@pytest.mark.parametrize("robust", [0.0, 0.3])
def test_ssd_gradient_equals_autograd_in_float64(robust):
    fixed = smooth_random((6, 7, 5), 12, 1.0, 1.0, 0).double()
    warped = smooth_random((6, 7, 5), 12, 1.0, 1.0, 1).double().requires_grad_(True)
    r = (fixed - warped).square().sum(dim=1)
    rho = r if robust == 0 else robust * r / (robust + r)
    rho.mean().neg().backward()
    similarity, gradient = ssd_and_gradient(fixed, warped.detach(), robust)
    assert similarity == pytest.approx(-float(rho.mean().detach()), rel=1e-12)
    assert torch.allclose(gradient, warped.grad, rtol=1e-9, atol=1e-15)  # the gradient of the score itself


def test_robust_ssd_stops_large_differences_from_pulling():
    fixed = torch.zeros((1, 12, 4, 4, 4), dtype=torch.float64)
    warped = fixed.clone()
    warped[..., 0, 0, 0] = 0.1  # a small mismatch
    warped[..., 3, 3, 3] = 3.0  # a voxel that matches nothing (a lesion in one contrast only)
    _, plain = ssd_and_gradient(fixed, warped)
    _, robust = ssd_and_gradient(fixed, warped, 0.3)
    assert plain[..., 3, 3, 3].abs().max() > 10 * plain[..., 0, 0, 0].abs().max()
    assert robust[..., 3, 3, 3].abs().max() < robust[..., 0, 0, 0].abs().max()
