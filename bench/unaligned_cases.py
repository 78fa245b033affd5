"""The cases of :mod:`bench.unaligned`: unaligned pairs built once into ``bench/out/cache/unaligned_*``.

Each moving image (and its labels) gets a random affine transform ``M`` in world space (rotation up to
``--max-angle`` degrees about a random axis, translation up to ``--max-shift`` mm, scaling within ±10 % per axis,
shear up to 0.05) and is put on another grid through its header: voxels ``factor`` times the original size
(1.2 for the 1 mm sets, ``--voxel-factor`` for IXI), the first axis flipped (LPS-like), the field of view fitted
around the moved head. Labels are carried by nearest neighbour, the image linearly.

A case folder holds ``fixed.nii.gz``, ``fixed_seg.nii.gz``, ``moving.nii.gz``, ``moving_seg.nii.gz`` and
``meta.json``: ``name``, ``set``, ``seed``, ``cross``, ``transform`` (``M``, 4x4 RAS: original moving world ->
moved world) and ``source_image``/``source_labels``: a T1 of the *moving* subject on its original grid. That
T1 against ``moving.nii.gz`` is a pair with a known answer (``T = M``, fixed world -> moving world): the
affine's corner error is measured on it.

Sets (``--sets``):

* ``real1mm``: test_data 3455 (fixed) <- 3454 (moving), aseg labels (1 mm, skull-stripped);
* ``cross``: test_data 4024 (T1, fixed) <- 4033_0001 (T2-like drawn from 3454's labels), aseg labels;
* ``ixi``: NiChart IXI 2 mm full-head T1 pairs (subject 2k fixed, 2k+1 moving, from the 21st subject on),
  DLMUSE labels;
* ``ixicross``: IXI T1 <- a T2-like / FLAIR-like (alternating) image drawn from the moving subject's DLMUSE
  labels by :func:`caio.synth.contrast_models.synthesize_image` (as :mod:`bench.make_lumir_like` does: DLMUSE ->
  FreeSurfer-like ids, brain mask = labels grown by one voxel, closed, filled), subjects from the 37th on (never
  used by ``ixi`` with up to 8 pairs). The synthetic image has no skull, so the fixed T1 (and the known-answer
  pair's T1, ``source.nii.gz`` in the case folder) is skull-stripped with the same mask of its own labels: a
  full-head T1 <- brain-only T2-like pair failed for every tool (affine corner errors 36-59 mm, Dice < 0.06).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.common import IXI, OUT, TEST_DATA, ixi_subjects

CACHE = OUT / "cache"
SETS = ("real1mm", "cross", "ixi", "ixicross")
IXI_FIRST = 20
"""The first 20 IXI subjects (sorted) are reserved for other sets."""
IXI_CROSS_FIRST = 36
"""First subject index of ``ixicross``: after the 16 subjects of 8 ``ixi`` pairs."""
CROSS_CONTRASTS = ("t2", "flair")


def random_world_transform(
    rng: np.random.Generator, max_angle: float, max_shift: float, centre: np.ndarray
) -> np.ndarray:
    """4x4 RAS transform about ``centre`` (mm): rotation, scaling, shear, translation as the module docstring says."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(-max_angle, max_angle))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    shear = np.eye(3)
    shear[0, 1], shear[1, 2] = rng.uniform(-0.05, 0.05, size=2)
    linear = rotation @ shear @ np.diag(rng.uniform(0.9, 1.1, size=3))
    shift = rng.normal(size=3)
    shift *= rng.uniform(0, max_shift) / np.linalg.norm(shift)
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre - linear @ centre + shift
    return out


