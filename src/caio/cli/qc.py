"""``caio qc``: quality-control pictures of one registration (:func:`caio.qc.write_qc`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from caio.cli.options import add_output, examples, output_of
from caio.errors import CaioInputError
from caio.io import read_displacement, read_volume
from caio.qc import write_qc

EXAMPLES = examples(
    "caio qc --fixed F.nii.gz --moving M.nii.gz --disp disp_F_M.nii.gz -o qc/",
    "caio qc --fixed F.nii.gz --moving M.nii.gz --disp D.nii.gz --fixed-labels F_seg.nii.gz -o qc/",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", required=True, help="fixed image (NIfTI)")
    parser.add_argument("--moving", required=True, help="moving image on the same grid")
    parser.add_argument("--disp", required=True, help="displacement disp_<F>_<M>.nii.gz (voxels, fixed grid)")
    add_output(parser, "output folder for the PNGs", required=True)
    parser.add_argument("--fixed-labels", default=None, help="optional fixed label map (boundaries drawn on warped)")
    parser.add_argument("--name", default=None, help="file name prefix (default: the displacement file name)")


def run(args: argparse.Namespace) -> int:
    fixed = read_volume(args.fixed, expected_shape=None)
    moving = read_volume(args.moving, expected_shape=fixed.shape)
    disp = read_displacement(args.disp, expected_shape=fixed.shape)
    labels = None if args.fixed_labels is None else read_volume(args.fixed_labels, expected_shape=fixed.shape)
    name = args.name or Path(args.disp).name.removesuffix(".gz").removesuffix(".nii")
    out = Path(output_of(args))
    if out.exists() and not out.is_dir():
        raise CaioInputError(f"{out}: output path exists and is not a folder")
    write_qc(fixed, moving, disp, out, name, fixed_labels=labels)  # logs the written paths
    return 0
