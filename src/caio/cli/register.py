"""``caio register FIXED MOVING -o disp.nii.gz``: register one pair of images, without a dataset JSON.

Like ``greedy``, ``antsRegistration`` or ``mri_synthmorph register``: the two images may have any
shape, voxel size and orientation. The moving image is first resampled onto the **fixed image's
voxel grid** in world coordinates (both NIfTI/MGH affines, one trilinear interpolation, 0 outside
its field of view), then :func:`caio.engine.register` runs on that grid.

Output (``-o``): the displacement **in voxels of the fixed grid**, float32, channel-last
``(D0, D1, D2, 3)`` ``.nii.gz``, written atomically, with the **fixed image's affine** in its header
(so viewers overlay it on the fixed image). Component ``c`` moves along array axis ``c`` of the
fixed image, and ``warped(x) = moving_on_fixed_grid(x + u(x))`` (:mod:`caio.spatial`). This
differs from ``caio predict``, whose LUMIR outputs carry the **identity** affine as the challenge
asks (the evaluator ignores affines and works in array indices). ``caio warp`` applies either.

``--warped`` also writes the moving image warped into the fixed grid (float32, fixed affine).
One line goes to stdout: similarity, iterations, seconds, outputs.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from caio.cli.options import (
    add_budget,
    add_device,
    add_output,
    add_threads,
    apply_threads,
    budget_of,
    examples,
    output_of,
)
from caio.device import resolve_device
from caio.engine import register
from caio.engine.api import SIMILARITIES
from caio.errors import CaioInputError
from caio.io import image_data, load_image, resample_to_grid, same_grid, write_displacement, write_nifti_atomic

log = logging.getLogger(__name__)

EXAMPLES = examples(
    "caio register fixed.nii.gz moving.nii.gz -o disp.nii.gz",
    "caio register T1.mgz FLAIR.nii.gz -o disp.nii.gz --warped flair_on_t1.nii.gz --similarity mind",
    "caio register f.nii.gz m.nii.gz -o d.nii.gz --budget-s 60 --device cpu --threads 2",
    "caio warp --disp disp.nii.gz --moving labels.nii.gz -o labels_on_fixed.nii.gz --nearest",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fixed", type=Path, help="fixed image (.nii, .nii.gz, .mgz); defines the output grid")
    parser.add_argument("moving", type=Path, help="moving image, any shape and orientation")
    add_output(
        parser,
        "displacement file: voxels of the fixed grid, float32 (D0, D1, D2, 3), fixed image's affine",
        type=Path,
    )
    parser.add_argument("--warped", type=Path, metavar="FILE", help="also write the warped moving image here")
    parser.add_argument(
        "--similarity",
        choices=SIMILARITIES,
        default="auto",
        help="auto (the contrast gate picks lncc or mind) | lncc (same contrast) | mind (cross contrast) | lncc2 | "
        "remap | cross (remap where the intensity map explains the fixed image, mind elsewhere)",
    )
    add_budget(parser, help="seconds for the whole pair, reading included (default: no limit)")
    add_device(parser)
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    output = output_of(args)
    budget = budget_of(args)
    apply_threads(args)
    device = resolve_device(args.device)
    for path in (output, args.warped):
        if path is not None and not str(path).endswith((".nii", ".nii.gz")):
            raise CaioInputError(f"{path}: output name must end in .nii.gz or .nii")
        if path is not None and not Path(path).parent.is_dir():
            raise CaioInputError(f"{Path(path).parent}: output folder does not exist")
    fixed_img, moving_img = load_image(args.fixed), load_image(args.moving)
    fixed = image_data(fixed_img, args.fixed)
    moving_raw = image_data(moving_img, args.moving)
    resampled = not same_grid(fixed.shape, fixed_img.affine, moving_raw.shape, moving_img.affine)
    moving = moving_raw
    if resampled:
        moving = resample_to_grid(moving_raw, moving_img.affine, fixed.shape, fixed_img.affine)
        if not np.any(moving):
            raise CaioInputError(
                f"{args.moving}: does not overlap {args.fixed} in world coordinates (check both affines)"
            )
        log.info("%s resampled onto the grid of %s %s", args.moving, args.fixed, fixed.shape)
    deadline = None if budget is None else start + budget
    fixed_t = torch.from_numpy(fixed)[None, None]
    moving_t = torch.from_numpy(np.ascontiguousarray(moving))[None, None]
    disp, trace = register(fixed_t, moving_t, similarity=args.similarity, deadline=deadline, device=device)
    disp = disp.detach().float().cpu()
    write_displacement(output, disp[0].numpy(), affine=fixed_img.affine)
    written = [str(output)]
    if args.warped is not None:
        warped = resample_to_grid(moving_raw, moving_img.affine, fixed.shape, fixed_img.affine, disp=disp)
        write_nifti_atomic(args.warped, warped.astype(np.float32), fixed_img.affine)
        written.append(str(args.warped))
    print(
        f"caio register: similarity={trace.similarity} iterations={trace.iterations} "
        f"seconds={time.monotonic() - start:.1f}{' (resampled)' if resampled else ''}"
        f"{' (stopped by deadline)' if trace.stopped_by_deadline else ''} -> {', '.join(written)}",
        flush=True,
    )
    return 0
