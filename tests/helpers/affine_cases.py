"""Known linear transforms of real anatomy for the affine, ITK and ``caio register`` tests.

The SPM images of ``tests/data`` (2 mm, RAS) are reduced to a coarser RAS grid (the fixed image); a moving image
is drawn from the 2 mm original through a known world transform ``T`` (fixed mm -> moving mm) on any grid (e.g.
LPS, another voxel size), sampled twice as finely and then reduced with the same anti-aliasing, so both images
carry the same blur. Importable from tests (``tests/`` is on ``sys.path`` under pytest).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from caio.io import resample_to_grid
from caio.transforms import world

DATA = Path(__file__).resolve().parents[1] / "data"


def spm_image(name: str = "spm_single_subj_T1_brain") -> tuple[np.ndarray, np.ndarray]:
    """``(image in [0, 255] float32, affine)`` of a ``tests/data`` SPM image at its 2 mm."""
    img = nib.load(str(DATA / f"{name}.nii.gz"))
    data = np.asarray(img.dataobj, np.float32)
    return data / data.max() * 255, np.asarray(img.affine, np.float64)


def reduce(image: np.ndarray, affine: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased resampling to voxels of about ``spacing`` mm over the same field of view."""
    grid = world.downsample(world.Grid(torch.from_numpy(image)[None, None], affine), spacing, minimum=2)
    return grid.image[0, 0].numpy(), grid.affine


def crop_to_content(image: np.ndarray, affine: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box of the non-zero voxels plus ``margin`` voxels, with its affine (fewer voxels to register)."""
    inside = np.argwhere(image > 0)
    low = np.maximum(inside.min(axis=0) - margin, 0)
    high = np.minimum(inside.max(axis=0) + margin + 1, image.shape)
    cropped = image[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    shifted = np.asarray(affine, np.float64).copy()
    shifted[:3, 3] = affine[:3, :3] @ low + affine[:3, 3]
    return np.ascontiguousarray(cropped), shifted


def known_transform(degrees, translation, centre, scale=(1.0, 1.0, 1.0), shear=0.0) -> np.ndarray:
    """``T p = R S (p - centre) + centre + translation`` (rotations about x, y, z in degrees, ``S`` scales with
    one shear term)."""
    rotation = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    linear = np.diag(np.asarray(scale, np.float64))
    linear[0, 1] = shear
    transform = np.eye(4)
    transform[:3, :3] = rotation @ linear
    transform[:3, 3] = np.asarray(centre) + np.asarray(translation) - rotation @ linear @ np.asarray(centre)
    return transform


def oriented_grid(spacing: float, shape, centre, flip=(-1.0, -1.0, 1.0)) -> np.ndarray:
    """Affine of a grid with axes ``flip`` (LPS by default) and voxels of ``spacing`` mm centred on ``centre``."""
    affine = np.diag([*(np.asarray(flip) * spacing), 1.0])
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def moved_image(source: np.ndarray, source_affine: np.ndarray, transform: np.ndarray, shape, affine) -> np.ndarray:
    """The moving image on grid ``(shape, affine)``: ``moving(T p) = source(p)``, drawn at twice the resolution
    and reduced (anti-aliased), float32."""
    fine_shape = tuple(2 * (n - 1) + 1 for n in shape)
    fine_affine = world.level_affine(affine, shape, fine_shape)
    fine = resample_to_grid(source, source_affine, fine_shape, np.linalg.inv(transform) @ fine_affine)
    spacing = float(world.voxel_sizes(affine).mean())
    return reduce(fine, fine_affine, spacing)[0]


def brain_box(image: np.ndarray, affine: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """``(shape, affine)`` of the bounding box of the non-zero voxels (the brain): corner errors measured there
    do not extrapolate into the empty field of view."""
    inside = np.argwhere(image > 0)
    low, high = inside.min(axis=0), inside.max(axis=0)
    box = np.asarray(affine, np.float64).copy()
    box[:3, 3] = affine[:3, :3] @ low + affine[:3, 3]
    return tuple(int(n) for n in high - low + 1), box


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path
