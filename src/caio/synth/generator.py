"""Synthetic multi-contrast LUMIR-style data from label maps (SynthSeg-style generator).

Per subject, a real-anatomy label map (FreeSurfer labels, any orientation and size) is put on
the LUMIR grid (160x224x192, RAS array order) by an affine fitted to label centroids
(:mod:`caio.synth.contrast_models`), moved by a small random affine and a random smooth
diffeomorphic deformation (:mod:`caio.spatial`), and skull-stripped (non-brain labels -> 0).
Each contrast image is then drawn from the labels (:func:`synthesize_image`): per-label
Gaussian intensities from a contrast model with randomised means, partial-volume blur,
optional thick-slice resolution loss, a smooth multiplicative bias field, noise, a random
gamma, skull stripping, and rescaling to [0, 255] with brain voxels >= 1 and background 0.

Randomness only comes from explicit ``torch.Generator`` objects seeded from
``(seed, subject index)``; nothing is seeded globally, so the same seed gives byte-identical
files. Volumes use caio's image interface: float32 tensors ``[1, 1, D0, D1, D2]`` in [0, 255].
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from caio import spatial
from caio.errors import CaioInputError
from caio.io import LUMIR_SHAPE, write_json_atomic, write_nifti_atomic
from caio.synth.contrast_models import (
    MODALITY_CODES,
    TEMPLATE_CENTROIDS,
    TISSUE_OF_LABEL,
    SynthConfig,
    generator_for,
    synthesize_image,
    uniform,
)

log = logging.getLogger(__name__)

CONTRASTS: tuple[str, ...] = tuple(MODALITY_CODES)


# ----------------------------------------------------------------------------------------
# Label maps
# ----------------------------------------------------------------------------------------


def load_label_map_ras(path: str | Path) -> np.ndarray:
    """Read a label map and reorder its axes to RAS (axis 0 -> Right, 1 -> Anterior, 2 -> Superior).

    Returns:
        int32 ``(N0, N1, N2)``.
    Raises:
        CaioInputError: unreadable, not 3-D or non-integer values.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as err:
        raise CaioInputError(f"{path}: cannot read label map ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaioInputError(f"{path}: label map must be 3-D, got shape {data.shape}")
    if not np.array_equal(data, np.round(data)):
        raise CaioInputError(f"{path}: label map has non-integer values")
    ornt = nib.orientations.io_orientation(img.affine)
    ras = nib.orientations.apply_orientation(data, ornt)
    return np.ascontiguousarray(ras).astype(np.int32)


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Fold cortical parcellations into cortex (3 left, 42 right) and zero all non-brain labels.

    Args:
        labels: integer label map (any shape).
    Returns:
        int32 map containing only labels of :data:`caio.synth.contrast_models.TISSUE_OF_LABEL` and 0.
    """
    out = np.asarray(labels).astype(np.int32, copy=True)
    left = ((out >= 1000) & (out < 2000)) | ((out >= 11100) & (out < 11200))
    right = ((out >= 2000) & (out < 3000)) | ((out >= 12100) & (out < 12200))
    out[left], out[right] = 3, 42
    brain = np.isin(out, np.fromiter(TISSUE_OF_LABEL, dtype=np.int32))
    out[~brain] = 0
    return out


def label_centroids(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Voxel-index centroid of every positive label value. Returns ``{label: (3,) float64}``.

    Computed from per-slice label histograms along each axis (no per-voxel coordinate arrays).
    """
    labels = np.asarray(labels)
    if labels.min() < 0:
        raise ValueError("label values must be non-negative")
    uniq, inverse = np.unique(labels, return_inverse=True) if labels.max() > 65535 else (None, labels)
    inverse = inverse.reshape(labels.shape).astype(np.intp, copy=False)
    size = int(inverse.max()) + 1
    sums = np.zeros((3, size))
    counts = np.zeros(size)
    for axis in range(3):
        moved = np.moveaxis(inverse, axis, 0)
        for index in range(moved.shape[0]):
            hist = np.bincount(moved[index].ravel(), minlength=size)
            sums[axis] += index * hist
            if axis == 0:
                counts += hist
    values = np.arange(size) if uniq is None else uniq
    return {int(values[i]): sums[:, i] / counts[i] for i in range(size) if counts[i] > 0 and values[i] > 0}


def fit_template_affine(labels: np.ndarray, shape: Sequence[int] = LUMIR_SHAPE, what: str = "label map") -> np.ndarray:
    """Affine from output-grid voxels to ``labels`` voxels, fitted to label centroids.

    Least squares of ``src = A @ [x, 1]`` over the labels shared with
    :data:`caio.synth.contrast_models.TEMPLATE_CENTROIDS` (scaled to ``shape`` when it is not LUMIR's).

    Returns:
        ``(3, 4)`` float64 matrix.
    Raises:
        CaioInputError: fewer than 8 shared labels.
    """
    scale = np.array(spatial.grid_scale(shape, LUMIR_SHAPE))
    source = label_centroids(canonical_labels(labels))
    shared = [k for k in TEMPLATE_CENTROIDS if k in source]
    if len(shared) < 8:
        raise CaioInputError(f"{what}: only {len(shared)} FreeSurfer aseg labels found; need >= 8 to align it")
    dst = np.array([np.asarray(TEMPLATE_CENTROIDS[k]) * scale for k in shared])
    src = np.array([source[k] for k in shared])
    design = np.hstack([dst, np.ones((len(shared), 1))])
    solution, *_ = np.linalg.lstsq(design, src, rcond=None)
    return solution.T


def random_affine(shape: Sequence[int], gen: torch.Generator, config: SynthConfig) -> np.ndarray:
    """Small random rotation/scale/translation about the grid centre, ``(3, 4)`` voxel -> voxel."""
    angles = np.deg2rad(uniform(gen, config.max_rotation_deg, (3,)).numpy())
    scales = 1.0 + uniform(gen, config.max_scale, (3,)).numpy()
    shift = uniform(gen, config.max_translation, (3,)).numpy()
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
        rot = rot @ r
    lin = rot @ np.diag(scales)
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    return np.hstack([lin, (centre - lin @ centre + shift)[:, None]])


def random_displacement(
    shape: Sequence[int], gen: torch.Generator, max_disp: float, control_spacing: int = 16, steps: int = 5
) -> torch.Tensor:
    """Random smooth diffeomorphic displacement (scaling and squaring of a stationary velocity).

    Velocity noise on a coarse control grid is resized to a quarter-resolution grid, scaled so its
    largest value is ``U(0, max_disp)`` voxels, integrated with :func:`caio.spatial.compose`, and
    resized to ``shape`` with :func:`caio.spatial.resize_displacement`.

    Returns:
        ``[1, 3, *shape]`` float32 displacement in voxels of ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    coarse = tuple(max(2, math.ceil(n / control_spacing) + 1) for n in shape)
    quarter = tuple(max(2, n // 4) for n in shape)
    velocity = torch.randn((1, 3, *coarse), generator=gen, dtype=torch.float32)
    velocity = spatial.resize_displacement(velocity, quarter)
    amplitude = float(uniform(gen, (0.0, max_disp)))
    to_quarter = torch.tensor(spatial.grid_scale(quarter, shape)).view(1, 3, 1, 1, 1)
    velocity = velocity / velocity.abs().amax().clamp_min(1e-6) * amplitude * to_quarter / 2**steps
    disp = velocity
    for _ in range(steps):
        disp = spatial.compose(disp, disp)
    return spatial.resize_displacement(disp, shape)


def sampling_grid(shape: Sequence[int], affine: np.ndarray, disp: torch.Tensor | None = None) -> torch.Tensor:
    """Source-voxel coordinates ``affine @ (x + disp(x))`` of every output voxel ``x``.

    Args:
        affine: ``(3, 4)`` output voxel -> source voxel.
        disp: optional ``[1, 3, *shape]`` displacement in output voxels.
    Returns:
        ``[1, 3, *shape]`` float32 grid for :func:`caio.spatial.sample`.
    """
    points = spatial.identity_grid(shape)
    if disp is not None:
        points = points + disp
    lin = torch.as_tensor(affine[:, :3], dtype=torch.float32)
    offset = torch.as_tensor(affine[:, 3], dtype=torch.float32).view(1, 3, 1, 1, 1)
    return torch.einsum("ij,bj...->bi...", lin, points) + offset


def resample_labels(labels: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    """Nearest-neighbour labels at ``grid`` (0 outside the source). Returns int32 ``grid.shape[2:]``."""
    source = torch.from_numpy(labels.astype(np.float32))[None, None]
    out = spatial.sample(source, grid, mode="nearest", padding_mode="zeros")
    return out[0, 0].round().numpy().astype(np.int32)


def resample_image(image: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    """Trilinear intensities at ``grid`` (0 outside the source). Returns float32 ``grid.shape[2:]``."""
    source = torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None]
    return spatial.sample(source, grid, mode="bilinear", padding_mode="zeros")[0, 0].numpy()


def brain_mask(labels: np.ndarray, dilation: int = 0) -> np.ndarray:
    """Skull-strip mask: ``labels > 0``, optionally grown by ``dilation`` voxels and hole-filled."""
    from scipy import ndimage

    mask = np.asarray(labels) > 0
    if dilation > 0:
        mask = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1), iterations=dilation)
        mask = ndimage.binary_fill_holes(mask)
    return mask


# ----------------------------------------------------------------------------------------
# Subjects and LUMIR-style folders
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthSubject:
    """One synthetic subject: skull-stripped labels and one uint8 image per contrast.

    Attributes:
        subject_id: 4-digit ID used in file names.
        source: label map the anatomy comes from.
        labels: ``(D0, D1, D2)`` int32 canonical labels (0 = background).
        images: contrast name -> ``(D0, D1, D2)`` uint8 image (0 outside the brain, >= 1 inside).
    """

    subject_id: str
    source: Path
    labels: np.ndarray
    images: dict[str, np.ndarray]


def make_subject(
    label_map: np.ndarray,
    contrasts: Sequence[str],
    gen: torch.Generator,
    shape: Sequence[int] = LUMIR_SHAPE,
    config: SynthConfig = SynthConfig(),
    subject_id: str = "0000",
    source: Path = Path(""),
) -> SynthSubject:
    """Deform one RAS label map onto the output grid and draw one image per contrast.

    Args:
        label_map: ``(N0, N1, N2)`` FreeSurfer labels in RAS order (:func:`load_label_map_ras`).
        contrasts: names from :data:`CONTRASTS`; all images share the same deformed labels.
        shape: output grid (LUMIR's by default; smaller for tests).
    """
    shape = tuple(int(n) for n in shape)
    canonical = canonical_labels(label_map)
    fit = fit_template_affine(canonical, shape, what=str(source))
    jitter = random_affine(shape, gen, config)
    affine = fit[:, :3] @ jitter  # output voxel -> jittered output voxel -> source voxel
    affine[:, 3] += fit[:, 3]
    disp = random_displacement(shape, gen, config.max_disp)
    labels = resample_labels(canonical, sampling_grid(shape, affine, disp))
    mask = brain_mask(labels, config.brain_dilation)
    voxel_mm = spatial.grid_scale(LUMIR_SHAPE, shape)  # the grid spans LUMIR's field of view
    images = {
        c: synthesize_image(labels, c, gen, config, mask=mask, voxel_mm=voxel_mm)[0, 0].numpy().astype(np.uint8)
        for c in contrasts
    }
    return SynthSubject(subject_id, Path(source), labels, images)


def lumir_name(subject_id: str, contrast: str) -> str:
    """``LUMIRMRI_<ID>_<modality code>.nii.gz``."""
    return f"LUMIRMRI_{subject_id}_{MODALITY_CODES[contrast]}.nii.gz"


def plan_pairs(
    subject_ids: Sequence[str], other_contrast: Sequence[str], kinds: Sequence[str]
) -> list[tuple[str, str]]:
    """Registration pairs ``(fixed file, moving file)`` over consecutive subjects.

    ``uni``: T1 of subject i+1 <- T1 of subject i (chained, as the in-domain set).
    ``cross``: T1 of subject i <- other contrast of subject i+1 (different subjects, as the
    multi-modal set). Short output names never collide (uni ``disp_{i+1}_{i}``, cross ``disp_{i}_{i+1}``).
    """
    pairs = []
    for i in range(len(subject_ids) - 1):
        a, b = subject_ids[i], subject_ids[i + 1]
        if "uni" in kinds:
            pairs.append((lumir_name(b, "t1"), lumir_name(a, "t1")))
        if "cross" in kinds:
            pairs.append((lumir_name(a, "t1"), lumir_name(b, other_contrast[i + 1])))
    return pairs


def dataset_json(pairs: Sequence[tuple[str, str]], shape: Sequence[int], description: str, extra: dict) -> dict:
    """Dataset JSON in the organizers' layout (lumir_spec §1.3) plus a ``caio_synth`` record."""
    return {
        "name": "LUMIR",
        "release": "0.1",
        "description": description,
        "license": "generated by caio from the listed label maps; see their licences",
        "reference": "caio.synth.generator",
        "pairings": "unpaired",
        "provided_data": {"0": ["image"]},
        "modality": {str(int(code)): f"{name}-like Brain MRI (synthetic)" for name, code in MODALITY_CODES.items()},
        "labels": {},
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": list(shape)},
        "numTraining": 0,
        "training": [],
        "numValidation": len(pairs),
        "validation": [{"fixed": f"./imagesVal/{f}", "moving": f"./imagesVal/{m}"} for f, m in pairs],
        "caio_synth": extra,
    }


def find_label_maps(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (``*.nii``, ``*.nii.gz``, ``*.mgz`` inside) into a sorted file list."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.name.endswith((".nii", ".nii.gz", ".mgz")))
        elif p.is_file():
            found.append(p)
        else:
            raise CaioInputError(f"{p}: label map file or folder not found")
    if not found:
        raise CaioInputError(f"{', '.join(map(str, paths))}: no label maps (*.nii, *.nii.gz, *.mgz) found")
    return found


def write_synthetic_dataset(
    out: str | Path,
    label_maps: Sequence[str | Path],
    n_subjects: int,
    pair_kinds: Sequence[str] = ("uni", "cross"),
    contrasts: Sequence[str] = ("t2", "flair", "pd"),
    seed: int = 0,
    shape: Sequence[int] = LUMIR_SHAPE,
    first_id: int = 5000,
    config: SynthConfig = SynthConfig(),
) -> Path:
    """Write a LUMIR-style folder: ``imagesVal/``, ``labelsVal/``, ``LUMIR25_dataset.json``.

    Subject ``i`` uses label map ``i % len(label_maps)`` and the generator ``(seed, i)``; it gets a
    T1 image and, when cross pairs are asked for, one image of ``contrasts[i % len(contrasts)]``.

    Returns:
        path of the dataset JSON.
    Raises:
        CaioInputError: bad counts, IDs, contrasts or label maps.
    """
    if n_subjects < 2:
        raise CaioInputError(f"--n-subjects: need at least 2 subjects, got {n_subjects}")
    if not 0 <= first_id or first_id + n_subjects > 10000:
        raise CaioInputError(f"--first-id: IDs {first_id}..{first_id + n_subjects - 1} do not fit in 4 digits")
    bad = [c for c in contrasts if c not in CONTRASTS or c == "t1"]
    if bad or not contrasts:
        raise CaioInputError(f"--contrasts: {bad or 'none'}; choose non-T1 contrasts from {', '.join(CONTRASTS[1:])}")
    maps = find_label_maps(label_maps)
    out = Path(out)
    for sub in ("imagesVal", "labelsVal"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"{first_id + i:04d}" for i in range(n_subjects)]
    other = [contrasts[i % len(contrasts)] for i in range(n_subjects)]
    record = []
    for i, subject_id in enumerate(ids):
        start = time.perf_counter()
        source = maps[i % len(maps)]
        wanted = ["t1"] + ([other[i]] if "cross" in pair_kinds else [])
        subject = make_subject(
            load_label_map_ras(source), wanted, generator_for(seed, i), shape, config, subject_id, source
        )
        for contrast, image in subject.images.items():
            write_nifti_atomic(out / "imagesVal" / lumir_name(subject_id, contrast), image)
            write_nifti_atomic(out / "labelsVal" / lumir_name(subject_id, contrast), subject.labels.astype(np.uint8))
        record.append({"id": subject_id, "label_map": source.name, "contrasts": wanted})
        log.info(
            "subject %s (%s: %s) in %.1f s", subject_id, source.name, "+".join(wanted), time.perf_counter() - start
        )
    pairs = plan_pairs(ids, other, pair_kinds)
    extra = {"seed": seed, "subjects": record, "config": asdict(config)}
    return write_json_atomic(
        out / "LUMIR25_dataset.json", dataset_json(pairs, shape, f"caio synthetic set, seed {seed}", extra)
    )
