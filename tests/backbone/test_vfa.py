"""VFA backbone: state-dict layout, fixture agreement (float64/float32), loading, project-convention output."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.weights_recipe import recipe_state, write_deterministic_weights

from caio import spatial
from caio.backbone.vfa import VFA, VFAConfig, load_vfa, predict_displacement, upsample_grid
from caio.backbone.vfa_blocks import NEIGHBOUR_OFFSETS, neighbourhood_attention
from caio.errors import CaioInputError


# ------------------------------------------------------------------------------ fixture helpers
@pytest.fixture(scope="module")
def vfa_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "vfa"


@pytest.fixture(scope="module")
def manifest(vfa_dir: Path) -> dict:
    return json.loads((vfa_dir / "weights_manifest.json").read_text())


@pytest.fixture(scope="module")
def weights64() -> dict[str, torch.Tensor]:
    """Deterministic float64 weights by the fixture recipe (fixtures README §0)."""
    return recipe_state("vfa")


@pytest.fixture(scope="module")
def inputs(vfa_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(vfa_dir / "inputs.npz")
    return tuple(torch.from_numpy(data[k].astype(np.float64))[None, None] for k in ("fixed", "moving"))


@pytest.fixture(scope="module")
def run64(weights64, inputs) -> tuple[torch.Tensor, dict]:
    torch.set_num_threads(2)
    model = VFA().double()
    model.load_state_dict(weights64, strict=True)
    record: dict = {}
    with torch.inference_mode():
        grid = model(*inputs, record=record)
    return grid, record


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """The recipe's weights saved as ``VFA_LUMIR24.pth`` (2024 layout) and ``VFA_LUMIR25.pth`` (2025 layout)."""
    return write_deterministic_weights(tmp_path_factory.mktemp("weights"), brainid=False)


@pytest.fixture(scope="module")
def model32(written) -> VFA:
    """The float32 model as the pipeline gets it: the written 2024 checkpoint through the real loader."""
    return load_vfa(written["vfa_mono"], "cpu")


def chanstats(feat: torch.Tensor) -> np.ndarray:
    x = feat[0].flatten(1)
    return torch.stack([x.mean(1), x.std(1, unbiased=False), x.min(1).values, x.max(1).values], 1).numpy()


# ------------------------------------------------------------------------------ layout
def test_state_dict_keys_shapes_and_order_equal_official_manifest(manifest):
    state = VFA(VFAConfig()).state_dict()
    assert list(state) == [e["key"] for e in manifest["keys"]]
    assert [tuple(v.shape) for v in state.values()] == [tuple(e["shape"]) for e in manifest["keys"]]
    assert sum(v.numel() for v in state.values()) == manifest["n_params"] == 2_014_827
    assert len(list(VFA().buffers())) == 0


def test_recipe_weights_reproduce_manifest_checksums(manifest, weights64):
    for e in manifest["keys"]:
        value = weights64[e["key"]]
        assert float(value.sum()) == pytest.approx(e["check_sum_f64"], abs=1e-9), e["key"]
        assert value.flatten()[:3].tolist() == pytest.approx(e["check_first3_f64"], abs=1e-12), e["key"]


# ------------------------------------------------------------------------------ float64 fixture
def test_float64_grid_matches_official(run64, vfa_dir):
    expected = np.load(vfa_dir / "expected_f64.npz")
    grid, record = run64
    assert grid.dtype == torch.float64
    np.testing.assert_allclose(grid.numpy(), expected["grid"], rtol=0, atol=1e-6)
    for level in (4, 3, 2, 1):
        np.testing.assert_allclose(
            record[f"grid_level{level}"].numpy(),
            expected[f"grid_level{level}"],
            rtol=0,
            atol=1e-6,
            err_msg=f"grid_level{level}",
        )


def test_float64_attention_and_features_match_official(run64, vfa_dir):
    expected = np.load(vfa_dir / "expected_f64.npz")
    _, record = run64
    for level in (4, 3, 2, 1):
        np.testing.assert_allclose(
            record[f"attn_disp_level{level}"].numpy(),
            expected[f"attn_disp_level{level}"],
            rtol=0,
            atol=1e-9,
            err_msg=f"attn_disp_level{level}",
        )
    for side in ("fixed", "moving"):
        for level in range(5):
            feat = record[f"feat_{side}_level{level}"]
            np.testing.assert_allclose(
                chanstats(feat),
                expected[f"feat_{side}_level{level}_chanstats"],
                rtol=0,
                atol=1e-9,
                err_msg=f"{side} level {level}",
            )
        for level in (3, 4):
            np.testing.assert_allclose(
                record[f"feat_{side}_level{level}"].numpy(), expected[f"feat_{side}_level{level}"], rtol=0, atol=1e-9
            )


