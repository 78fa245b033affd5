"""How the small files in tests/data were derived from ../shared/data (run once; see README.md here).

From the repository root (the lesion crop reads ``bench/``)::

    PYTHONPATH=. python tests/data/derive.py ../shared/data            # every file
    PYTHONPATH=. python tests/data/derive.py ../shared/data oasis_t1   # the OASIS T1 subjects only
    PYTHONPATH=. python tests/data/derive.py ../shared/data lesion     # the brain-tumour patient's crop only
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from caio import spatial

OUT = Path(__file__).resolve().parent
REPO = OUT.parents[1]
LUMIR_SHAPE = (160, 224, 192)
BLOCK = 4
"""tests/helpers/pipeline_data.py block-averages the 1 mm LUMIR grid by this factor (40x56x48)."""


def brain_moments(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis mean and standard deviation (voxels) of the coordinates of a mask's voxels."""
    coords = np.argwhere(mask).astype(np.float64)
    return coords.mean(axis=0), coords.std(axis=0)


def to_lumir_grid(image: np.ndarray, reference_mask: np.ndarray) -> np.ndarray:
    """A RAS 1 mm brain image put onto the reference's LUMIR grid by a per-axis scale and shift that match the
    mean and spread of the two brain masks (no rotation: both are already roughly aligned); trilinear, 0 outside."""
    mean_src, std_src = brain_moments(image > 0)
    mean_ref, std_ref = brain_moments(reference_mask)
    scale = std_src / std_ref  # source voxels per reference voxel, per axis
    grid = np.indices(reference_mask.shape, dtype=np.float64).reshape(3, -1)
    coords = (grid - mean_ref[:, None]) * scale[:, None] + mean_src[:, None]
    out = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
    return out.reshape(reference_mask.shape).astype(np.float32)


def lumir_intensities(image: np.ndarray, percentile: float = 99.9) -> np.ndarray:
    """As scripts/make_test_data.py: the brain's ``percentile`` maps to 255 (clipped), rounded, brain voxels >= 1,
    background exactly 0 (a uint8 LUMIR image, kept as float32)."""
    mask = image > 0
    top = float(np.percentile(image[mask], percentile))
    out = np.clip(np.round(image * (255.0 / top)), 1, 255)
    return np.where(mask, out, 0.0).astype(np.float32)


