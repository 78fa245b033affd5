"""``caio pretrain``: train the cascade's initial weights on pairs of T1-like volumes.

Every step draws one ordered pair ``(fixed, moving)`` of different volumes from the folder
(the draw depends only on ``(seed, step)``, so a resumed run sees the same pairs), runs the
cascade from a zero initial field with the instance-optimisation loss
(:func:`caio.refine.cascade.cascade_forward`) and takes one Adam step. The volumes must share one
grid and be roughly (affinely) aligned, as LUMIR images are.

Outputs: the weights file ``{format_version, arch, config, state_dict}`` (fp16 tensors,
read by :func:`caio.refine.cascade.refine` through ``init_state``) and, every ``--checkpoint-every``
steps, a training checkpoint (fp32 weights, optimiser state, step) that ``--resume`` continues
from. Both are written atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from caio import io
from caio.errors import CaioInputError
from caio.io.atomic import replace_atomically
from caio.refine.adam import Adam
from caio.refine.cascade import cascade_forward, prepare_inputs
from caio.refine.networks import build_cascade
from caio.refine.settings import CascadeConfig, config_to_dict
from caio.weights.checkpoints import load_checkpoint, load_into

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz")
CHECKPOINT_VERSION = 1


def find_volumes(folder: str | os.PathLike, modality: str | None = "0000") -> list[Path]:
    """Image files of a folder (or of its ``imagesTr``/``imagesVal`` sub-folders for LUMIR-style data).

    Files named like LUMIR (``..._SSSS_MMMM.nii.gz``) are kept only for ``modality``
    (``None``: all); label/mask files (``seg``, ``label``, ``mask`` in the name) are skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CaioInputError(f"{root}: not a folder")
    dirs = [d for d in (root / "imagesTr", root / "imagesVal") if d.is_dir()] or [root]
    files = []
    for d in dirs:
        for path in sorted(d.iterdir()):
            name = path.name.lower()
            if not name.endswith(IMAGE_SUFFIXES) or any(w in name for w in ("seg", "label", "mask")):
                continue
            if modality is not None:
                try:
                    if io.parse_lumir_name(path)[1] != modality:
                        continue
                except CaioInputError:
                    pass
            files.append(path)
    if len(files) < 2:
        raise CaioInputError(f"{root}: need at least 2 image volumes (.nii.gz/.nii/.mgz), found {len(files)}")
    return files


def load_volumes(paths: Sequence[Path], shape: Sequence[int] | None = None) -> list[torch.Tensor]:
    """``[1, 1, D0, D1, D2]`` float32 tensors in [0, 255] (rescaled if a file exceeds 255), one grid."""
    volumes = []
    for path in paths:
        array = io.read_volume(path, expected_shape=None).astype(np.float32)
        if array.max() > 255.0:
            array = array * (255.0 / float(array.max()))
        volume = torch.from_numpy(np.ascontiguousarray(array))[None, None]
        if shape is not None and tuple(volume.shape[2:]) != tuple(shape):
            volume = torch.nn.functional.interpolate(volume, size=tuple(shape), mode="trilinear", align_corners=True)
        volumes.append(volume)
        if volume.shape != volumes[0].shape:
            raise CaioInputError(
                f"{path}: shape {tuple(volume.shape[2:])} differs from {tuple(volumes[0].shape[2:])} "
                f"(use --shape to resample all volumes)"
            )
    return volumes


def pair_for_step(seed: int, step: int, n: int) -> tuple[int, int]:
    """Indices ``(fixed, moving)`` of the pair of a step; depends only on ``(seed, step)``."""
    rng = np.random.default_rng([int(seed), int(step)])
    i, j = rng.choice(n, size=2, replace=False)
    return int(i), int(j)


def _save_checkpoint(path: Path, nets, optimizer, step: int, cfg: CascadeConfig, seed: int) -> None:
    payload = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "step": step,
        "seed": seed,
        "arch": cfg.arch,
        "config": config_to_dict(cfg),
        "state_dict": nets.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda tmp: torch.save(payload, str(tmp)))


def train(
    volumes: Sequence[torch.Tensor],
    cfg: CascadeConfig,
    steps: int,
    lr: float = 1e-5,
    seed: int = 0,
    checkpoint: Path | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> torch.nn.ModuleList:
    """Pretrain the cascade; returns the networks (CPU or the volumes' device).

    Args:
        volumes: ``[1, 1, D0, D1, D2]`` images in [0, 255], same grid.
        steps: total number of steps of the run (a resumed run continues up to it).
        lr: Adam learning rate after the warm-up of ``cfg.warmup_steps`` steps.
        checkpoint: training checkpoint path (written every ``checkpoint_every`` steps and at the end).
        resume: continue from ``checkpoint``.
        stop_after: stop (after checkpointing) once this step count is reached (for tests/interrupts).
    """
    from tqdm import tqdm

    device = volumes[0].device
    nets = (
        build_cascade(len(cfg.stage_factors), cfg.arch["in_channels"], cfg.base_channels, cfg.depth, seed, cfg.head_std)
        .to(device)
        .train()
    )
    optimizer = Adam(nets.parameters(), lr=lr)
    start = 0
    if resume:
        if checkpoint is None or not checkpoint.is_file():
            raise CaioInputError(f"{checkpoint}: no checkpoint to resume from")
        state = load_checkpoint(checkpoint)
        if state.get("arch") != cfg.arch or state.get("seed") != seed:
            raise CaioInputError(
                f"{checkpoint}: made with another architecture or seed ({state.get('arch')}, seed {state.get('seed')})"
            )
        load_into(nets, state["state_dict"], checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        log.info("pretrain: resumed from %s at step %d", checkpoint, start)
    zero = torch.zeros((1, 3, *volumes[0].shape[2:]), device=device)
    end = steps if stop_after is None else min(steps, stop_after)
    bar = tqdm(range(start, end), initial=start, total=steps, disable=not progress, desc="pretrain")
    for step in bar:
        i, j = pair_for_step(seed, step, len(volumes))
        inputs = prepare_inputs(volumes[i], volumes[j], zero, cfg)
        loss, _, _ = cascade_forward(nets, inputs, cfg)
        optimizer.warm_up(lr, step, cfg.warmup_steps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == end):
            _save_checkpoint(checkpoint, nets, optimizer, step + 1, cfg, seed)
    return nets