def test_level0_attention_matches_summary_statistics(run64, vfa_dir):
    summary = json.loads((vfa_dir / "expected_summary.json").read_text())
    u0 = run64[1]["attn_disp_level0"]
    assert float(u0.abs().sum()) == pytest.approx(summary["attn_disp_level0_stats"]["abs_sum"], rel=1e-9)
    assert u0.mean(dim=(0, 2, 3, 4)).tolist() == pytest.approx(summary["attn_disp_level0_per_component_mean"], abs=1e-9)


def test_warped_moving_matches_official(run64, inputs, vfa_dir):
    expected = np.load(vfa_dir / "expected_f32.npz")["warped_moving"]
    warped = spatial.sample(inputs[1], run64[0])
    np.testing.assert_allclose(warped.numpy(), expected, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------ float32 / precision
@pytest.fixture(scope="module")
def disp32(model32, inputs) -> torch.Tensor:
    fixed, moving = (x.float() for x in inputs)
    return predict_displacement(model32, fixed, moving, precision="fp32")


def test_float32_grid_and_warped_moving_match_official(disp32, inputs, vfa_dir):
    """``model32`` comes from the written official-layout file: the recipe and the loader are right."""
    expected = np.load(vfa_dir / "expected_f32.npz")
    grid = disp32 + spatial.identity_grid((32, 64, 48))
    np.testing.assert_allclose(grid.numpy(), expected["grid"], rtol=0, atol=1e-3)
    moving = inputs[1].float()
    np.testing.assert_allclose(spatial.sample(moving, grid).numpy(), expected["warped_moving"], rtol=0, atol=1e-2)


def test_predict_displacement_is_grid_minus_identity_in_voxels(model32, disp32, inputs, vfa_dir):
    expected = np.load(vfa_dir / "expected_f64.npz")["grid"]
    assert disp32.shape == (1, 3, 32, 64, 48) and disp32.dtype == torch.float32
    assert not disp32.is_inference() and not disp32.requires_grad
    identity = spatial.identity_grid((32, 64, 48), dtype=torch.float64).numpy()
    np.testing.assert_allclose(disp32.double().numpy(), expected - identity, rtol=0, atol=1e-3)
    with torch.inference_mode():
        grid = model32(*(x.float() for x in inputs))
    assert grid.dtype == torch.float32
    torch.testing.assert_close(disp32, grid - spatial.identity_grid((32, 64, 48)), rtol=0, atol=1e-6)
    disp = disp32.clone().requires_grad_(True)  # usable by the (autograd) cascade afterwards
    (disp * 2).sum().backward()
    assert torch.equal(disp.grad, torch.full_like(disp, 2.0))


# CPU emulates half-precision convolutions slowly (~100 s each here): bf16 runs by default, fp16 with -m slow.
@pytest.mark.parametrize(
    "precision, max_tol, mean_tol", [pytest.param("fp16", 0.3, 0.02, marks=pytest.mark.slow), ("bf16", 1.0, 0.1)]
)
def test_autocast_half_precision_stays_close_to_float64(model32, inputs, vfa_dir, precision, max_tol, mean_tol):
    """CPU autocast exercises the same code path as CUDA fp16/bf16 inference."""
    expected = np.load(vfa_dir / "expected_f64.npz")["grid"]
    fixed, moving = (x.float() for x in inputs)
    disp = predict_displacement(model32, fixed, moving, precision=precision)
    identity = spatial.identity_grid((32, 64, 48), dtype=torch.float64).numpy()
    err = np.abs(disp.double().numpy() - (expected - identity))
    assert disp.dtype == torch.float32
    assert err.max() < max_tol and err.mean() < mean_tol
    assert err.max() > 1e-4  # the half-precision path was really taken


def test_input_scale_is_applied_once_before_the_network(model32, disp32, inputs):
    fixed, moving = (x.float() for x in inputs)
    scaled = VFA(VFAConfig(input_scale=1 / 255)).eval()
    scaled.load_state_dict(model32.state_dict())
    disp_scaled = predict_displacement(scaled, fixed, moving, precision="fp32")
    disp_manual = predict_displacement(model32, fixed * (1 / 255), moving * (1 / 255), precision="fp32")
    torch.testing.assert_close(disp_scaled, disp_manual, rtol=0, atol=1e-5)
    assert (disp_scaled - disp32).abs().max() > 1e-5  # IN eps makes the scale visible


def test_predict_displacement_pads_sizes_that_are_not_multiples_of_16(model32, inputs):
    fixed, moving = (x.float()[:, :, 4:24, 10:40, 12:32] for x in inputs)
    disp = predict_displacement(model32, fixed, moving, precision="fp32")
    assert disp.shape == (1, 3, 20, 30, 20)
    padded = [F.pad(x, (0, 12, 0, 2, 0, 12)) for x in (fixed, moving)]  # up to 32 (>= 2 * 16) per axis
    full = predict_displacement(model32, *padded, precision="fp32")
    torch.testing.assert_close(disp, full[:, :, :20, :30, :20], rtol=0, atol=1e-6)


def test_predict_displacement_rejects_wrong_shapes(model32):
    with pytest.raises(ValueError):
        predict_displacement(model32, torch.zeros(1, 1, 32, 32, 32), torch.zeros(1, 1, 32, 32, 48))
    with pytest.raises(ValueError):
        predict_displacement(model32, torch.zeros(1, 32, 32, 32), torch.zeros(1, 32, 32, 32))


# ------------------------------------------------------------------------------ components
@pytest.mark.parametrize("slab", [None, 1, 3, 100])
def test_neighbourhood_attention_equals_unfolded_softmax(slab):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 5, 4, 6, 5, generator=gen, dtype=torch.float64) * 3
    k = torch.randn(2, 5, 6, 8, 7, generator=gen, dtype=torch.float64) * 3
    d, h, w = q.shape[2:]
    keys = torch.stack(
        [k[:, :, a + 1 : a + 1 + d, b + 1 : b + 1 + h, c + 1 : c + 1 + w] for a, b, c in NEIGHBOUR_OFFSETS], 2
    )
    weights = torch.softmax((q[:, :, None] * keys).sum(1) / 5**0.5, dim=1)  # [B, 27, d, h, w]
    offsets = torch.tensor(NEIGHBOUR_OFFSETS, dtype=torch.float64)  # [27, 3]
    reference = torch.einsum("bjxyz,jc->bcxyz", weights, offsets)
    torch.testing.assert_close(neighbourhood_attention(q, k, slab=slab), reference, rtol=0, atol=1e-12)
    assert NEIGHBOUR_OFFSETS[1] == (-1, -1, 0) and NEIGHBOUR_OFFSETS[9] == (0, -1, -1)