def moved_and_regridded(
    image: nib.Nifti1Image, labels: np.ndarray, transform: np.ndarray, factor: float
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The image and labels moved by ``transform`` (world) onto a new grid: voxels ``factor`` times larger, axis 0
    flipped, the field of view around the moved content. Returns ``(image, labels)`` as NIfTI images."""
    from scipy import ndimage

    data = np.asarray(image.dataobj, np.float32)
    corners = np.array(
        [[i, j, k, 1] for i in (0, data.shape[0]) for j in (0, data.shape[1]) for k in (0, data.shape[2])]
    )
    world = (transform @ image.affine @ corners.T)[:3]
    low, high = world.min(axis=1), world.max(axis=1)
    spacing = np.abs(np.linalg.svd(image.affine[:3, :3], compute_uv=False)).mean() * factor
    shape = tuple(int(math.ceil(n)) for n in (high - low) / spacing)
    new_affine = np.diag([-spacing, spacing, spacing, 1.0])
    new_affine[:3, 3] = [high[0], low[1], low[2]]  # axis 0 runs from right to left (flipped)
    to_old = np.linalg.inv(image.affine) @ np.linalg.inv(transform) @ new_affine
    coords = np.indices(shape, dtype=np.float32).reshape(3, -1)
    old = (to_old[:3, :3] @ coords + to_old[:3, 3:]).reshape(3, *shape)
    moved = ndimage.map_coordinates(data, old, order=1, cval=0.0).astype(np.float32)
    moved_labels = ndimage.map_coordinates(labels, old, order=0, cval=0).astype(labels.dtype)
    return nib.Nifti1Image(moved, new_affine), nib.Nifti1Image(moved_labels, new_affine)


def stripped_t1(subject: str) -> nib.Nifti1Image:
    """An IXI subject's T1 times the brain mask of its DLMUSE labels (:func:`bench.make_lumir_like.brain_mask_2mm`)."""
    from bench.make_lumir_like import brain_mask_2mm

    t1, labels = (nib.load(str(p)) for p in _ixi_paths(subject))
    mask = brain_mask_2mm(np.round(np.asarray(labels.dataobj)).astype(np.int32))
    return nib.Nifti1Image(np.asarray(t1.dataobj, np.float32) * mask, t1.affine)


def synthetic_contrast(labels_path: Path, contrast: str, seed: int) -> nib.Nifti1Image:
    """A ``contrast`` (t2, flair) image drawn from an IXI subject's DLMUSE labels, on the labels' grid (0..255,
    0 outside the brain mask), as :mod:`bench.make_lumir_like` draws its cross-contrast images."""
    import torch

    from bench.make_lumir_like import brain_mask_2mm, dlmuse_to_freesurfer, read_muse_names, to_freesurfer
    from caio.synth.contrast_models import SynthConfig, generator_for, synthesize_image

    torch.set_num_threads(2)
    img = nib.load(str(labels_path))
    labels = np.round(np.asarray(img.dataobj)).astype(np.int32)
    fs = to_freesurfer(labels, dlmuse_to_freesurfer(read_muse_names()))
    voxel = tuple(float(v) for v in np.linalg.norm(img.affine[:3, :3], axis=0))
    synth = synthesize_image(
        fs, contrast, generator_for(seed, 0), SynthConfig(thick_slice_prob=0.0), mask=brain_mask_2mm(labels),
        voxel_mm=voxel,
    )  # fmt: skip
    return nib.Nifti1Image(synth[0, 0].numpy().astype(np.float32), img.affine)


def build_case(
    name: str,
    set_name: str,
    fixed: tuple[nib.Nifti1Image | Path, Path],
    moving: tuple[nib.Nifti1Image | Path, Path],
    source: tuple[Path, Path],
    args: argparse.Namespace,
    seed: int,
) -> Path:
    """The case folder ``CACHE/unaligned_<name>_s<seed>`` (built unless its ``meta.json`` exists; the ``set``
    and ``source_*`` keys are added to an older one). ``fixed``/``moving``/``source``: ``(image, labels)``."""
    case = CACHE / f"unaligned_{name}_s{seed}"
    extra = {"set": set_name, "source_image": str(source[0]), "source_labels": str(source[1])}
    if (case / "meta.json").is_file():
        meta = json.loads((case / "meta.json").read_text())
        if any(key not in meta for key in extra):
            (case / "meta.json").write_text(json.dumps({**meta, **extra}))
        return case
    case.mkdir(parents=True, exist_ok=True)
    image = moving[0] if isinstance(moving[0], nib.Nifti1Image) else nib.load(str(moving[0]))
    labels = np.asarray(nib.load(str(moving[1])).dataobj).astype(np.int32)
    centre = (image.affine @ np.array([*(np.array(image.shape[:3]) / 2), 1.0]))[:3]
    transform = random_world_transform(np.random.default_rng(seed), args.max_angle, args.max_shift, centre)
    factor = args.voxel_factor if set_name.startswith("ixi") else 1.2
    moved, moved_labels = moved_and_regridded(image, labels, transform, factor)
    nib.save(fixed[0] if isinstance(fixed[0], nib.Nifti1Image) else nib.load(str(fixed[0])), str(case / "fixed.nii.gz"))
    nib.save(nib.load(str(fixed[1])), str(case / "fixed_seg.nii.gz"))
    nib.save(moved, str(case / "moving.nii.gz"))
    nib.save(moved_labels, str(case / "moving_seg.nii.gz"))
    meta = {"name": name, "seed": seed, "cross": "cross" in set_name, "transform": transform.tolist(), **extra}
    (case / "meta.json").write_text(json.dumps(meta))
    return case


def _ixi_paths(subject: str) -> tuple[Path, Path]:
    return IXI / "T1" / f"{subject}_T1.nii.gz", IXI / "DLMUSE" / f"{subject}_T1_DLMUSE.nii.gz"


def _test_data_case(set_name: str, args: argparse.Namespace) -> list[Path]:
    """``real1mm`` or ``cross`` (4033_0001 was drawn from 3454's labels: 3454_0000 is its T1 on the same grid)."""
    images, labels = TEST_DATA / "imagesVal", TEST_DATA / "labelsVal"
    fixed, moving = ("3455_0000", "3454_0000") if set_name == "real1mm" else ("4024_0000", "4033_0001")
    f, m, s = (f"LUMIRMRI_{n}.nii.gz" for n in (fixed, moving, "3454_0000"))
    pair = (images / f, labels / f), (images / m, labels / m), (images / s, labels / s)
    return [build_case(set_name, set_name, *pair, args, 1 if set_name == "real1mm" else 2)]


def _ixi_cases(args: argparse.Namespace) -> list[Path]:
    subjects, out = ixi_subjects(), []
    for k in range(args.ixi_pairs):
        fid, mid = subjects[IXI_FIRST + 2 * k], subjects[IXI_FIRST + 2 * k + 1]
        name = f"ixi_{fid[:6]}_{mid[:6]}"
        out.append(build_case(name, "ixi", _ixi_paths(fid), _ixi_paths(mid), _ixi_paths(mid), args, 10 + k))
    return out


def _ixi_cross_cases(args: argparse.Namespace) -> list[Path]:
    subjects, out = ixi_subjects(), []
    for k in range(args.ixi_cross_pairs):
        fid, mid = subjects[IXI_CROSS_FIRST + 2 * k], subjects[IXI_CROSS_FIRST + 2 * k + 1]
        contrast, seed = CROSS_CONTRASTS[k % 2], 30 + k
        name = f"ixicross_{fid[:6]}_{mid[:6]}_{contrast}"
        case = CACHE / f"unaligned_{name}_s{seed}"
        moving_seg, built = _ixi_paths(mid)[1], (case / "meta.json").is_file()
        source = case / "source.nii.gz"
        if not built:
            case.mkdir(parents=True, exist_ok=True)
            nib.save(stripped_t1(mid), str(source))
        fixed = (case / "fixed.nii.gz" if built else stripped_t1(fid), _ixi_paths(fid)[1])
        moving = (case / "moving.nii.gz" if built else synthetic_contrast(moving_seg, contrast, seed), moving_seg)
        out.append(build_case(name, "ixicross", fixed, moving, (source, moving_seg), args, seed))
    return out


def cases(args: argparse.Namespace) -> list[Path]:
    """Every case of ``args.sets``, in that order (``args.ixi_pairs`` and ``args.ixi_cross_pairs`` IXI pairs),
    built if needed."""
    out: list[Path] = []
    for set_name in args.sets:
        if set_name in ("real1mm", "cross"):
            out += _test_data_case(set_name, args)
        else:
            out += _ixi_cases(args) if set_name == "ixi" else _ixi_cross_cases(args)
    return out


def read_meta(case: Path) -> dict:
    return json.loads((case / "meta.json").read_text())
