"""``caio gate``: the contrast gate's score and decision for one image pair."""

from __future__ import annotations

import argparse
import math

import torch

from caio.cli.options import examples
from caio.contrast.gate import GateConfig, decide
from caio.errors import CaioInputError
from caio.io import read_volume

EXAMPLES = examples(
    "caio gate fixed_T1.nii.gz moving_T2.nii.gz", "caio gate F.nii.gz M.nii.gz --threshold 0.4 --factor 4"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GateConfig()
    parser.add_argument("fixed", help="fixed image (NIfTI/MGH)")
    parser.add_argument("moving", help="moving image, on the same grid as the fixed one")
    parser.add_argument(
        "--threshold",
        type=float,
        default=defaults.threshold,
        help=f"scores below it are cross-contrast (default {defaults.threshold})",
    )
    parser.add_argument(
        "--factor",
        type=int,
        default=defaults.factor,
        help=f"downsampling block size in voxels (default {defaults.factor})",
    )
    parser.add_argument(
        "--sigma",
        type=float,
        default=defaults.sigma_vox,
        help=f"LNCC window sigma in low-resolution voxels (default {defaults.sigma_vox})",
    )


def run(args: argparse.Namespace) -> int:
    if args.factor < 1 or args.sigma <= 0:
        raise CaioInputError(f"--factor must be >= 1 and --sigma > 0, got {args.factor} and {args.sigma}")
    fixed = read_volume(args.fixed, expected_shape=None)
    moving = read_volume(args.moving, expected_shape=None)
    if fixed.shape != moving.shape:
        raise CaioInputError(f"{args.moving}: shape {moving.shape} differs from the fixed image's {fixed.shape}")
    for path, volume in ((args.fixed, fixed), (args.moving, moving)):
        if float(volume.min()) < 0:
            raise CaioInputError(f"{path}: negative intensities; the gate expects background 0 and values >= 0")
    cfg = GateConfig(factor=args.factor, sigma_vox=args.sigma, threshold=args.threshold)
    decision = decide(torch.from_numpy(fixed), torch.from_numpy(moving), cfg)
    if math.isnan(decision.score):
        raise CaioInputError(f"{args.moving}: no voxel is non-zero in both images; cannot score the pair")
    label = "cross-contrast" if decision.cross_contrast else "same-contrast"
    tissue = "" if math.isnan(decision.tissue) else f" tissue={decision.tissue:.4f}"
    ambiguous = " (ambiguous: registered as cross-contrast)" if decision.ambiguous else ""
    print(f"score={decision.score:.4f}{tissue} threshold={cfg.threshold:g} decision={label}{ambiguous}")
    return 0
