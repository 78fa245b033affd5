"""How the small files in tests/data were derived from ../shared/data (run once; see README.md here).

python tests/data/derive.py ../shared/data
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


def main(data: Path) -> None:
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
    main(Path(sys.argv[1]))
