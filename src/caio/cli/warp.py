"""``caio warp --disp D --moving M -o OUT``: apply a caio displacement, or ITK transforms, to an image or labels.

Inputs, one of:

* ``--disp D``: a caio displacement, channel-last ``(D0, D1, D2, 3)`` (or channel-first), ``warped(x) =
  moving(x + u(x))`` (:mod:`caio.spatial`). Two kinds:

  - written by ``caio register``: its header records the moving grid (intent name ``caio-target-vox`` and a
    JSON header extension, :mod:`caio.io.fields`) and ``x + u(x)`` are voxels of that grid. The moving image
    must be on that grid (same shape and affine): anything else is an error naming both grids.
  - a classic field in voxels of its own grid (``caio predict``: identity affine, LUMIR): the moving image is
    sampled in world coordinates through both affines; when it shares the field's grid that is plain array
    indexing, as the LUMIR evaluator does. A moving image of the field's shape with a non-identity affine
    and a field with the identity affine is ambiguous: an error asking for ``--reference FIXED``.

* ``--itk-warp W.nii.gz`` and/or ``--itk-affine A.mat|A.txt``: ITK transforms (:mod:`caio.io.itk`), as
  ``antsApplyTransforms -r FIXED -t W -t A`` applies them (a fixed point goes through ``W``, then ``A``). The
  output grid is the field's; with only ``--itk-affine`` it is ``--reference``'s (required then).

Which grid the output is on: the field's (its file's affine), or ``--reference FIXED`` (same shape required).
Resampling and warping are composed: one interpolation in all. ``--nearest`` warps a label map by nearest
neighbour exactly as the evaluator does (outside -> 0) and keeps the input dtype; otherwise trilinear, float32
output. The output carries the grid's affine.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from caio import spatial
from caio.cli.options import (
    add_max_memory,
    add_output,
    add_threads,
    apply_threads,
    check_warp_memory,
    examples,
    max_memory_of,
    output_of,
)
from caio.errors import CaioInputError
from caio.io import image_data, load_image, same_grid, write_nifti_atomic
from caio.io.fields import read_field
from caio.io.itk import itk_displacement_to_voxels, read_itk_affine, read_itk_displacement
from caio.io.volumes import moving_voxel_coordinates
from caio.transforms import moving_voxel_coordinates_through

log = logging.getLogger(__name__)

TARGET_GRID_ATOL_MM = 1e-3
"""How closely the moving image's affine must match the grid a ``caio register`` field records."""

EXAMPLES = examples(
    "caio warp --disp disp.nii.gz --moving moving.nii.gz -o warped.nii.gz",
    "caio warp --disp disp.nii.gz --moving labels.nii.gz -o labels_warped.nii.gz --nearest",
    "caio warp --itk-warp warp.nii.gz --itk-affine affine.mat --moving moving.nii.gz -o warped.nii.gz",
    "caio warp --itk-affine affine.mat --reference fixed.nii.gz --moving moving.nii.gz -o affine_only.nii.gz",
    "caio warp --disp out/disp_3455_3454.nii.gz --moving LUMIRMRI_3454_0000.nii.gz "
    "--reference LUMIRMRI_3455_0000.nii.gz -o w.nii.gz",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--disp", type=Path, help="caio displacement file (caio register / predict)")
    parser.add_argument("--itk-warp", type=Path, metavar="FILE", help="ITK displacement field (antsRegistration)")
    parser.add_argument("--itk-affine", type=Path, metavar="FILE", help="ITK affine .mat or .txt (antsRegistration)")
    parser.add_argument("--moving", type=Path, required=True, help="image or label map to warp")
    add_output(parser, "warped image, on the displacement's grid (.nii.gz)", type=Path)
    parser.add_argument("--nearest", action="store_true", help="nearest neighbour for label maps; keeps the dtype")
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="FIXED",
        help="fixed image: its affine defines the output grid (default: the displacement file's affine)",
    )
    add_threads(parser)
    add_max_memory(parser, what="a warp")


def _reference_grid(args, shape) -> np.ndarray | None:
    """The ``--reference`` image's affine (``None`` without one); its shape must be ``shape`` when given."""
    if args.reference is None:
        return None
    reference = load_image(args.reference)
    if shape is not None and tuple(reference.shape[:3]) != tuple(shape):
        raise CaioInputError(
            f"{args.reference}: grid {tuple(reference.shape[:3])} differs from the displacement's {tuple(shape)}"
        )
    return np.asarray(reference.affine, np.float64)


