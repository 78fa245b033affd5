"""``caio synth``: a synthetic multi-contrast LUMIR-style data set from label maps."""

from __future__ import annotations

import argparse
import logging
import time

from caio.cli.options import add_output, add_shape, examples, output_of
from caio.errors import CaioInputError
from caio.io import LUMIR_SHAPE
from caio.synth.contrast_models import SynthConfig
from caio.synth.generator import CONTRASTS, write_synthetic_dataset

log = logging.getLogger("caio.synth")

EXAMPLES = examples(
    "caio synth --label-maps ../shared/data/synthseg_label_maps -o synth_set --n-subjects 21",
    "caio synth --label-maps labels/ -o small --n-subjects 3 --shape 64 64 64 --pairs cross",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label-maps",
        nargs="+",
        required=True,
        help="label map files or folders (FreeSurfer labels, e.g. shared/data/synthseg_label_maps)",
    )
    add_output(parser, "output folder (imagesVal/, labelsVal/, LUMIR25_dataset.json)", required=True)
    parser.add_argument("--n-subjects", type=int, default=21, help="subjects (pairs per kind = N - 1; default 21)")
    parser.add_argument(
        "--pairs",
        nargs="+",
        choices=("uni", "cross"),
        default=["uni", "cross"],
        help="uni: T1 <- T1; cross: T1 <- other contrast of another subject (default both)",
    )
    parser.add_argument(
        "--contrasts",
        nargs="+",
        default=["t2", "flair", "pd"],
        choices=CONTRASTS[1:],
        help="non-T1 contrasts, cycled over subjects (default t2 flair pd)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical files)")
    add_shape(parser, "output grid (default 160 224 192)", default=LUMIR_SHAPE)
    parser.add_argument("--first-id", type=int, default=5000, help="first 4-digit subject ID (default 5000)")
    parser.add_argument(
        "--max-disp", type=float, default=SynthConfig.max_disp, help="max amplitude of the random deformation in voxels"
    )
    parser.add_argument(
        "--mask-dilation",
        type=int,
        default=0,
        help="grow the brain mask by N voxels (for aseg maps without a CSF label 24)",
    )


def run(args: argparse.Namespace) -> int:
    if any(n < 8 for n in args.shape):
        raise CaioInputError(f"--shape: every size must be >= 8, got {args.shape}")
    start = time.perf_counter()
    config = SynthConfig(max_disp=args.max_disp, brain_dilation=args.mask_dilation)
    path = write_synthetic_dataset(
        output_of(args),
        args.label_maps,
        args.n_subjects,
        args.pairs,
        args.contrasts,
        args.seed,
        args.shape,
        args.first_id,
        config,
    )
    log.info("wrote %s (%d subjects) in %.1f s", path, args.n_subjects, time.perf_counter() - start)
    return 0
