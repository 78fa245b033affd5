"""Deterministic VFA and Brain-ID weights by the reference fixtures' recipe, in the official checkpoint layouts.

The recipe is ``tests/fixtures/README.md`` §0: every state-dict tensor is
``offset + scale * randn(shape, generator=manual_seed(seed))`` (float64, cast to float32 for a
real checkpoint), with ``seed = 1000 + position of the key in sorted() order`` and ``scale`` /
``offset`` set by the kind of tensor (:func:`recipe_parameters`). These are the weights the
reference outputs ``tests/fixtures/{vfa,brainid}/expected_*.npz`` were produced with, so a
model loaded from the files written here must reproduce them (``tests/backbone/test_vfa.py``,
``tests/contrast/test_brainid.py`` check it through the real loaders).

:func:`write_deterministic_weights` saves them under the official file names of
``weights/manifest.json`` in the official layouts (``vfa_spec.md`` §3, §5; ``brainid_spec.md`` §3):

* ``VFA_LUMIR24.pth`` (role ``backbone_mono``): ``{epoch, model_state_dict, optimizer_state_dict,
  scheduler_state_dict}`` (official VFA training loop; the scheduler state holds a ``Counter``);
* ``VFA_LUMIR25.pth`` (role ``backbone_multi``): ``{epoch, state_dict, best_dsc, optimizer}`` (MIR);
* ``brain_id_pretrained.pth`` (role ``contrast_adapter``): ``{model, optimizer, epoch, args,
  best_val_stats}`` with ``args`` a pickled ``argparse.Namespace``; ``model`` also holds an unused
  segmentation head ``head.final_conv_seg.{weight,bias}`` (made by the same rule, seeds after the
  official keys' so theirs are unchanged), which the loader must log and ignore.

The optimizer entries keep their official structure (``state`` + ``param_groups``) but no
moment tensors (they would triple the files: Brain-ID's to ~790 MB). The two VFA files hold the
same tensors; the manifest gives ``VFA_LUMIR25.pth`` the input scale 1/255.

Usable from tests (``tests/`` is on ``sys.path`` under pytest) and from benchmarks run from the repository root
(``from tests.helpers.weights_recipe import ...``, as ``python -m bench.deadline`` does)::

    from helpers.weights_recipe import write_deterministic_weights
    paths = write_deterministic_weights(tmp / "weights")  # {"vfa_mono": ..., "vfa_multi": ..., "brainid": ...}
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from functools import cache
from pathlib import Path

import torch

from caio.weights.manifest import load_manifest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODELS = ("vfa", "brainid")
SEED_BASE = 1000
BRAINID_EXTRA_HEAD: dict[str, tuple[int, ...]] = {
    "head.final_conv_seg.weight": (33, 64, 1, 1, 1),
    "head.final_conv_seg.bias": (33,),
}
"""An unused head like the one a released Brain-ID checkpoint may carry (spec §3)."""

ROLE_OF = {"vfa_mono": "backbone_mono", "vfa_multi": "backbone_multi", "brainid": "contrast_adapter"}
"""Key of :func:`write_deterministic_weights`' result (= :class:`caio.pipeline.Models` attribute) -> manifest role."""


@cache
def fixture_manifest(model: str) -> dict:
    """``tests/fixtures/<model>/weights_manifest.json``: keys in official order, shapes, seeds, scales, check sums."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return json.loads((FIXTURES / model / "weights_manifest.json").read_text())


def recipe_parameters(key: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """``(scale, offset)`` of a tensor by the recipe's rule (fixtures README §0 table).

    * 5-D conv weight: ``1 / sqrt(fan_in)``, 0 (fan_in = product of shape[1:]);
    * normalisation weight (VFA ``...norm*.weight``, ``encoder.in_norm.weight``; Brain-ID
      ``...groupnorm.weight``): 0.1, 1.0; normalisation bias: 0.1, 0;
    * any other bias (convs, ``decoder.project.*``, Brain-ID heads): 0.05, 0;
    * VFA ``decoder.beta``: 0, 2.0.
    """
    module, _, kind = key.rpartition(".")
    if key == "decoder.beta":
        return 0.0, 2.0
    if kind == "weight" and len(shape) == 5:
        return 1.0 / math.sqrt(math.prod(shape[1:])), 0.0
    if "norm" in module.rpartition(".")[2]:
        if kind == "weight":
            return 0.1, 1.0
        if kind == "bias":
            return 0.1, 0.0
    if kind == "bias":
        return 0.05, 0.0
    raise ValueError(f"no recipe rule for {key} {shape}")


def recipe_tensor(
    seed: int, shape: tuple[int, ...], scale: float, offset: float, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``offset + scale * randn(shape)`` from ``torch.Generator().manual_seed(seed)``, computed in float64."""
    z = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed)))
    return (offset + scale * z.to(torch.float64)).to(dtype)


