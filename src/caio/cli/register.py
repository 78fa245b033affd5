"""``caio register FIXED MOVING -o disp.nii.gz``: register one pair of your own scans, without a dataset JSON.

Like ``antsRegistration``, ``greedy`` or ``mri_synthmorph register``: the two images may have any shape, voxel
size, orientation and field of view. Three steps:

1. **Affine** (``--affine affine``, the default; ``rigid``; ``none`` keeps the headers' alignment): a world
   transform ``T`` (fixed mm -> moving mm) found by :func:`caio.transforms.register_affine` (centres of mass,
   then rigid and affine over a 6 mm / 3 mm pyramid). Its similarity: squared LNCC with ``--similarity auto``
   (either contrast; the contrast gate cannot judge a pair before it is aligned), else LNCC for ``lncc`` and
   squared LNCC for every cross-contrast choice (:func:`affine_similarity`).
2. **Deformable**: the moving image is resampled through ``T`` onto the fixed image's voxel grid (one trilinear
   interpolation, 0 outside its field of view); with ``auto`` the contrast gate now picks the engine's similarity;
   :func:`caio.engine.register` finds a field ``d`` there.
3. **Outputs**, each written atomically (temporary name, then rename).

``-o``: the whole map as one displacement **in voxels of the moving image**, on the fixed grid: float32
``(D0, D1, D2, 3)``, the fixed image's affine in the header, ``warped(x) = moving(x + u(x))`` indexing the moving
image's own array (component ``c`` along the moving array's axis ``c``). The header records the moving grid
(intent name ``caio-target-vox`` and a JSON header extension, :mod:`caio.io.fields`); ``caio warp --disp`` reads
it. For a pair on one grid with ``--affine none`` the values are those of the fixed-voxel field.

``--itk-affine A.mat|A.txt`` and ``--itk-warp W.nii.gz``: the same map for ANTs, ITK and Slicer
(:mod:`caio.io.itk`): ``antsApplyTransforms -d 3 -i moving -r fixed -t W.nii.gz -t A.mat``.
``--inverse-warp FILE``: the inverse map (fixed voxels, on the moving grid; ``caio warp --disp FILE --moving
fixed`` brings the fixed image onto the moving one); the printed line gives its mean round-trip error (mm).

``--fixed-mask``/``--moving-mask``: only voxels inside both masks (the moving one carried along with the moving
image) enter the similarity, in the affine and the deformable step. A mask on another grid is resampled
through its affine (nearest neighbour). The moving image's field of view is a mask of the deformable step too:
where the affine maps a fixed voxel outside the moving grid, the moving image is 0 (no data), and that edge would
otherwise pull the field harder than any anatomy (a moved scan whose field of view cuts the fixed head: +0.02 Dice).

One line goes to stdout: affine and deformable similarity, iterations, seconds, outputs. Exit status 0, or 1 when
the outputs were written but the engine distrusts them: the field returned is one its safeguard fell back to after
a level made the pair worse by a criterion the level did not optimise (:mod:`caio.engine.safeguard`), or it left
the gate's route; each reason goes to stderr as a ``flagged:`` line (a level undone and then bettered by finer
levels is a ``safeguard:`` note, exit 0). With ``--similarity auto`` an LNCC level that leaves the pair worse than
the start makes the engine register again with MIND-SSC from the start (the gate takes some FLAIR images for T1).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from caio.cli.options import (
    add_budget,
    add_device,
    add_max_memory,
    add_output,
    add_threads,
    apply_threads,
    budget_of,
    check_register_memory,
    examples,
    max_memory_of,
    output_of,
)
from caio.device import resolve_device
from caio.engine import EngineConfig, register
from caio.engine.multiresolution import SIMILARITIES, resolve_similarity
from caio.errors import CaioInputError
from caio.io import field_of_view, image_data, load_image, resample_to_grid, same_grid, write_nifti_atomic
from caio.io.fields import write_target_field
from caio.io.itk import grid_centre, write_itk_affine, write_itk_displacement
from caio.transforms import inverse_field, moving_voxel_displacement, register_affine

log = logging.getLogger(__name__)

AFFINE_MODELS = ("affine", "rigid", "none")
AFFINE_SHARE = 0.3
"""Fraction of the time left that the affine step may use when ``--budget-s`` is given."""

EXAMPLES = examples(
    "caio register fixed.nii.gz moving.nii.gz -o disp.nii.gz",
    "caio register T1.mgz FLAIR.nii.gz -o disp.nii.gz --warped flair_on_t1.nii.gz --similarity mind",
    "caio register T1_tumour.nii.gz FLAIR_tumour.nii.gz -o disp.nii.gz --lesions",
    "caio register f.nii.gz m.nii.gz -o d.nii.gz --itk-affine affine.mat --itk-warp warp.nii.gz",
    "  then: antsApplyTransforms -d 3 -i m.nii.gz -r f.nii.gz -t warp.nii.gz -t affine.mat -o w.nii.gz",
    "caio register f.nii.gz m.nii.gz -o d.nii.gz --fixed-mask brain.nii.gz --inverse-warp inv.nii.gz",
    "caio register f.nii.gz m.nii.gz -o d.nii.gz --affine rigid --budget-s 60 --device cpu --threads 2",
    "caio warp --disp disp.nii.gz --moving labels.nii.gz -o labels_on_fixed.nii.gz --nearest",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fixed", type=Path, help="fixed image (.nii, .nii.gz, .mgz); defines the output grid")
    parser.add_argument("moving", type=Path, help="moving image, any shape and orientation")
    add_output(
        parser,
        "displacement file on the fixed grid: voxels of the moving image, float32 (D0, D1, D2, 3), fixed affine",
        type=Path,
    )
    parser.add_argument("--warped", type=Path, metavar="FILE", help="also write the warped moving image here")
    parser.add_argument(
        "--affine",
        choices=AFFINE_MODELS,
        default="affine",
        help="linear step before the deformable one: affine (12 parameters, default) | rigid (6) | none (headers)",
    )
    parser.add_argument("--itk-affine", type=Path, metavar="FILE", help="write the affine as an ITK .mat or .txt")
    parser.add_argument(
        "--itk-warp", type=Path, metavar="FILE", help="write the deformable part as an ITK displacement field (.nii.gz)"
    )
    parser.add_argument(
        "--inverse-warp", type=Path, metavar="FILE", help="write the inverse map (fixed voxels, on the moving grid)"
    )
    parser.add_argument("--fixed-mask", type=Path, metavar="FILE", help="only this region of the fixed image counts")
    parser.add_argument("--moving-mask", type=Path, metavar="FILE", help="only this region of the moving image counts")
    parser.add_argument(
        "--similarity",
        choices=SIMILARITIES,
        default="auto",
        help="auto (the contrast gate picks lncc or mind) | lncc (same contrast) | mind (cross contrast) | lncc2 | "
        "remap | cross (remap where the intensity map explains the fixed image, mind elsewhere)",
    )
    parser.add_argument(
        "--lesions",
        action="store_true",
        help="the images hold pathology seen in one contrast only (tumour, oedema): robust MIND-SSC without "
        "intensity remapping or a squared-LNCC lead (EngineConfig.for_lesions); with --similarity auto it means "
        "--similarity mind",
    )
    add_budget(parser, help="seconds for the whole pair, reading included (default: no limit)")
    add_device(parser)
    add_threads(parser)
    add_max_memory(parser)


def affine_similarity(similarity: str) -> str:
    """The affine step's similarity for a (resolved) engine similarity: ``lncc`` for a same-contrast pair,
    squared LNCC for every cross-contrast one (``lncc2``, ``mind``, ``remap``, ``cross``).

    Squared LNCC beat MIND-SSC for the affine step on the cross-contrast test pair (SPM avg152 T1 fixed, T2
    moved by a known transform onto an LPS grid, 4 mm): mean error at the brain box's corners 0.65 mm (rigid)
    and 1.6 mm (affine) against 3.3 and 3.6 mm for MIND-SSC (radius 1, dilation 2; 2.3 mm with dilation 1)."""
    return "lncc" if similarity == "lncc" else "lncc2"


def _check_outputs(args: argparse.Namespace, output: Path) -> None:
    """Every output name has a usable suffix and an existing folder (before any work is done)."""
    names = [(output, (".nii", ".nii.gz")), (args.warped, (".nii", ".nii.gz"))]
    names += [(args.itk_warp, (".nii", ".nii.gz")), (args.inverse_warp, (".nii", ".nii.gz"))]
    names += [(args.itk_affine, (".mat", ".txt"))]
    for path, suffixes in names:
        if path is None:
            continue
        if not str(path).endswith(suffixes):
            raise CaioInputError(f"{path}: output name must end in {' or '.join(suffixes)}")
        if not Path(path).parent.is_dir():
            raise CaioInputError(f"{Path(path).parent}: output folder does not exist")
    if args.itk_warp is not None and args.itk_affine is None and args.affine != "none":
        log.warning("%s holds the deformable part only: also write --itk-affine to apply it elsewhere", args.itk_warp)


def read_mask(path: Path | None, shape, affine: np.ndarray, image_path: Path) -> np.ndarray | None:
    """A mask for the image ``image_path`` (``shape``, ``affine``): non-zero voxels, on the image's grid.

    The same shape with the same affine (or an identity affine, as tools that drop headers write) is taken
    voxel for voxel; another grid is resampled through both affines (nearest neighbour).

    Raises:
        CaioInputError: unreadable, empty, of another shape with an identity affine (nothing maps it), or
            not overlapping the image.
    """
    if path is None:
        return None
    img = load_image(path, "mask")
    data = image_data(img, path, keep_dtype=True)
    if not np.any(data):
        raise CaioInputError(f"{path}: empty mask (no non-zero voxel)")
    identity = np.allclose(img.affine, np.eye(4), atol=1e-6)
    if tuple(data.shape) == tuple(shape) and (identity or same_grid(data.shape, img.affine, shape, affine)):
        return data != 0
    if identity and not np.allclose(affine, np.eye(4), atol=1e-6):
        raise CaioInputError(
            f"{path}: mask of shape {tuple(data.shape)} with an identity affine, {image_path} has shape "
            f"{tuple(shape)}: no affine maps it (give the mask its image's grid or header)"
        )
    mask = resample_to_grid((data != 0).astype(np.uint8), img.affine, shape, affine, nearest=True) != 0
    if not mask.any():
        raise CaioInputError(f"{path}: mask does not overlap {image_path} in world coordinates (check both affines)")
    log.info("%s resampled onto the grid of %s", path, image_path)
    return mask


def _similarity_weight(fixed_shape, f_aff, moving_shape, through, fixed_mask, moving_mask) -> np.ndarray | None:
    """Where the deformable step's similarity looks, on the fixed grid (``None``: everywhere): inside the fixed
    mask, the moving mask carried through the affine, and the moving image's field of view (where a fixed voxel
    maps outside the moving grid the moving image is padding, and its edge would pull the field)."""
    weight = fixed_mask
    if moving_mask is not None:
        carried = resample_to_grid(moving_mask.astype(np.uint8), through, fixed_shape, f_aff, nearest=True) != 0
        weight = carried if weight is None else weight & carried
    inside = field_of_view(moving_shape, through, fixed_shape, f_aff)
    if not inside.all():
        weight = inside if weight is None else weight & inside
    return weight


def _deformable(fixed, moving_on_fixed, weight, similarity, deadline, device, reroute: bool, config=None):
    """The engine on the fixed grid: ``[1, 3, D0, D1, D2]`` fixed-voxel field and its trace."""
    fixed_t = torch.from_numpy(np.ascontiguousarray(fixed))[None, None]
    moving_t = torch.from_numpy(np.ascontiguousarray(moving_on_fixed))[None, None]
    if weight is not None:
        w = torch.from_numpy(weight.astype(np.float32))[None, None]
        fixed_t, moving_t = fixed_t * w, moving_t * w
    disp, trace = register(
        fixed_t, moving_t, similarity=similarity, deadline=deadline, device=device, reroute=reroute, config=config
    )
    return disp.detach().float().cpu(), trace


def _write_outputs(args, output, fixed_img, fixed, moving_img, moving, transform, disp) -> tuple[list[str], str]:
    """Every requested file; returns the names written and a note for the printed line."""
    f_aff, m_aff = np.asarray(fixed_img.affine, np.float64), np.asarray(moving_img.affine, np.float64)
    field = moving_voxel_displacement(fixed.shape, f_aff, m_aff, transform, disp)
    write_target_field(output, field[0].numpy(), f_aff, moving.shape, m_aff)
    written, note = [str(output)], ""
    if args.warped is not None:
        warped = resample_to_grid(moving, f_aff, fixed.shape, f_aff, disp=field)  # x + u(x) indexes moving
        write_nifti_atomic(args.warped, warped.astype(np.float32), f_aff)
        written.append(str(args.warped))
    if args.itk_affine is not None:
        write_itk_affine(args.itk_affine, transform, grid_centre(fixed.shape, f_aff))
        written.append(str(args.itk_affine))
    if args.itk_warp is not None:
        write_itk_displacement(args.itk_warp, disp[0].numpy(), f_aff)
        written.append(str(args.itk_warp))
    if args.inverse_warp is not None:
        inverse, error = inverse_field(fixed.shape, f_aff, moving.shape, m_aff, transform, disp)
        write_target_field(args.inverse_warp, inverse[0].numpy(), m_aff, fixed.shape, f_aff)
        written.append(str(args.inverse_warp))
        note = f" inverse_error_mm={error:.3f}"
    return written, note


def _gate(fixed: np.ndarray, moving_on_fixed: np.ndarray) -> str:
    """The contrast gate's engine similarity for the pair as aligned so far."""
    moving_t = torch.from_numpy(np.ascontiguousarray(moving_on_fixed))[None, None]
    return resolve_similarity("auto", torch.from_numpy(np.ascontiguousarray(fixed))[None, None], moving_t)