def test_upsample_grid_is_corner_aligned():
    ident = spatial.identity_grid((3, 4, 5), dtype=torch.float64)
    torch.testing.assert_close(upsample_grid(ident), spatial.identity_grid((6, 8, 10), dtype=torch.float64))
    grid = ident + torch.randn(1, 3, 3, 4, 5, dtype=torch.float64)
    scale = torch.tensor([5 / 2, 7 / 3, 9 / 4], dtype=torch.float64).view(1, 3, 1, 1, 1)
    reference = F.interpolate(grid * scale, scale_factor=2, mode="trilinear", align_corners=True)
    torch.testing.assert_close(upsample_grid(grid), reference, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------ loading
def _state32(weights64) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in weights64.items()}


@pytest.mark.parametrize("layout", ["2024", "2025", "bare"])
def test_load_vfa_accepts_each_checkpoint_layout(tmp_path, weights64, layout):
    state = _state32(weights64)
    if layout == "2024":
        obj = {
            "epoch": 999,
            "model_state_dict": state,
            "optimizer_state_dict": {
                "state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3)}},
                "param_groups": [{"lr": 1e-4, "amsgrad": True, "params": [0]}],
            },
            "scheduler_state_dict": {"milestones": Counter({1000: 1}), "gamma": 0.5, "last_epoch": 3},
        }
    elif layout == "2025":
        obj = {"epoch": 499, "state_dict": state, "best_dsc": 0.77, "optimizer": {"state": {}}}
    else:
        obj = state
    path = tmp_path / "vfa.pth"
    torch.save(obj, path)
    model = load_vfa(path, "cpu")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.config.input_scale == 1.0  # not a manifest file name: raw [0, 255]


