"""``caio pretrain``: pretrain the instance-optimisation cascade (:mod:`caio.refine.pretrain`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from caio.cli.options import add_device, add_output, add_shape, add_threads, apply_threads, examples
from caio.refine.networks import save_weights
from caio.refine.pretrain import find_volumes, load_volumes, train
from caio.refine.settings import CascadeConfig, config_to_dict

log = logging.getLogger("caio.refine.pretrain")

EXAMPLES = examples(
    "caio pretrain synth_set -o weights/cascade_init.pt --steps 1000",
    "caio pretrain t1_folder/ --shape 96 112 96 --steps 200 --resume --threads 2",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        help="folder of T1-like volumes on one grid (or a LUMIR-style folder with imagesTr/ "
        "or imagesVal/, e.g. from `caio synth`)",
    )
    add_output(parser, "weights file to write (default weights/cascade_init.pt)", default="weights/cascade_init.pt")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    parser.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate (default 1e-5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the pair draws")
    parser.add_argument("--checkpoint", default=None, help="training checkpoint (default: OUT + '.ckpt')")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    parser.add_argument("--resume", action="store_true", help="continue from the training checkpoint")
    add_shape(parser, "resample every volume to this grid (default: keep; all must then share one)")
    parser.add_argument("--modality", default="0000", help="LUMIR modality code to use ('all': every file)")
    parser.add_argument("--stage-factors", nargs="+", type=int, default=None, help="cascade stage factors")
    parser.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16)")
    add_threads(parser)
    add_device(parser, default="cpu")


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    cfg = CascadeConfig()
    if args.stage_factors:
        n = len(args.stage_factors)  # coarse stages at scale 1, the finest at the default's finest scale
        cfg = dataclasses.replace(
            cfg, stage_factors=tuple(args.stage_factors), residual_scales=(1.0,) * (n - 1) + (cfg.residual_scales[-1],)
        )
    paths = find_volumes(args.data, None if args.modality == "all" else args.modality)
    volumes = [v.to(args.device) for v in load_volumes(paths, args.shape)]
    log.info("pretrain: %d volumes %s from %s", len(volumes), tuple(volumes[0].shape[2:]), args.data)
    out = Path(args.output)
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    nets = train(volumes, cfg, args.steps, args.lr, args.seed, checkpoint, args.checkpoint_every, args.resume)
    save_weights(out, nets.cpu(), cfg.arch, config_to_dict(cfg), half=not args.fp32)
    log.info("pretrain: wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return 0
