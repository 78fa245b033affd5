"""Brain-ID clean-room network, checkpoint loading, pre/post-processing and tiled inference."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.weights_recipe import BRAINID_EXTRA_HEAD, recipe_state, write_deterministic_weights

from caio.contrast.brainid import BrainID, BrainIDConfig, load_brainid, synthesize_t1, tiled_image
from caio.errors import CaioInputError
from caio.weights.checkpoints import load_checkpoint


@pytest.fixture(scope="module")
def manifest(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "brainid" / "weights_manifest.json").read_text())


@pytest.fixture(scope="module")
def fixture_input(fixtures_dir: Path) -> np.ndarray:
    return np.load(fixtures_dir / "brainid" / "inputs.npz")["input_codes"]


@pytest.fixture(scope="module")
def model64(manifest) -> BrainID:
    model = BrainID().double()
    model.load_state_dict(recipe_state("brainid"), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """The recipe's weights saved as ``brain_id_pretrained.pth`` in the official layout (with an unused seg head)."""
    return write_deterministic_weights(tmp_path_factory.mktemp("weights"), vfa_mono=False, vfa_multi=False)["brainid"]


@pytest.fixture(scope="module")
def model32(written) -> BrainID:
    """The float32 model as the pipeline gets it: the written checkpoint through the real loader."""
    return load_brainid(written, "cpu")


