"""The engine's PyTorch path (what runs on a GPU) makes every tensor on its inputs' device.

A CPU-only machine cannot run CUDA, but it can catch the bug that broke cross-contrast pairs on the
first GPU run (a ``torch.linspace`` without ``device=`` indexed by a CUDA mask): with PyTorch's default
device set to ``meta``, every tensor made without an explicit device lands on ``meta`` and the first
operation mixing it with the CPU inputs fails, as it would mix CPU and CUDA on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from caio import spatial
from caio.engine import EngineConfig, register
from caio.engine.intensity_map import explained_variance, fit_intensity_map
from caio.engine.multiresolution import SIMILARITIES
from caio.similarity.mind import mind_ssc


@pytest.fixture
def default_device_meta():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, 1, 24, 28, 20, generator=generator, device="cpu") * 100
    return fixed, torch.roll(fixed, 1, 2)


@pytest.mark.parametrize("similarity", [s for s in SIMILARITIES if s != "auto"])
def test_engine_torch_path_makes_no_tensor_off_its_inputs_device(similarity, default_device_meta):
    fixed, moving = _pair()
    disp, trace = register(fixed, moving, similarity=similarity, device="cpu", config=EngineConfig(cpu_kernels=False))
    assert disp.device.type == "cpu" and trace.iterations > 0


def test_intensity_map_stays_on_its_inputs_device(default_device_meta):
    fixed, moving = _pair()
    table = fit_intensity_map(fixed, 255 - moving)
    assert table.values.device.type == "cpu" and table(moving).device.type == "cpu"
    assert 0 <= explained_variance(fixed, moving) <= 1


@pytest.mark.parametrize(
    "operation",
    [
        lambda f, u: spatial.warp(f, u),
        lambda f, u: spatial.compose(u, u),
        lambda f, u: spatial.resize_displacement(u, (12, 14, 10)),
        lambda f, u: spatial.resize_image(f, (12, 14, 10)),
        lambda f, u: spatial.gaussian_blur(f, 1.5),
        lambda f, u: spatial.jacobian_determinant(u),
        lambda f, u: mind_ssc(f),
    ],
    ids=["warp", "compose", "resize_displacement", "resize_image", "gaussian_blur", "jacobian", "mind_ssc"],
)
def test_spatial_operations_and_mind_ssc_stay_on_their_inputs_device(operation, default_device_meta):
    fixed, _ = _pair()
    disp = torch.rand(1, 3, *fixed.shape[2:], generator=torch.Generator().manual_seed(1), device="cpu")
    assert operation(fixed, disp).device.type == "cpu"