def _affine_step(args, fixed, f_aff, moving, m_aff, masks, deadline) -> tuple[np.ndarray, str, str | None]:
    """``(world transform, note for the printed line, engine similarity or None)``.

    With ``--similarity auto`` the contrast gate cannot judge a pair that is still misaligned, so the affine step
    runs first with squared LNCC (either contrast) and the gate looks at the affinely aligned pair (``None`` is
    returned: the caller gates). Otherwise the named similarity decides the affine one (:func:`affine_similarity`).
    """
    similarity = None if args.similarity == "auto" else args.similarity
    if args.affine == "none":
        return np.eye(4), "affine=none", similarity
    kind = "lncc2" if similarity is None else affine_similarity(similarity)
    affine_deadline = None if deadline is None else time.monotonic() + AFFINE_SHARE * (deadline - time.monotonic())
    transform, trace = register_affine(
        fixed, f_aff, moving, m_aff, model=args.affine, similarity=kind,
        fixed_mask=masks[0], moving_mask=masks[1], deadline=affine_deadline,
    )  # fmt: skip
    note = (
        f"affine={args.affine} {trace.similarity} {trace.before:.3f}->{trace.after:.3f} "
        f"({trace.iterations} it, {trace.seconds:.1f}s{', deadline' if trace.stopped_by_deadline else ''})"
    )
    return transform, note, similarity


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    if args.lesions and args.similarity == "auto":  # lesions come with T2 / FLAIR, which the gate may take for T1
        args = argparse.Namespace(**{**vars(args), "similarity": "mind"})
    output = output_of(args)
    budget = budget_of(args)
    apply_threads(args)
    device = resolve_device(args.device)
    _check_outputs(args, output)
    check_register_memory(args.fixed, args.moving, max_memory_of(args))
    fixed_img, moving_img = load_image(args.fixed), load_image(args.moving)
    fixed, moving = image_data(fixed_img, args.fixed), image_data(moving_img, args.moving)
    f_aff, m_aff = np.asarray(fixed_img.affine, np.float64), np.asarray(moving_img.affine, np.float64)
    fixed_mask = read_mask(args.fixed_mask, fixed.shape, f_aff, args.fixed)
    moving_mask = read_mask(args.moving_mask, moving.shape, m_aff, args.moving)
    deadline = None if budget is None else start + budget
    if not np.any(resample_to_grid(moving, m_aff, fixed.shape, f_aff)):
        raise CaioInputError(f"{args.moving}: does not overlap {args.fixed} in world coordinates (check both affines)")
    masks = (fixed_mask, moving_mask)
    transform, affine_note, similarity = _affine_step(args, fixed, f_aff, moving, m_aff, masks, deadline)
    through = np.linalg.inv(transform) @ m_aff  # moving's affine as seen from the fixed world
    moving_on_fixed = resample_to_grid(moving, through, fixed.shape, f_aff)
    if not np.any(moving_on_fixed):
        raise CaioInputError(f"{args.moving}: does not overlap {args.fixed} after the affine step (check both affines)")
    similarity = similarity or _gate(fixed, moving_on_fixed)
    weight = _similarity_weight(fixed.shape, f_aff, moving.shape, through, fixed_mask, moving_mask)
    reroute = args.similarity == "auto"  # the gate chose: the engine may overrule a same-contrast call
    config = EngineConfig.for_lesions() if args.lesions else None
    disp, trace = _deformable(fixed, moving_on_fixed, weight, similarity, deadline, device, reroute, config)
    written, note = _write_outputs(args, output, fixed_img, fixed, moving_img, moving, transform, disp)
    print(
        f"caio register: {affine_note} similarity={trace.similarity} iterations={trace.iterations} "
        f"seconds={time.monotonic() - start:.1f}{note}"
        f"{' (stopped by deadline)' if trace.stopped_by_deadline else ''} -> {', '.join(written)}",
        flush=True,
    )
    return _flagged(trace)


def _flagged(trace) -> int:
    """1 when the engine distrusts its result (:attr:`caio.engine.trace.EngineTrace.distrusted`), else 0; what the
    safeguard did goes to stderr, as ``flagged:`` lines then, else as ``safeguard:`` notes."""
    kind = "flagged" if trace.distrusted else "safeguard"
    for note in trace.safeguard_notes:
        print(f"caio register: {kind}: {note}", file=sys.stderr)
    return 1 if trace.distrusted else 0