def block_average(image: np.ndarray, factor: int = BLOCK) -> np.ndarray:
    """Mean over ``factor``^3 blocks, as ``tests/pipeline_data.small_volume`` does for ``test_data`` images."""
    d0, d1, d2 = (n // factor for n in image.shape)
    blocks = image[: d0 * factor, : d1 * factor, : d2 * factor].reshape(d0, factor, d1, factor, d2, factor)
    return blocks.mean(axis=(1, 3, 5)).astype(np.float32)


def oasis_t1(data: Path) -> None:
    """Two more real T1 subjects for the same-contrast pipeline tests: LapIRN's OASIS images A and B (RAS 1 mm,
    skull-stripped, [0, 1]) on the LUMIR grid of ``test_data`` subject A (LUMIRMRI_3455_0000), LUMIR intensities,
    block-averaged by 4 to 40x56x48 (what ``tests/pipeline_data.small_volume`` gives for ``test_data`` images)."""
    ref = nib.load(str(REPO / "test_data/imagesVal/LUMIRMRI_3455_0000.nii.gz"))
    reference_mask = np.asarray(ref.dataobj) > 0
    assert reference_mask.shape == LUMIR_SHAPE, reference_mask.shape
    small = {}
    for key, name in (("a", "image_A_160x192x144.nii.gz"), ("b", "image_B_160x192x144.nii.gz")):
        image = np.asarray(nib.load(str(data / "lapirn_oasis_pair" / name)).dataobj, dtype=np.float64)
        small[key] = block_average(lumir_intensities(to_lumir_grid(image, reference_mask)))
    np.savez_compressed(OUT / "oasis_t1_40x56x48.npz", **small)


LESION_PATIENT = "brats_gli_00001"
LESION_BLOCK = 3


def lesion_crop(data: Path) -> None:
    """Real T1, T2 and FLAIR of one brain-tumour patient (co-registered, skull-stripped, 1 mm) for the engine's
    lesion tests: cropped to the brain box (2 voxels of margin), block-averaged by 3 (3 mm voxels, about 50^3),
    each divided by its brain's 99.5th percentile and scaled to [0, 255]; and the lesion mask (FLAIR
    hyperintensity, :func:`bench.lesion_contrasts.lesion_mask` on the 1 mm FLAIR, block-averaged and > 0.5)."""
    from bench.lesion_contrasts import lesion_mask

    folder = data / "brainlesion_multicontrast" / LESION_PATIENT
    images = {c: np.asarray(nib.load(str(folder / f"{c}.nii.gz")).dataobj, np.float32) for c in ("t1", "t2", "flair")}
    brain = np.logical_and.reduce([image > 0 for image in images.values()])
    box = tuple(slice(max(int(i.min()) - 2, 0), int(i.max()) + 3) for i in np.nonzero(brain))
    brain = brain[box]
    lesion = block_average(lesion_mask(images["flair"][box], brain).astype(np.float32), LESION_BLOCK) > 0.5
    small = {"lesion": lesion.astype(np.uint8)}
    for name, image in images.items():
        image = np.where(brain, image[box], 0.0)
        top = float(np.percentile(image[brain], 99.5))
        small[name] = block_average(np.clip(image * (255.0 / top), 0, 255), LESION_BLOCK)
    np.savez_compressed(OUT / "brats_lesion_t1_t2_flair_3mm.npz", **small)


def main(data: Path, only: str | None = None) -> None:
    if only == "lesion":
        lesion_crop(data)
        return
    oasis_t1(data)
    if only == "oasis_t1":
        return
    lesion_crop(data)

    # LapIRN OASIS pair, [0, 1] -> [0, 255], resampled (anti-aliased) to 32x40x28
    pair = []
    for name in ("image_A_160x192x144.nii.gz", "image_B_160x192x144.nii.gz"):
        array = np.asarray(nib.load(str(data / "lapirn_oasis_pair" / name)).dataobj, dtype=np.float32) * 255.0
        pair.append(spatial.resize_image(torch.from_numpy(array)[None, None], (32, 40, 28))[0, 0].numpy())
    np.savez_compressed(OUT / "oasis_pair_32x40x28.npz", fixed=pair[0], moving=pair[1])

    # SPM avg152T1/T2 and Colin27 T1, skull-stripped with the MNI152 2009a brain (resampled to their grid)
    ref = nib.load(str(data / "spm_canonical/avg152T1.nii.gz"))
    mni = nib.load(str(data / "mni_icbm152_2009a_nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    vox = np.indices(ref.shape).reshape(3, -1)
    to_mni = np.linalg.inv(mni.affine) @ ref.affine
    coords = to_mni[:3, :3] @ vox + to_mni[:3, 3:]
    mask = ndimage.map_coordinates(np.asarray(mni.dataobj, np.float32), coords, order=0).reshape(ref.shape) > 0
    for name in ("avg152T1", "avg152T2", "single_subj_T1"):
        img = nib.load(str(data / f"spm_canonical/{name}.nii.gz"))
        image = np.asarray(img.dataobj)
        stripped = np.where(mask, image, 0).astype(image.dtype)
        nib.save(nib.Nifti1Image(stripped, img.affine), str(OUT / f"spm_{name}_brain.nii.gz"))

    # voxelmorph test scan: the aseg label map only
    seg = np.load(data / "voxelmorph_test_scan/test_scan.npz")["seg"]
    np.savez_compressed(OUT / "voxelmorph_test_seg.npz", seg=seg.astype(np.uint8))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