def recipe_state(
    model: str, dtype: torch.dtype = torch.float64, extra: dict[str, tuple[int, ...]] | None = None
) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` (``"vfa"`` or ``"brainid"``) by the recipe, in official key order.

    Seeds, scales and offsets come from :func:`recipe_parameters` and the sorted key order, and
    are checked against the fixture manifest (a mismatch raises: the rule would be wrong).
    ``extra`` keys (name -> shape) are appended with seeds after the official ones.

    Returns:
        ``{key: tensor}``; float64 values are the fixtures' float64 run, float32 their float32 run.
    """
    entries = fixture_manifest(model)["keys"]
    order = {key: i for i, key in enumerate(sorted(e["key"] for e in entries))}
    state: dict[str, torch.Tensor] = {}
    for entry in entries:
        key, shape = entry["key"], tuple(entry["shape"])
        seed = SEED_BASE + order[key]
        scale, offset = recipe_parameters(key, shape)
        recorded = (entry["seed"], entry["scale"], entry["offset"])
        if not (seed == recorded[0] and math.isclose(scale, recorded[1], rel_tol=1e-12) and offset == recorded[2]):
            raise AssertionError(f"recipe rule gives {(seed, scale, offset)} for {key}, the manifest {recorded}")
        state[key] = recipe_tensor(entry["seed"], shape, entry["scale"], entry["offset"], dtype)
    for i, (key, shape) in enumerate(sorted((extra or {}).items())):
        state[key] = recipe_tensor(SEED_BASE + len(entries) + i, shape, *recipe_parameters(key, shape), dtype)
    return state


def _file_of(role: str) -> str:
    """The official file name of ``role`` in the repository's ``weights/manifest.json``."""
    return next(e.file for e in load_manifest() if e.role == role)


def _vfa_optimizer_groups(state: dict) -> list[dict]:
    return [
        {
            "lr": 1e-4,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0,
            "amsgrad": True,
            "params": list(range(len(state))),
        }
    ]


def vfa_2024_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """Official VFA (LUMIR24) layout: weights under ``model_state_dict``."""
    return {
        "epoch": 1000,
        "model_state_dict": state,
        "optimizer_state_dict": {"state": {}, "param_groups": _vfa_optimizer_groups(state)},
        "scheduler_state_dict": {
            "milestones": Counter({1000: 1}),
            "gamma": 0.5,
            "base_lrs": [1e-4],
            "last_epoch": 1000,
            "_step_count": 1001,
        },
    }


def vfa_2025_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """MIR (LUMIR25 multi-modal) layout: weights under ``state_dict``."""
    return {
        "epoch": 500,
        "state_dict": state,
        "best_dsc": 0.77,
        "optimizer": {"state": {}, "param_groups": _vfa_optimizer_groups(state)},
    }


def brainid_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """Brain-ID training layout: weights under ``model``, config as a pickled ``argparse.Namespace``."""
    args = argparse.Namespace(
        task="feat-anat", backbone="unet3d", f_maps=64, num_levels=5, lr=1e-4, out_channels={"image": 1, "seg": 33}
    )
    return {
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 1e-4, "params": [0]}]},
        "epoch": 120,
        "args": args,
        "best_val_stats": None,
    }


def write_deterministic_weights(
    folder: Path,
    *,
    vfa_mono: bool = True,
    vfa_multi: bool = True,
    brainid: bool = True,
    brainid_extra_head: bool = True,
) -> dict[str, Path]:
    """Write the recipe's float32 weights into ``folder`` under the official names and layouts.

    ``caio.weights.manifest.resolve(role, folder)`` then finds each file (the repository manifest
    has no published hashes, so present files are usable), and the pipeline loads them with
    ``PipelineConfig(weights_dir=folder)``.

    Args:
        folder: created if needed.
        vfa_mono, vfa_multi, brainid: which checkpoints to write (Brain-ID's is ~264 MB, ~2 s).
        brainid_extra_head: add the unused ``head.final_conv_seg.*`` to Brain-ID's ``model``.
    Returns:
        ``{"vfa_mono" | "vfa_multi" | "brainid": path}`` for the files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if vfa_mono or vfa_multi:
        vfa_state = recipe_state("vfa", torch.float32)
        for name, wanted, layout in (
            ("vfa_mono", vfa_mono, vfa_2024_checkpoint),
            ("vfa_multi", vfa_multi, vfa_2025_checkpoint),
        ):
            if wanted:
                written[name] = folder / _file_of(ROLE_OF[name])
                torch.save(layout(vfa_state), written[name])
    if brainid:
        state = recipe_state("brainid", torch.float32, BRAINID_EXTRA_HEAD if brainid_extra_head else None)
        written["brainid"] = folder / _file_of(ROLE_OF["brainid"])
        torch.save(brainid_checkpoint(state), written["brainid"])
        del state
    return written