@pytest.fixture(scope="module")
def small_model() -> BrainID:
    """Random but well-scaled weights (GroupNorm gains ~1) for shape/behaviour tests."""
    gen = torch.Generator().manual_seed(0)
    model = BrainID()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 5:
                p.copy_(torch.randn(p.shape, generator=gen) / float(np.sqrt(p[0].numel())))
            elif name.endswith("groupnorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def test_state_dict_keys_and_shapes_match_official_manifest(manifest):
    state = BrainID().state_dict()
    assert list(state) == [e["key"] for e in manifest["keys"]]  # same keys, official order
    assert {k: tuple(v.shape) for k, v in state.items()} == {e["key"]: tuple(e["shape"]) for e in manifest["keys"]}
    assert sum(v.numel() for v in state.values()) == manifest["n_params"] == 65_870_051
    assert len(state) == manifest["n_keys"] == 56


def test_recipe_weights_reproduce_manifest_checksums(manifest):
    state = recipe_state("brainid")
    for entry in manifest["keys"]:
        value = state[entry["key"]]
        assert float(value.sum()) == pytest.approx(entry["check_sum_f64"], rel=1e-12, abs=1e-9)
        np.testing.assert_allclose(value.flatten()[:3].numpy(), entry["check_first3_f64"], rtol=1e-12)


def test_float64_forward_matches_official_image_and_features(model64, fixture_input, fixtures_dir):
    expected = np.load(fixtures_dir / "brainid" / "expected_f64.npz")
    x = torch.from_numpy(fixture_input.astype(np.float64) / 255.0)[None, None]
    with torch.no_grad():
        image, feats = model64(x, return_features=True)
    np.testing.assert_allclose(image.numpy(), expected["image"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(feats[0].numpy(), expected["feat_bottleneck"], rtol=0, atol=1e-8)
    for i, feat in enumerate(feats):
        f = feat[0].flatten(1).numpy()
        stats = np.stack([f.mean(1), f.std(1), f.min(1), f.max(1)], axis=1)
        np.testing.assert_allclose(stats, expected[f"feat{i}_chanstats"], rtol=0, atol=1e-8)
    last = feats[-1][0].numpy()
    chans = expected["feat_last_slice_chans"]
    np.testing.assert_allclose(last[chans, 16], expected["feat_last_axis0_mid"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(last[chans, :, 24], expected["feat_last_axis1_mid"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(last[chans, :, :, 20], expected["feat_last_axis2_mid"], rtol=0, atol=1e-8)
    pts = expected["feat_last_probe_points"].astype(int)
    np.testing.assert_allclose(
        last[:, pts[:, 0], pts[:, 1], pts[:, 2]].T, expected["feat_last_at_points"], rtol=0, atol=1e-8
    )


def test_float32_forward_matches_official_image(model32, fixture_input, fixtures_dir):
    """``model32`` comes from the written official-layout file: the recipe and the loader are right."""
    expected = np.load(fixtures_dir / "brainid" / "expected_f32.npz")["image"]
    x = torch.from_numpy(fixture_input.astype(np.float32) / 255.0)[None, None]
    with torch.no_grad():
        image = model32(x)
    np.testing.assert_allclose(image.numpy(), expected, rtol=0, atol=1e-3)


def test_tiled_inference_float64_matches_official_image(model64, fixture_input, fixtures_dir):
    expected = np.load(fixtures_dir / "brainid" / "expected_f64.npz")["image"]
    x = torch.from_numpy(fixture_input.astype(np.float64) / 255.0)[None, None]
    out = tiled_image(model64, x, tile=(20, 28, 24), storage=torch.float64)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-8)


def test_synthesize_t1_returns_exactly_the_input_grid_in_0_255(small_model):
    gen = torch.Generator().manual_seed(3)
    volume = torch.zeros(1, 1, 20, 46, 18)  # axis 1 > max_size (cropped), axes 0, 2 < 24 (no crop)
    volume[:, :, 3:17, 5:42, 2:16] = 1 + 254 * torch.rand(1, 1, 14, 37, 14, generator=gen)
    cfg = BrainIDConfig(max_size=40, min_size=16)
    out = synthesize_t1(small_model, volume, config=cfg)
    assert out.shape == volume.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 255
    assert bool((out[volume <= 0] == 0).all())
    assert float(out.max()) == pytest.approx(255.0)  # brain quantile mapped to 255, then clipped
    assert bool((out[:, :, :, :3] == 0).all()) and bool((out[:, :, :, 43:] == 0).all())  # outside the crop
    # the same volume stored in another axis order / direction, with the matching config, gives the same answer
    moved = volume.permute(0, 1, 3, 4, 2).flip(3)  # array axes (A, S reversed, R)
    oriented = BrainIDConfig(axis_order=(2, 0, 1), flip=(False, False, True), max_size=40, min_size=16)
    out2 = synthesize_t1(small_model, moved, config=oriented)
    assert out2.shape == moved.shape
    np.testing.assert_allclose(out2.numpy(), out.permute(0, 1, 3, 4, 2).flip(3).numpy(), atol=1e-3)


def test_synthesize_t1_pads_axes_shorter_than_the_network_needs(small_model):
    volume = torch.zeros(1, 1, 10, 20, 17)
    volume[:, :, 2:8, 3:17, 3:14] = torch.linspace(1, 255, 6 * 14 * 11).view(1, 1, 6, 14, 11)
    out = synthesize_t1(small_model, volume)
    assert out.shape == volume.shape and float(out.max()) > 0


def test_synthesize_t1_tiled_matches_untiled_on_small_volume(small_model):
    gen = torch.Generator().manual_seed(4)
    volume = torch.zeros(1, 1, 32, 36, 24)
    volume[:, :, 4:28, 4:32, 4:20] = 1 + 254 * torch.rand(1, 1, 24, 28, 16, generator=gen)
    whole = synthesize_t1(small_model, volume)
    tiled = synthesize_t1(small_model, volume, tile=(16, 20, 16))
    np.testing.assert_allclose(tiled.numpy(), whole.numpy(), rtol=0, atol=0.05)  # [0, 255] units
    # no tile given, but above cpu_untiled_max_voxels: tiled automatically (here with fp16 storage)
    auto = BrainIDConfig(storage=torch.float16, cpu_untiled_max_voxels=16**3, cpu_tile=16)
    half = synthesize_t1(small_model, volume, config=auto)
    err = (half - whole).abs()[volume > 0]
    assert float(err.max()) > 0  # the fp16-stored tiled path ran
    assert float(err.max()) < 8.0 and float(err.mean()) < 0.5  # ~1e-3 relative per stored layer


def _save(path: Path, payload: object) -> Path:
    torch.save(payload, path)
    return path


def _constant_state() -> dict[str, torch.Tensor]:
    """Correct keys and shapes; each tensor a stride-0 view of one distinct value (a tiny file)."""
    return {k: torch.full((1,), 0.001 * i).expand(v.shape) for i, (k, v) in enumerate(BrainID().state_dict().items())}


def test_clean_checkpoint_with_pickled_namespace_loads(tmp_path):
    state = _constant_state()
    args = argparse.Namespace(task="feat-anat", f_maps=64, lr=1e-4)
    path = _save(
        tmp_path / "brain_id_pretrained.pth", {"model": state, "epoch": 3, "args": args, "best_val_stats": None}
    )
    model = load_brainid(path, "cpu")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not model.training


def test_written_checkpoint_has_the_official_layout_and_an_unused_head(written, model32):
    checkpoint = load_checkpoint(written, allowed_globals=[argparse.Namespace])
    assert written.name == "brain_id_pretrained.pth"
    assert set(checkpoint) == {"model", "optimizer", "epoch", "args", "best_val_stats"}
    assert isinstance(checkpoint["args"], argparse.Namespace)
    state = checkpoint["model"]
    assert len(state) == 56 + len(BRAINID_EXTRA_HEAD) and set(BRAINID_EXTRA_HEAD) <= set(state)
    loaded = model32.state_dict()
    assert set(loaded) == set(state) - set(BRAINID_EXTRA_HEAD)
    assert all(torch.equal(loaded[k], state[k]) for k in ("head.final_conv_image.weight", "head.final_conv_image.bias"))


def test_unused_head_is_logged_in_one_line_and_ignored(tmp_path, caplog):
    state = _constant_state()
    state["head.final_conv_seg.weight"] = torch.zeros(33, 64, 1, 1, 1)
    state["head.final_conv_seg.bias"] = torch.zeros(33)
    path = _save(tmp_path / "brain_id_pretrained.pth", {"model": state, "epoch": 1, "args": argparse.Namespace(a=1)})
    with caplog.at_level(logging.INFO, logger="caio.weights.checkpoints"):
        model = load_brainid(path, "cpu")
    lines = [r.getMessage() for r in caplog.records if "final_conv_seg" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert str(path) in lines[0] and "head.final_conv_seg.weight" in lines[0] and "head.final_conv_seg.bias" in lines[0]
    assert "ignored" in lines[0]
    assert not any(k.startswith("head.final_conv_seg") for k in model.state_dict())
    assert torch.equal(model.state_dict()["head.final_conv_image.bias"], state["head.final_conv_image.bias"])


def test_missing_keys_are_an_error_naming_the_file_and_the_first_keys(tmp_path):
    state = _constant_state()
    gone = [k for k in state if k.startswith("backbone.decoders.3.")]
    for key in gone:
        del state[key]
    state["head.final_conv_seg.weight"] = torch.zeros(33, 64, 1, 1, 1)  # an unused head does not hide the problem
    path = _save(tmp_path / "brain_id_pretrained.pth", {"model": state, "epoch": 1})
    with pytest.raises(CaioInputError) as info:
        load_brainid(path, "cpu")
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert all(f"'{k}'" in message for k in gone[:3]) and f"+{len(gone) - 3} more" in message
    assert "final_conv_seg" not in message


@pytest.mark.parametrize(
    "problem",
    ["truncated", "wrong_shape", "missing_key", "no_model_entry", "foreign_class", "missing_file"],
)
def test_malformed_checkpoint_raises_input_error(tmp_path, problem):
    state = _constant_state()
    payload: dict = {"model": state, "epoch": 0, "args": argparse.Namespace(a=1)}
    path = tmp_path / "ckpt.pth"
    if problem == "wrong_shape":
        state["head.final_conv_image.weight"] = torch.zeros(2, 64, 1, 1, 1)
    elif problem == "missing_key":
        del state["backbone.decoders.3.basic_module.SingleConv2.conv.weight"]
    elif problem == "no_model_entry":
        payload = {"state": state}
    elif problem == "foreign_class":
        payload["extra"] = argparse.ArgumentParser  # a class that is not allow-listed
    if problem != "missing_file":
        _save(path, payload)
    if problem == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaioInputError) as info:
        load_brainid(path, "cpu")
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    if problem in ("wrong_shape", "missing_key"):
        assert {"wrong_shape": "final_conv_image.weight", "missing_key": "decoders.3"}[problem] in message


def test_tiling_policy_picks_tiles_for_a_full_size_volume_on_a_gpu_and_a_cpu_and_none_for_a_small_one():
    """The policy only (:func:`tiling`, which tile and storage a device gets when the caller names none): the untiled
    160x224x192 fp16 forward peaked at 21 GB on an H200 (method: < 10 GB), so a GPU tiles it too. That the tiled
    output equals the untiled one is checked on the CPU above (``..._tiled_matches_untiled_on_small_volume``)."""
    from caio.contrast.brainid import tiling

    cfg, full, small = BrainIDConfig(), 160 * 224 * 192, 96**3
    assert tiling(torch.device("cuda"), full, cfg) == (cfg.gpu_tile, torch.float16)
    assert tiling(torch.device("cpu"), full, cfg) == (cfg.cpu_tile, cfg.storage)
    assert tiling(torch.device("cuda"), small, cfg)[0] is None
    assert tiling(torch.device("cpu"), 64**3, cfg)[0] is None
