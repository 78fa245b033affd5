"""``caio warp --disp D --moving M -o OUT``: apply a caio displacement to an image or a label map.

The displacement is caio's: voxels of the fixed grid, channel-last ``(D0, D1, D2, 3)`` (or
channel-first), ``warped(x) = moving(x + u(x))`` (:mod:`caio.spatial`), as written by
``caio register`` (fixed image's affine) or ``caio predict`` (identity affine, LUMIR).

Which grid the field is on: that of ``--reference FIXED`` when given (its shape must match the
field), else the displacement file's own affine (``caio register`` stores the fixed image's
there). The moving image is sampled in world coordinates through both affines; when it shares
the field's grid (same shape and affine) that is plain array indexing, as the LUMIR evaluator
does. Resampling and warping are composed: one interpolation in all.

``caio predict`` writes the identity affine (LUMIR). A moving image of the field's shape whose
affine is not the identity is then ambiguous (LUMIR array space, or a different grid?): that is an
error asking for ``--reference FIXED``, never a silent guess.

``--nearest`` warps a label map by nearest neighbour exactly as the evaluator does (outside -> 0)
and keeps the input dtype; otherwise trilinear, float32 output. The output carries the grid's affine.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from caio.cli.options import add_output, add_threads, apply_threads, examples, output_of
from caio.errors import CaioInputError
from caio.io import image_data, load_image, read_displacement, resample_to_grid, same_grid, write_nifti_atomic

log = logging.getLogger(__name__)

EXAMPLES = examples(
    "caio warp --disp disp.nii.gz --moving moving.nii.gz -o warped.nii.gz",
    "caio warp --disp disp.nii.gz --moving labels.nii.gz -o labels_warped.nii.gz --nearest",
    "caio warp --disp out/disp_3455_3454.nii.gz --moving LUMIRMRI_3454_0000.nii.gz "
    "--reference LUMIRMRI_3455_0000.nii.gz -o w.nii.gz",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--disp", type=Path, required=True, help="displacement file (caio register / predict)")
    parser.add_argument("--moving", type=Path, required=True, help="image or label map to warp")
    add_output(parser, "warped image, on the displacement's grid (.nii.gz)", type=Path)
    parser.add_argument("--nearest", action="store_true", help="nearest neighbour for label maps; keeps the dtype")
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="FIXED",
        help="fixed image: its affine defines the field's grid (default: the displacement file's affine)",
    )
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    output = output_of(args)
    apply_threads(args)
    if not str(output).endswith((".nii", ".nii.gz")):
        raise CaioInputError(f"{output}: output name must end in .nii.gz or .nii")
    disp = read_displacement(args.disp)  # (3, D0, D1, D2) float64
    shape = disp.shape[1:]
    grid_affine = load_image(args.disp, "displacement").affine
    if args.reference is not None:
        reference = load_image(args.reference)
        if tuple(reference.shape[:3]) != tuple(shape):
            raise CaioInputError(
                f"{args.reference}: grid {tuple(reference.shape[:3])} differs from the displacement's {tuple(shape)}"
            )
        grid_affine = reference.affine
    moving_img = load_image(args.moving)
    moving = image_data(moving_img, args.moving, keep_dtype=args.nearest)
    if (
        args.reference is None
        and moving.shape == shape
        and np.allclose(grid_affine, np.eye(4))
        and not np.allclose(moving_img.affine, np.eye(4), atol=1e-4)
    ):
        raise CaioInputError(
            f"{args.disp}: identity affine (as caio predict writes) but {args.moving} has another; "
            f"pass --reference FIXED to say which grid the field is on"
        )
    array_space = same_grid(moving.shape, moving_img.affine, shape, grid_affine)
    if not array_space:
        log.info("%s resampled in world coordinates onto the displacement's grid %s", args.moving, shape)
    disp_t = torch.from_numpy(np.ascontiguousarray(disp))[None]
    warped = resample_to_grid(moving, moving_img.affine, shape, grid_affine, disp=disp_t, nearest=args.nearest)
    if not args.nearest:
        warped = warped.astype(np.float32)
    write_nifti_atomic(output, warped, grid_affine)
    print(
        f"caio warp: {'nearest' if args.nearest else 'trilinear'} {args.moving} -> {output} "
        f"grid {tuple(shape)}{'' if array_space else ' (resampled)'} {time.monotonic() - start:.1f}s",
        flush=True,
    )
    return 0
