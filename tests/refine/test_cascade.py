"""Instance-optimisation cascade (caio.refine.cascade, caio.refine.networks)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from helpers.data import require_path

from caio import spatial
from caio.errors import CaioInputError
from caio.refine.cascade import combine, finalize, prepare_inputs, refine, stage_shape
from caio.refine.networks import build_cascade, save_weights
from caio.refine.settings import CascadeConfig
from caio.similarity.mind import mind_ssc

SMALL = (24, 28, 20)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smooth(shape, channels, amplitude, seed) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(1, channels, 4, 4, 4, generator=gen) * amplitude
    return torch.nn.functional.interpolate(low, size=shape, mode="trilinear", align_corners=True)


def _pair(shape=SMALL, seed=0):
    fixed = (_smooth(shape, 1, 1.0, seed).sigmoid() * 255).float()
    moving = spatial.warp(fixed, _smooth(shape, 3, 1.5, seed + 1))
    return fixed, moving


@pytest.fixture(scope="module")
def oasis_pair(data_dir):
    """Real OASIS pair (LapIRN repository), skull-stripped and aligned, downsampled to 32x40x28 (tests/data)."""
    pair = np.load(require_path(data_dir / "oasis_pair_32x40x28.npz"))
    return [torch.from_numpy(pair[k])[None, None] for k in ("fixed", "moving")]


def test_stage_grids_follow_the_stage_factors():
    cfg = CascadeConfig()
    assert stage_shape((160, 224, 192), 1) == (160, 224, 192)
    assert stage_shape((160, 224, 192), 2) == (81, 113, 97)
    assert stage_shape((160, 224, 192), 4) == (41, 57, 49)
    fixed, moving = _pair()
    inputs = prepare_inputs(fixed, moving, torch.zeros(1, 3, *SMALL), cfg)
    assert inputs.shapes == [stage_shape(SMALL, f) for f in cfg.stage_factors]
    for k, s in enumerate(inputs.shapes):
        assert inputs.fixed[k].shape == (1, 1, *s) and inputs.moving_sim[k].shape == (1, 1, *s)
        assert inputs.base[k] is None  # compositional: the initial field is applied to the moving image


def test_output_is_float32_field_on_the_fixed_grid_and_reports_stages():
    fixed, moving = _pair()
    disp, report = refine(fixed, moving, torch.zeros(1, 3, *SMALL), CascadeConfig(steps=2))
    assert disp.shape == (1, 3, *SMALL) and disp.dtype == torch.float32
    assert torch.isfinite(disp).all()
    assert report.steps == 2 and len(report.losses) == 2 and 0 <= report.best_step < 2
    assert report.stage_shapes == [stage_shape(SMALL, f) for f in CascadeConfig().stage_factors]


def test_new_cascade_starts_from_the_input_field():
    fixed, moving = _pair()
    init = _smooth(SMALL, 3, 1.0, 7)
    for composition in ("compositional", "additive"):
        disp, report = refine(fixed, moving, init, CascadeConfig(steps=1, composition=composition))
        assert report.best_step == 0
        assert float((disp - init).abs().max()) < 1e-2


def test_composition_matches_sequential_warps_and_additive_differs():
    shape = (20, 22, 18)
    moving = _smooth(shape, 1, 1.0, 3)
    previous, residual = _smooth(shape, 3, 2.0, 4), _smooth(shape, 3, 2.0, 5)
    sequential = spatial.warp(spatial.warp(moving, previous), residual)
    composed = spatial.warp(moving, combine(previous, residual, "compositional"))
    added = spatial.warp(moving, combine(previous, residual, "additive"))
    interior = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    err_composed = float((composed - sequential)[interior].abs().mean())
    err_added = float((added - sequential)[interior].abs().mean())
    assert err_composed < 0.25 * err_added
    zero = torch.zeros_like(previous)
    assert torch.allclose(combine(zero, residual, "compositional"), combine(zero, residual, "additive"), atol=1e-5)


def test_additive_and_compositional_final_fields_agree_for_zero_init_only():
    v = _smooth((12, 14, 10), 3, 1.0, 8)
    zero = torch.zeros(1, 3, 24, 28, 20)
    add = finalize(zero, v, CascadeConfig(composition="additive"))
    comp = finalize(zero, v, CascadeConfig(composition="compositional"))
    assert torch.allclose(add, comp, atol=1e-5)
    init = _smooth((24, 28, 20), 3, 2.0, 9)
    add = finalize(init, v, CascadeConfig(composition="additive"))
    comp = finalize(init, v, CascadeConfig(composition="compositional"))
    assert float((add - comp).abs().max()) > 0.05


def _check_real_pair_improves(fixed, moving, cfg):
    disp, report = refine(fixed, moving, torch.zeros(1, 3, *fixed.shape[2:]), cfg)
    assert report.steps == 50
    assert min(report.losses) < 0.9 * report.losses[0]
    assert report.best_step > 25
    # the returned field really aligns the images better (LNCC at the image grid)
    from caio.refine.cascade import normalize_image
    from caio.similarity.lncc import lncc

    f, m = normalize_image(fixed), normalize_image(moving)
    assert float(lncc(f, spatial.warp(m, disp), 1.5)) > float(lncc(f, m, 1.5)) + 0.02


def test_loss_decreases_on_a_real_pair_within_50_steps(oasis_pair):
    # 16 base channels keep this under ~30 s on the shared machine; the slow test uses the defaults
    _check_real_pair_improves(*oasis_pair, CascadeConfig(steps=50, base_channels=16))


@pytest.mark.slow
def test_loss_decreases_on_a_real_pair_with_default_networks(oasis_pair):
    _check_real_pair_improves(*oasis_pair, CascadeConfig(steps=50))


def test_deadline_is_honoured_and_output_valid():
    fixed, moving = _pair((32, 36, 30))
    budget = 1.5
    start = time.monotonic()
    disp, report = refine(
        fixed, moving, torch.zeros(1, 3, 32, 36, 30), CascadeConfig(steps=10_000), deadline=start + budget
    )
    elapsed = time.monotonic() - start
    assert elapsed <= 1.1 * budget
    assert report.stopped_by_deadline and report.steps < 10_000
    assert disp.shape == (1, 3, 32, 36, 30) and torch.isfinite(disp).all()


def test_past_deadline_returns_the_initial_field():
    fixed, moving = _pair()
    init = _smooth(SMALL, 3, 1.0, 2)
    disp, report = refine(fixed, moving, init, deadline=time.monotonic() - 1.0)
    assert torch.equal(disp, init) and report.steps == 0 and report.stopped_by_deadline


def test_same_seed_same_output_and_other_seed_differs():
    fixed, moving = _pair()
    init = torch.zeros(1, 3, *SMALL)
    cfg = CascadeConfig(steps=3)
    a, _ = refine(fixed, moving, init, cfg, seed=1)
    b, _ = refine(fixed, moving, init, cfg, seed=1)
    c, _ = refine(fixed, moving, init, cfg, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_weights_file_gives_the_same_start_as_its_seed(tmp_path):
    cfg = CascadeConfig(steps=2)
    nets = build_cascade(len(cfg.stage_factors), cfg.arch["in_channels"], cfg.base_channels, cfg.depth, seed=5)
    path = save_weights(tmp_path / "w.pt", nets, cfg.arch, {}, half=False)
    fixed, moving = _pair()
    init = torch.zeros(1, 3, *SMALL)
    from_file, _ = refine(fixed, moving, init, cfg, init_state=path, seed=0)
    from_seed, _ = refine(fixed, moving, init, cfg, seed=5)
    assert torch.equal(from_file, from_seed)


def test_weights_of_another_architecture_are_a_one_line_input_error(tmp_path):
    small = CascadeConfig(base_channels=8)
    nets = build_cascade(3, small.arch["in_channels"], 8, small.depth)
    path = save_weights(tmp_path / "w8.pt", nets, small.arch, {})
    fixed, moving = _pair()
    with pytest.raises(CaioInputError, match="w8.pt"):
        refine(fixed, moving, torch.zeros(1, 3, *SMALL), CascadeConfig(steps=1), init_state=path)


def test_multichannel_similarity_inputs_are_used():
    fixed, moving = _pair()
    fsim, msim = mind_ssc(fixed, 1, 2), mind_ssc(moving, 1, 2)
    disp, report = refine(
        fixed, moving, torch.zeros(1, 3, *SMALL), CascadeConfig(steps=2), fixed_sim=fsim, moving_sim=msim
    )
    assert disp.shape == (1, 3, *SMALL)
    plain, plain_report = refine(fixed, moving, torch.zeros(1, 3, *SMALL), CascadeConfig(steps=2))
    assert report.losses[0] != pytest.approx(plain_report.losses[0], abs=1e-4)


def test_bad_shapes_and_options_are_rejected():
    fixed, moving = _pair()
    with pytest.raises(ValueError):
        refine(fixed, moving, torch.zeros(1, 3, 4, 4, 4))
    with pytest.raises(ValueError):
        refine(fixed, moving, torch.zeros(1, 3, *SMALL), fixed_sim=fixed)
    with pytest.raises(ValueError):
        CascadeConfig(composition="sum")
    with pytest.raises(ValueError):
        dataclasses.replace(CascadeConfig(), stage_factors=(4, 2))