def _caio_coordinates(args, moving: np.ndarray, moving_affine: np.ndarray):
    """``(moving voxel coordinates [1, 3, D0, D1, D2], grid shape, grid affine, note)`` of a ``--disp`` file."""
    field = read_field(args.disp)
    shape, grid_affine = field.shape, field.affine
    reference = _reference_grid(args, shape)
    grid_affine = grid_affine if reference is None else reference
    disp = torch.from_numpy(np.ascontiguousarray(field.disp))[None]
    if field.target is not None:
        target = field.target
        if tuple(moving.shape) != tuple(target.shape) or not np.allclose(
            moving_affine, target.affine, atol=TARGET_GRID_ATOL_MM
        ):
            what = "shape" if tuple(moving.shape) != tuple(target.shape) else "affine"
            raise CaioInputError(
                f"{args.disp}: displacement points into a grid of shape {target.shape}, but {args.moving} "
                f"(shape {tuple(moving.shape)}) has another {what}: warp an image on the registered moving grid"
            )
        return spatial.identity_grid(shape, dtype=torch.float64) + disp, shape, grid_affine, "moving voxels"
    if (
        reference is None
        and moving.shape == shape
        and np.allclose(grid_affine, np.eye(4))
        and not np.allclose(moving_affine, np.eye(4), atol=1e-4)
    ):
        raise CaioInputError(
            f"{args.disp}: identity affine (as caio predict writes) but {args.moving} has another; "
            f"pass --reference FIXED to say which grid the field is on"
        )
    array_space = same_grid(moving.shape, moving_affine, shape, grid_affine)
    note = "array space" if array_space else "resampled"
    return moving_voxel_coordinates(shape, grid_affine, moving_affine, disp), shape, grid_affine, note


def _itk_coordinates(args, moving_affine: np.ndarray):
    """The same for ``--itk-warp``/``--itk-affine``: a fixed point goes through the field, then the affine."""
    transform = None if args.itk_affine is None else read_itk_affine(args.itk_affine)
    disp = None
    if args.itk_warp is not None:
        vectors, grid_affine = read_itk_displacement(args.itk_warp)
        shape = tuple(vectors.shape[1:])
        reference = None if args.reference is None else load_image(args.reference)
        if reference is not None and not same_grid(reference.shape[:3], reference.affine, shape, grid_affine):
            raise CaioInputError(
                f"{args.itk_warp}: field grid {shape} differs from {args.reference}'s (shape or affine); "
                f"leave out --reference to use the field's grid"
            )
        disp = torch.from_numpy(itk_displacement_to_voxels(vectors, grid_affine))[None]
    else:
        if args.reference is None:
            raise CaioInputError(f"{args.itk_affine}: an affine alone needs --reference FIXED for the output grid")
        shape = tuple(load_image(args.reference).shape[:3])
        grid_affine = _reference_grid(args, None)
    coords = moving_voxel_coordinates_through(shape, grid_affine, moving_affine, transform, disp)
    return coords, shape, grid_affine, "ITK"


def sample_moving(moving: np.ndarray, coords: torch.Tensor, nearest: bool) -> np.ndarray:
    """``moving`` at voxel coordinates ``coords`` (``[1, 3, D0, D1, D2]``): nearest as the evaluator (outside -> 0,
    dtype kept) or trilinear (outside -> 0, float32)."""
    if nearest:
        offset = coords[0] - spatial.identity_grid(coords.shape[2:], dtype=coords.dtype)[0]
        return spatial.warp_labels_nearest(np.asarray(moving), offset.double().numpy())
    image = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None, None]
    return spatial.sample(image, coords.float(), padding_mode="zeros")[0, 0].numpy().astype(np.float32)


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    output = output_of(args)
    apply_threads(args)
    if not str(output).endswith((".nii", ".nii.gz")):
        raise CaioInputError(f"{output}: output name must end in .nii.gz or .nii")
    itk = args.itk_warp is not None or args.itk_affine is not None
    if args.disp is not None and itk:
        raise CaioInputError(f"{args.disp}: give --disp or the ITK transforms (--itk-warp/--itk-affine), not both")
    if args.disp is None and not itk:
        raise CaioInputError(f"{args.moving}: nothing to apply (give --disp, --itk-warp or --itk-affine)")
    grid_file = args.disp or args.itk_warp or args.reference  # whose header gives the output grid
    if grid_file is not None:
        check_warp_memory(grid_file, args.moving, max_memory_of(args))
    moving_img = load_image(args.moving)
    moving = image_data(moving_img, args.moving, keep_dtype=args.nearest)
    moving_affine = np.asarray(moving_img.affine, np.float64)
    if args.disp is not None:
        coords, shape, grid_affine, note = _caio_coordinates(args, moving, moving_affine)
    else:
        coords, shape, grid_affine, note = _itk_coordinates(args, moving_affine)
    warped = sample_moving(moving, coords, args.nearest)
    write_nifti_atomic(output, warped, grid_affine)
    print(
        f"caio warp: {'nearest' if args.nearest else 'trilinear'} {args.moving} -> {output} "
        f"grid {tuple(shape)} ({note}) {time.monotonic() - start:.1f}s",
        flush=True,
    )
    return 0
