"""``caio pretrain``: train the cascade's initial weights on pairs of T1-like volumes.

Every step draws one ordered pair ``(fixed, moving)`` of different volumes from the folder
(the draw depends only on ``(seed, step)``, so a resumed run sees the same pairs), runs the
cascade from a zero initial field with the instance-optimisation loss
(:func:`caio.cascade.cascade_forward`) and takes one Adam step. The volumes must share one
grid and be roughly (affinely) aligned, as LUMIR images are.

Outputs: the weights file ``{format_version, arch, config, state_dict}`` (fp16 tensors,
read by :func:`caio.cascade.refine` through ``init_state``) and, every ``--checkpoint-every``
steps, a training checkpoint (fp32 weights, optimiser state, step) that ``--resume`` continues
from. Both are written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from caio import io
from caio.cascade import CascadeConfig, cascade_forward, config_to_dict, prepare_inputs, warmup_factor
from caio.cascade_net import Adam, build_cascade, save_weights
from caio.checkpoints import load_checkpoint, load_into
from caio.errors import CaioInputError

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
            raise CaioInputError(f"{path}: shape {tuple(volume.shape[2:])} differs from {tuple(volumes[0].shape[2:])} "
                                 f"(use --shape to resample all volumes)")
    return volumes


def pair_for_step(seed: int, step: int, n: int) -> tuple[int, int]:
    """Indices ``(fixed, moving)`` of the pair of a step; depends only on ``(seed, step)``."""
    rng = np.random.default_rng([int(seed), int(step)])
    i, j = rng.choice(n, size=2, replace=False)
    return int(i), int(j)


def _save_checkpoint(path: Path, nets, optimizer, step: int, cfg: CascadeConfig, seed: int) -> None:
    payload = {"checkpoint_version": CHECKPOINT_VERSION, "step": step, "seed": seed, "arch": cfg.arch,
               "config": config_to_dict(cfg), "state_dict": nets.state_dict(), "optimizer": optimizer.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, str(tmp))
    os.replace(tmp, path)


def train(volumes: Sequence[torch.Tensor], cfg: CascadeConfig, steps: int, lr: float = 1e-5, seed: int = 0,
          checkpoint: Path | None = None, checkpoint_every: int = 100, resume: bool = False,
          stop_after: int | None = None, progress: bool = True) -> torch.nn.ModuleList:
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
    nets = build_cascade(len(cfg.stage_factors), cfg.arch["in_channels"], cfg.base_channels, cfg.depth, seed,
                         cfg.head_std).to(device).train()
    optimizer = Adam(nets.parameters(), lr=lr)
    start = 0
    if resume:
        if checkpoint is None or not checkpoint.is_file():
            raise CaioInputError(f"{checkpoint}: no checkpoint to resume from")
        state = load_checkpoint(checkpoint)
        if state.get("arch") != cfg.arch or state.get("seed") != seed:
            raise CaioInputError(f"{checkpoint}: made with another architecture or seed ({state.get('arch')}, "
                                 f"seed {state.get('seed')})")
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
        optimizer.lr = lr * warmup_factor(step, cfg.warmup_steps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == end):
            _save_checkpoint(checkpoint, nets, optimizer, step + 1, cfg, seed)
    return nets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="folder of T1-like volumes on one grid (or a LUMIR-style folder with imagesTr/ "
                                     "or imagesVal/, e.g. from `caio synth`)")
    parser.add_argument("--out", default="weights/cascade_init.pt", help="weights file to write")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    parser.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate (default 1e-5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the pair draws")
    parser.add_argument("--checkpoint", default=None, help="training checkpoint (default: OUT + '.ckpt')")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    parser.add_argument("--resume", action="store_true", help="continue from the training checkpoint")
    parser.add_argument("--shape", nargs=3, type=int, default=None, metavar=("D0", "D1", "D2"),
                        help="resample every volume to this grid (default: keep; all must then share one)")
    parser.add_argument("--modality", default="0000", help="LUMIR modality code to use ('all': every file)")
    parser.add_argument("--stage-factors", nargs="+", type=int, default=None, help="cascade stage factors")
    parser.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CascadeConfig()
    if args.stage_factors:
        n = len(args.stage_factors)  # coarse stages at scale 1, the finest at the default's finest scale
        cfg = dataclasses.replace(cfg, stage_factors=tuple(args.stage_factors),
                                  residual_scales=(1.0,) * (n - 1) + (cfg.residual_scales[-1],))
    paths = find_volumes(args.data, None if args.modality == "all" else args.modality)
    volumes = [v.to(args.device) for v in load_volumes(paths, args.shape)]
    log.info("pretrain: %d volumes %s from %s", len(volumes), tuple(volumes[0].shape[2:]), args.data)
    out = Path(args.out)
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    nets = train(volumes, cfg, args.steps, args.lr, args.seed, checkpoint, args.checkpoint_every, args.resume)
    save_weights(out, nets.cpu(), cfg.arch, config_to_dict(cfg), half=not args.fp32)
    log.info("pretrain: wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return 0