def test_load_vfa_takes_input_scale_from_the_weights_manifest(tmp_path, weights64):
    path = tmp_path / "VFA_LUMIR25.pth"
    torch.save({"state_dict": _state32(weights64)}, path)
    assert load_vfa(path).config.input_scale == pytest.approx(1 / 255)
    path = tmp_path / "VFA_LUMIR24.pth"
    torch.save({"model_state_dict": _state32(weights64)}, path)
    assert load_vfa(path).config.input_scale == 1.0
    entry = {
        "name": "X",
        "role": "backbone_mono",
        "file": "VFA_LUMIR24.pth",
        "urls": [],
        "sha256": None,
        "licence": "test",
        "checkpoint_key": "model_state_dict",
        "input_scale": 0.5,
    }
    (tmp_path / "manifest.json").write_text(json.dumps({"weights": [entry]}))  # beside the file: wins
    assert load_vfa(path).config.input_scale == 0.5


def test_written_checkpoints_have_the_official_layouts_and_the_same_weights(written, model32, weights64):
    mono, multi = (torch.load(written[k], map_location="cpu", weights_only=True) for k in ("vfa_mono", "vfa_multi"))
    assert written["vfa_mono"].name == "VFA_LUMIR24.pth" and written["vfa_multi"].name == "VFA_LUMIR25.pth"
    assert set(mono) == {"epoch", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict"}
    assert set(multi) == {"epoch", "state_dict", "best_dsc", "optimizer"}
    for state in (mono["model_state_dict"], multi["state_dict"]):
        assert list(state) == list(weights64) and all(v.dtype == torch.float32 for v in state.values())
    assert float(mono["model_state_dict"]["decoder.beta"]) == 2.0
    model = load_vfa(written["vfa_multi"], "cpu")
    assert model.config.input_scale == pytest.approx(1 / 255) and model32.config.input_scale == 1.0
    for key, value in model.state_dict().items():
        assert torch.equal(value, model32.state_dict()[key]), key
        torch.testing.assert_close(value, weights64[key].float(), rtol=0, atol=0)


def test_unexpected_key_is_an_error_naming_the_key(tmp_path, weights64):
    """VFA stays strict: an extra tensor means the file is not the network caio builds."""
    state = _state32(weights64)
    state["decoder.project.5.weight"] = torch.zeros(8, 16, 3, 3, 3)
    path = tmp_path / "extra.pth"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(CaioInputError, match=r"extra\.pth.*unexpected key 'decoder\.project\.5\.weight'") as info:
        load_vfa(path)
    assert "\n" not in str(info.value)


def test_truncated_checkpoint_is_a_one_line_input_error(tmp_path, weights64):
    path = tmp_path / "vfa.pth"
    torch.save({"model_state_dict": _state32(weights64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaioInputError, match="vfa.pth") as info:
        load_vfa(path)
    assert "\n" not in str(info.value)


def test_wrong_shape_tensor_names_the_key(tmp_path, weights64):
    state = _state32(weights64)
    state["decoder.project.2.weight"] = torch.zeros(32, 64, 3, 3, 1)
    path = tmp_path / "bad.pth"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(CaioInputError, match=r"bad\.pth.*decoder\.project\.2\.weight"):
        load_vfa(path)


def test_missing_key_names_the_key(tmp_path, weights64):
    state = _state32(weights64)
    del state["decoder.beta"]
    path = tmp_path / "missing.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CaioInputError, match=r"missing\.pth.*decoder\.beta"):
        load_vfa(path)


@pytest.mark.slow
def test_full_size_forward_runs_in_float32():
    model = VFA().eval()
    torch.manual_seed(0)
    fixed, moving = (torch.rand(1, 1, 160, 224, 192) * 255 for _ in range(2))
    disp = predict_displacement(model, fixed, moving, precision="fp32")
    assert disp.shape == (1, 3, 160, 224, 192) and torch.isfinite(disp).all()
