"""Training-free registration (MIND + discrete convex search + Adam) on small synthetic volumes."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from caio import spatial
from caio.backbone.training_free import TrainingFreeConfig, cost_volume, register_training_free
from caio.metrics import ndv

SHAPE = (40, 40, 40)
CFG = TrainingFreeConfig(adam_iters=30, adam_points=10_000)


def _labels(shape=SHAPE) -> torch.Tensor:
    """Piecewise-constant head: skin shell, 'GM', 'WM' and two 'ventricles' (labels 1-5)."""
    axes = [torch.linspace(-1, 1, n) for n in shape]
    x0, x1, x2 = torch.meshgrid(*axes, indexing="ij")
    r = torch.sqrt(x0**2 + (1.1 * x1) ** 2 + (0.95 * x2) ** 2) + 0.06 * torch.sin(6 * x0) * torch.cos(5 * x2)
    lab = torch.zeros(shape, dtype=torch.long)
    lab[r < 0.9] = 1
    lab[r < 0.75] = 2
    lab[r < 0.5] = 3
    lab[((x0 - 0.2) ** 2 + x1**2 + (x2 / 0.5) ** 2) < 0.03] = 4
    lab[((x0 + 0.2) ** 2 + x1**2 + (x2 / 0.5) ** 2) < 0.03] = 5
    return lab


def _render(labels: torch.Tensor, values: list[float]) -> torch.Tensor:
    image = torch.tensor(values)[labels][None, None].float()
    return spatial.gaussian_blur(image, 0.7)


def _smooth_field(seed: int = 0, amplitude: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, 4, 4, 4, generator=g)
    field = spatial.resize_displacement(coarse, SHAPE)
    return field / field.abs().max() * amplitude


def _dice(a: np.ndarray, b: np.ndarray, labels=(2, 3, 4, 5)) -> float:
    return float(np.mean([2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)) for k in labels]))


@pytest.fixture(scope="module")
def pair():
    """Fixed labels and a moving image deformed by a known smooth field (max 3 voxels)."""
    fixed_labels = _labels()
    truth = _smooth_field()
    moving_labels = spatial.warp(fixed_labels[None, None].float(), truth, mode="nearest")[0, 0].long()
    return fixed_labels, moving_labels


def _run(fixed, moving, cfg=CFG, deadline=None):
    return register_training_free(fixed, moving, cfg, deadline=deadline)


def test_recovers_a_known_smooth_deformation(pair):
    fixed_labels, moving_labels = pair
    values = [0, 60, 110, 200, 30, 30]
    disp = _run(_render(fixed_labels, values), _render(moving_labels, values))
    assert disp.shape == (1, 3, *SHAPE) and disp.dtype == torch.float32
    warped = spatial.warp_labels_nearest(moving_labels.numpy(), disp[0].double().numpy())
    before = _dice(fixed_labels.numpy(), moving_labels.numpy())
    after = _dice(fixed_labels.numpy(), warped)
    assert after > before + 0.07, (before, after)  # measured: 0.85 -> 0.95
    assert after > 0.93, (before, after)


def test_works_across_contrasts(pair):
    fixed_labels, moving_labels = pair
    t1 = _render(fixed_labels, [0, 60, 110, 200, 30, 30])
    t2_like = _render(moving_labels, [0, 90, 200, 100, 250, 250])  # inverted tissue contrast
    disp = _run(t1, t2_like)
    warped = spatial.warp_labels_nearest(moving_labels.numpy(), disp[0].double().numpy())
    before = _dice(fixed_labels.numpy(), moving_labels.numpy())
    after = _dice(fixed_labels.numpy(), warped)
    assert after > before + 0.07, (before, after)  # measured: 0.85 -> 0.96
    assert after > 0.93, (before, after)


def test_field_is_smooth_with_almost_no_folding(pair):
    fixed_labels, moving_labels = pair
    values = [0, 60, 110, 200, 30, 30]
    disp = _run(_render(fixed_labels, values), _render(moving_labels, values))
    assert torch.isfinite(disp).all()
    assert ndv.ndv_percent(disp[0].double().numpy()) < 0.1
    assert float(spatial.jacobian_determinant(disp).min()) > 0


def test_is_deterministic_on_cpu(pair):
    fixed_labels, moving_labels = pair
    fixed = _render(fixed_labels, [0, 60, 110, 200, 30, 30])
    moving = _render(moving_labels, [0, 60, 110, 200, 30, 30])
    cfg = TrainingFreeConfig(adam_iters=10, adam_points=5_000)
    assert torch.equal(_run(fixed, moving, cfg), _run(fixed, moving, cfg))


def test_respects_a_deadline(pair):
    fixed_labels, moving_labels = pair
    fixed = _render(fixed_labels, [0, 60, 110, 200, 30, 30])
    moving = _render(moving_labels, [0, 60, 110, 200, 30, 30])
    assert torch.count_nonzero(_run(fixed, moving, deadline=time.monotonic() - 1.0)) == 0
    slow = TrainingFreeConfig(adam_iters=100_000, adam_points=20_000)  # hours of Adam: only the deadline stops it
    budget = 3.0
    start = time.monotonic()
    disp = _run(fixed, moving, slow, deadline=start + budget)
    elapsed = time.monotonic() - start
    # what may run past the deadline: the search step or Adam iteration under way when it passes (an iteration of
    # 20,000 points took 0.1-0.3 s on 2 cores at load 6; 0.55 s over was the worst of 8 runs) and the final
    # upsampling. A check every 100 iterations instead of every one ended 27 s late (3 s deadline)
    assert 0.9 * budget <= elapsed <= 1.1 * budget + 0.5, elapsed
    assert torch.isfinite(disp).all() and float(disp.abs().max()) > 0


def test_cost_volume_is_zero_at_the_true_integer_shift():
    g = torch.Generator().manual_seed(1)
    fixed = torch.rand(1, 4, 12, 12, 12, generator=g)
    moving = torch.roll(fixed, shifts=(1, -2, 0), dims=(2, 3, 4))  # fixed(x) = moving(x + (1, -2, 0))
    cost = cost_volume(fixed, moving, radius=2, box=0)
    r = torch.arange(-2, 3)
    cands = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    best = cands[cost[:, 4:8, 4:8, 4:8].mean(dim=(1, 2, 3)).argmin()]
    assert best.tolist() == [1, -2, 0]


def test_rejects_images_on_different_grids():
    with pytest.raises(ValueError):
        register_training_free(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 9))


def test_features_on_a_coarser_grid_still_recover_the_deformation(pair):
    """``feature_factor=2`` (MIND-SSC on a half-resolution grid, 8x cheaper) keeps the result in voxels of the image."""
    fixed_labels, moving_labels = pair
    values = [0, 60, 110, 200, 30, 30]
    cfg = TrainingFreeConfig(adam_iters=30, adam_points=10_000, feature_factor=2)
    disp = _run(_render(fixed_labels, values), _render(moving_labels, values), cfg)
    assert disp.shape == (1, 3, *SHAPE)
    warped = spatial.warp_labels_nearest(moving_labels.numpy(), disp[0].double().numpy())
    before = _dice(fixed_labels.numpy(), moving_labels.numpy())
    after = _dice(fixed_labels.numpy(), warped)
    assert after > before + 0.05, (before, after)
