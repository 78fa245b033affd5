"""Benchmark sets of ``python -m bench.registration``: each ``prepare_*`` writes one folder per pair (fixed/moving
images and label maps on the fixed grid, ``meta.json``) under a cache folder and returns the folders.

Real moving images are aligned to the fixed one by one ANTs affine (``antspyx``, in ``bench/.venv``); the
LUMIR-like and ``test_data`` pairs are already aligned. Set descriptions: ``bench/registration.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.common import ASEG28, DATA, IXI, VXM_AFFINE, destrieux_to_aseg, ixi_subjects, read_labels, save_nifti

# ------------------------------------------------------------------ data preparation (ANTs affine)


def _to_0_255(image: np.ndarray) -> np.ndarray:
    """Images above 255 (e.g. raw IXI T1, up to ~4500) are scaled so their 99.9th percentile is 255, then clipped."""
    image = np.asarray(image, np.float32)
    if image.max() > 255:
        image = image * (255.0 / np.percentile(image[image > 0], 99.9))
    return np.clip(image, 0, 255).astype(np.float32)


def _affine_align(case: Path, fixed: np.ndarray, moving_path: Path, moving_seg_path: Path, affine: np.ndarray) -> None:
    """Write fixed/moving images ([0, 255]) and label maps of one case on the fixed grid (moving affinely aligned)."""
    import ants

    save_nifti(case / "fixed.nii.gz", _to_0_255(fixed), affine)
    f = ants.image_read(str(case / "fixed.nii.gz"))
    m = ants.image_read(str(moving_path))
    ms = ants.image_read(str(moving_seg_path))
    reg = ants.registration(f, m, type_of_transform="Affine")
    mw = ants.apply_transforms(f, m, reg["fwdtransforms"], interpolator="linear")
    sw = ants.apply_transforms(f, ms, reg["fwdtransforms"], interpolator="nearestNeighbor")
    save_nifti(case / "moving.nii.gz", _to_0_255(mw.numpy()), affine)
    save_nifti(case / "moving_seg.nii.gz", np.round(sw.numpy()).astype(np.int32), affine)


def prepare_real1mm(cache: Path) -> list[Path]:
    case = cache / "real1mm"
    if not (case / "meta.json").exists():
        case.mkdir(parents=True, exist_ok=True)
        scan = np.load(DATA / "voxelmorph_test_scan" / "test_scan.npz")
        save_nifti(case / "fixed_seg.nii.gz", scan["seg"].astype(np.int32), VXM_AFFINE)
        src = DATA / "niivue_freesurfer_subject"
        seg_img = nib.load(str(src / "aparc.a2009s+aseg.mgz"))
        seg = destrieux_to_aseg(np.asarray(seg_img.dataobj))
        with tempfile.TemporaryDirectory() as tmp:
            save_nifti(Path(tmp) / "mseg.nii.gz", seg, seg_img.affine)
            norm = nib.load(str(src / "norm.mgz"))
            save_nifti(Path(tmp) / "m.nii.gz", np.asarray(norm.dataobj, np.float32), norm.affine)
            _affine_align(case, scan["vol"] * 255.0, Path(tmp) / "m.nii.gz", Path(tmp) / "mseg.nii.gz", VXM_AFFINE)
        (case / "meta.json").write_text(
            json.dumps({"set": "real1mm", "mask": "fixed", "contrast": "same", "labels": ASEG28})
        )
    return [case]


def prepare_ixi(cache: Path, n_pairs: int) -> list[Path]:
    subjects = ixi_subjects()
    cases = []
    for k in range(min(n_pairs, len(subjects) // 2)):
        fid, mid = subjects[2 * k], subjects[2 * k + 1]
        case = cache / f"ixi_{fid[:6]}_{mid[:6]}"
        if not (case / "meta.json").exists():
            case.mkdir(parents=True, exist_ok=True)
            fimg = nib.load(str(IXI / "T1" / f"{fid}_T1.nii.gz"))
            fseg = np.asarray(nib.load(str(IXI / "DLMUSE" / f"{fid}_T1_DLMUSE.nii.gz")).dataobj).astype(np.int32)
            save_nifti(case / "fixed_seg.nii.gz", fseg, fimg.affine)
            _affine_align(
                case,
                np.asarray(fimg.dataobj, np.float32),
                IXI / "T1" / f"{mid}_T1.nii.gz",
                IXI / "DLMUSE" / f"{mid}_T1_DLMUSE.nii.gz",
                fimg.affine,
            )
            (case / "meta.json").write_text(json.dumps({"set": "ixi", "mask": "labels", "contrast": "same"}))
        cases.append(case)
    return cases


SYNTH_SHAPE = (96, 112, 96)
"""Grid of the synthetic pairs (the LUMIR field of view at about 1.7-2 mm, to keep the peers fast)."""


def prepare_synth(cache: Path, n_pairs: int) -> list[Path]:
    """Cross-contrast pairs from :mod:`caio.synth.generator`: T1-like fixed <- T2/FLAIR-like moving of another subject.

    Both subjects are placed on the template by :mod:`caio.synth.generator`'s label-centroid affine (plus its
    random jitter and deformation), so no extra affine is run. Labels are exact.
    """
    try:
        import torch

        from caio.synth.generator import load_label_map_ras, make_subject
    except ImportError:
        print("synth: caio.synth.generator not available, skipping the cross-contrast set", file=sys.stderr)
        return []
    maps = sorted((DATA / "synthseg_label_maps").glob("training_seg_*.nii.gz"))
    cases = []
    for k in range(min(n_pairs, len(maps) // 2)):
        contrast = ("t2", "flair")[k % 2]
        case = cache / f"synth_{k:02d}_t1_{contrast}"
        if not (case / "meta.json").exists():
            case.mkdir(parents=True, exist_ok=True)
            gen = torch.Generator().manual_seed(1000 + k)
            fixed = make_subject(load_label_map_ras(maps[2 * k]), ["t1"], gen, shape=SYNTH_SHAPE)
            moving = make_subject(load_label_map_ras(maps[2 * k + 1]), [contrast], gen, shape=SYNTH_SHAPE)
            for name, arr, dt in (
                ("fixed", fixed.images["t1"], np.float32),
                ("moving", moving.images[contrast], np.float32),
                ("fixed_seg", fixed.labels, np.int32),
                ("moving_seg", moving.labels, np.int32),
            ):
                save_nifti(case / f"{name}.nii.gz", np.asarray(arr, dt), np.eye(4))
            (case / "meta.json").write_text(json.dumps({"set": "synth", "mask": "fixed", "contrast": "cross"}))
        cases.append(case)
    return cases


def prepare_lumir_folder(cache: Path, root: Path, json_name: str, set_name: str) -> list[Path]:
    """One case per "validation" pair of a LUMIR-style folder (images already aligned): links to its files.

    Cases are ``<set_name>-t1`` (moving modality 0000) or ``<set_name>-cross`` / ``-t2`` (other modalities);
    labels = ``labels.json["labels"]`` without 0; labels folder = images folder with ``images`` -> ``labels``.
    """
    if not (root / json_name).exists():
        print(
            f"{set_name}: {root / json_name} missing (python -m bench.make_lumir_like makes it), skipping",
            file=sys.stderr,
        )
        return []
    labels = read_labels(root)
    cases = []
    for pair in json.loads((root / json_name).read_text())["validation"]:
        files = {role: (root / pair[role]).resolve() for role in ("fixed", "moving")}
        ids = {role: files[role].name[len("LUMIRMRI_") :].split(".")[0] for role in files}
        cross = not ids["moving"].endswith("_0000")
        kind = "t1" if not cross else ("cross" if set_name == "lumir" else "t2")
        case = cache / f"{set_name}_{ids['fixed']}_{ids['moving']}"
        case.mkdir(parents=True, exist_ok=True)
        for role, path in files.items():
            seg = path.parent.parent / path.parent.name.replace("images", "labels") / path.name
            for name, target in ((f"{role}.nii.gz", path), (f"{role}_seg.nii.gz", seg)):
                (case / name).unlink(missing_ok=True)
                (case / name).symlink_to(target)
        (case / "meta.json").write_text(
            json.dumps(
                {
                    "set": f"{set_name}-{kind}",
                    "mask": "fixed",
                    "labels": labels,
                    "contrast": "cross" if cross else "same",
                }
            )
        )
        cases.append(case)
    return cases
