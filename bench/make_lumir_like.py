"""Build a LUMIR-like benchmark set from the NiChart IXI subjects (T1 2 mm + DLMUSE labels).

Run in the peer environment (``bench/setup_peers.sh``; needs antspyx), from the repository root::

    nice -n 10 bench/.venv/bin/python -m bench.make_lumir_like --n-same 8 --n-cross 6 --out bench/out/lumir_like

Per chosen subject (``../shared/data/nichart_ixi_dlmuse_2mm``):

1. skull strip: mask = DLMUSE labels > 0, grown by one 2 mm voxel, closed and hole-filled (keeps sulcal
   CSF in, as SynthStrip-stripped LUMIR images do); N4 bias correction inside the mask (ANTs);
2. ANTs ``Affine`` (Mattes, centre-of-mass initialisation) of the stripped T1 to the MNI ICBM152 2009a
   brain template (``../shared/data/mni_icbm152_2009a_nilearn``), the template resampled to 2 mm for the fit
   (the subjects are 2 mm; this halves the time and an affine needs no more);
3. resampling onto a 160x224x192, 1 mm grid in RAS array order whose centre is the centre of the
   template's brain bounding box: T1 linear, labels nearest, mask linear > 0.5;
4. intensities as ``test_data/``: brain 99.9th percentile -> 255, clipped, rounded, brain voxels >= 1,
   background exactly 0 (so ``image > 0`` is the evaluator's NDV mask); uint8, identity affine.

Pairs (fixed <- moving, every subject in one pair only, chosen with ``--seed`` among the subjects after
the first 20 in sorted order whose DLMUSE map holds all 148 ROIs; IXI175 lacks 13): ``--n-same``
T1 <- T1 pairs and ``--n-cross`` T1 <- synthetic pairs,
alternating T2-like (``_0001``) and FLAIR-like (``_0002``). A cross pair's moving image is drawn from
that subject's *labels* by :func:`caio.synth.contrast_models.synthesize_image`: DLMUSE ROI ids are first
converted to FreeSurfer-like ids of the same tissue (:func:`dlmuse_to_freesurfer`, built from the names in
``muse_dict.csv``). The label maps written are the DLMUSE ones for every image.
Idempotent: subjects whose files exist (made from the same IXI subject, per ``subjects.json``) are skipped;
the JSON files are rewritten each run.

Held-out sets (never used to choose a setting; checks of the choices made on the default set)::

    bench/.venv/bin/python -m bench.make_lumir_like --n-same 3 --n-cross 2 --skip-subjects 28 --id-base 7000 \
        --out bench/out/lumir_heldout         # the 11 complete subjects the default set leaves
    bench/.venv/bin/python -m bench.make_lumir_like --n-same 2 --n-cross 8 --reserved --id-base 1000 \
        --out bench/out/lumir_heldout2        # the first 20 subjects (only the full-head ``ixi`` set uses them)
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.common import DATA, IXI, LUMIR_LIKE, ixi_subjects, mean_dice

MNI_T1 = DATA / "mni_icbm152_2009a_nilearn" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
SHAPE = (160, 224, 192)
N_RESERVED = 20
"""The first subjects in sorted order are left out (tuning and other sets use them)."""
CROSS_CONTRASTS = (("t2", "0001"), ("flair", "0002"))
SAME_ID0 = 5000


# ------------------------------------------------------------------ DLMUSE -> FreeSurfer-like tissue labels


def dlmuse_to_freesurfer(names: dict[int, str]) -> dict[int, int]:
    """Map every single DLMUSE ROI id (< 300; the larger ids are composites) to a FreeSurfer label of the same
    tissue, so :data:`caio.synth.contrast_models.TISSUE_OF_LABEL` knows it. Rules on the ROI name (``_L``/``_R``
    suffix picks the left/right FreeSurfer value; ROIs without a side take the left one):
    ventricles/CSF -> 4/43 (lateral), 5/44 (inferior lateral), 14 (3rd), 15 (4th), 24 (cortical CSF);
    cerebellar WM -> 7/46; cerebellar cortex and vermis -> 8/47; brain stem -> 16; deep grey nuclei -> their aseg
    value; basal forebrain -> 80 (deep GM); white matter (``_WM``, fornix, internal capsule, corpus callosum) ->
    2/41; every other ROI is a cortical gyrus -> 3/42.
    """
    deep = {
        "Accumbens": (26, 58),
        "Amygdala": (18, 54),
        "Caudate": (11, 50),
        "Hippocampus": (17, 53),
        "Pallidum": (13, 52),
        "Putamen": (12, 51),
        "Thalamus": (10, 49),
        "VentralDC": (28, 60),
        "BasalForebrain": (80, 80),
        "InfLatVentricle": (5, 44),
        "LateralVentricle": (4, 43),
        "Cerebellum_WM": (7, 46),
        "CerebellumExterior": (8, 47),
        "CerebellarVermal": (8, 8),
    }
    table: dict[int, int] = {}
    for roi, name in names.items():
        if roi >= 300:
            continue
        side = 1 if name.endswith("_R") else 0
        if name == "CortCSF":
            fs = 24
        elif name == "3rdVentricle":
            fs = 14
        elif name == "4thVentricle":
            fs = 15
        elif name == "BrainStem":
            fs = 16
        elif any(name.startswith(k) for k in deep):
            fs = deep[next(k for k in deep if name.startswith(k))][side]
        elif "_WM" in name or name.startswith(("Fornix", "AnteriorLimbInternal", "PosteriorLimbInternal", "CorpCall")):
            fs = (2, 41)[side]
        else:
            fs = (3, 42)[side]
        table[roi] = fs
    return table


def read_muse_names() -> dict[int, str]:
    with open(IXI / "muse_dict.csv", newline="") as fh:
        return {int(row["Index"]): row["Name"] for row in csv.DictReader(fh)}


def to_freesurfer(labels: np.ndarray, table: dict[int, int]) -> np.ndarray:
    lut = np.zeros(max(int(labels.max()), max(table)) + 1, np.int32)
    for roi, fs in table.items():
        lut[roi] = fs
    return lut[labels]


# ------------------------------------------------------------------ geometry


def grid_affine() -> np.ndarray:
    """RAS 1 mm affine of the output grid, centred on the bounding box of the template brain (world mm)."""
    tpl = nib.load(str(MNI_T1))
    nz = np.argwhere(np.asarray(tpl.dataobj) > 0)
    centre_world = tpl.affine @ np.append((nz.min(0) + nz.max(0)) / 2.0, 1.0)
    affine = np.eye(4)
    affine[:3, 3] = centre_world[:3] - (np.array(SHAPE) - 1) / 2.0
    return affine


def brain_mask_2mm(labels: np.ndarray) -> np.ndarray:
    """labels > 0, grown by one voxel (2 mm), closed and hole-filled."""
    from scipy import ndimage

    ball = ndimage.generate_binary_structure(3, 1)
    mask = ndimage.binary_dilation(labels > 0, ball, iterations=1)
    mask = ndimage.binary_closing(mask, ball, iterations=2, border_value=0)
    return ndimage.binary_fill_holes(mask)


def to_0_255(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Brain 99.9th percentile -> 255, clipped, rounded; brain >= 1, background 0 (uint8)."""
    top = np.percentile(image[mask], 99.9)
    out = np.clip(np.round(image * (255.0 / top)), 1, 255)
    return np.where(mask, out, 0).astype(np.uint8)


def process_subject(name: str, reference: Path, template) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skull-strip, N4, affine to MNI, resample. Returns T1 uint8, DLMUSE labels int32, mask bool on the grid."""
    import ants

    t1 = ants.image_read(str(IXI / "T1" / f"{name}_T1.nii.gz"))
    seg = ants.image_read(str(IXI / "DLMUSE" / f"{name}_T1_DLMUSE.nii.gz"))
    mask = t1.new_image_like(brain_mask_2mm(np.round(seg.numpy())).astype(np.float32))
    t1 = ants.n4_bias_field_correction(t1, mask=mask) * mask
    reg = ants.registration(template, t1, type_of_transform="Affine")
    ref = ants.image_read(str(reference))
    image = ants.apply_transforms(ref, t1, reg["fwdtransforms"], interpolator="linear").numpy()
    labels = ants.apply_transforms(ref, seg, reg["fwdtransforms"], interpolator="nearestNeighbor").numpy()
    brain = ants.apply_transforms(ref, mask, reg["fwdtransforms"], interpolator="linear").numpy() > 0.5
    brain &= image > 0
    return to_0_255(image, brain), np.round(labels).astype(np.int32) * brain, brain


# ------------------------------------------------------------------ set


def choose_pairs(
    n_same: int, n_cross: int, seed: int, skip: int = 0, id_base: int = SAME_ID0, reserved: bool = False
) -> list[dict]:
    """Pairs of distinct subjects; the first ``skip`` complete subjects of the seeded order are left out (the
    held-out set skips the 28 of the default set); ids from ``id_base`` (T1 pairs), ``id_base + 1000`` (fixed of
    cross pairs), ``id_base + 1100`` (their moving images). ``reserved``: choose among the first
    ``N_RESERVED`` subjects instead (the ``ixi`` set of ``bench.registration``; never used for tuning)."""
    subjects = ixi_subjects()
    pool = subjects[:N_RESERVED] if reserved else subjects[N_RESERVED:]
    need = skip + 2 * (n_same + n_cross)
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    rois = {
        name: len(np.unique(np.asarray(nib.load(str(IXI / "DLMUSE" / f"{name}_T1_DLMUSE.nii.gz")).dataobj)))
        for name in pool
    }
    complete = [name for name in order if rois[name] == max(rois.values())]
    for name in sorted(set(order) - set(complete)):
        print(f"{name}: DLMUSE map has {rois[name] - 1} of {max(rois.values()) - 1} ROIs, not used", flush=True)
    if need > len(complete):
        raise SystemExit(f"{need} subjects needed, only {len(complete)} complete ones in the pool")
    chosen = complete[skip:need]
    same_id0, cross_fixed_id0, cross_moving_id0 = id_base, id_base + 1000, id_base + 1100
    pairs = []
    for k in range(n_same):
        pairs.append(
            {
                "kind": "t1",
                "fixed": (chosen[2 * k], same_id0 + 2 * k + 1, "0000"),
                "moving": (chosen[2 * k + 1], same_id0 + 2 * k, "0000"),
            }
        )
    for k in range(n_cross):
        contrast, code = CROSS_CONTRASTS[k % len(CROSS_CONTRASTS)]
        f, m = chosen[2 * (n_same + k)], chosen[2 * (n_same + k) + 1]
        pairs.append(
            {"kind": contrast, "fixed": (f, cross_fixed_id0 + k, "0000"), "moving": (m, cross_moving_id0 + k, code)}
        )
    return pairs


def lumir_file(sid: int, code: str) -> str:
    return f"LUMIRMRI_{sid:04d}_{code}.nii.gz"


def write_nifti(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.nii.gz")
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp))
    tmp.replace(path)


def dataset_json(pairs: list[dict]) -> dict:
    return {
        "name": "LUMIR",
        "release": "0.1",
        "description": "caio LUMIR-like benchmark set from NiChart IXI T1 + DLMUSE (see README.md)",
        "license": "IXI CC BY-SA 3.0; DLMUSE derivatives SBIA licence (research use); MNI ICBM152 notice",
        "reference": "IXI dataset; CBICA/NiChart_Project; MNI ICBM152 2009a",
        "pairings": "unpaired",
        "provided_data": {"0": ["image"]},
        "modality": {
            "0": "T1w Brain MRI",
            "1": "T2w-like Brain MRI (synthetic, from labels)",
            "2": "FLAIR-like Brain MRI (synthetic, from labels)",
        },
        "labels": {},
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": list(SHAPE)},
        "numTraining": 0,
        "training": [],
        "numValidation": len(pairs),
        "validation": [
            {
                "fixed": f"./imagesTr/{lumir_file(p['fixed'][1], p['fixed'][2])}",
                "moving": f"./imagesTr/{lumir_file(p['moving'][1], p['moving'][2])}",
            }
            for p in pairs
        ],
    }


def build(
    out: Path, n_same: int, n_cross: int, seed: int, skip: int = 0, id_base: int = SAME_ID0, reserved: bool = False
) -> None:
    import ants
    import torch

    from caio.synth.contrast_models import SynthConfig, generator_for, synthesize_image

    torch.set_num_threads(2)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    pairs = choose_pairs(n_same, n_cross, seed, skip, id_base, reserved)
    table = dlmuse_to_freesurfer(read_muse_names())
    template = ants.resample_image(ants.image_read(str(MNI_T1)), (2.0, 2.0, 2.0), use_voxels=False, interp_type=0)
    label_sets, subjects = [], {}
    made_from = json.loads((out / "subjects.json").read_text())["subjects"] if (out / "subjects.json").exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "reference.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), grid_affine()), str(reference))
        jobs = [(p[role], p["kind"] if role == "moving" else "t1") for p in pairs for role in ("fixed", "moving")]
        for n, ((name, sid, code), contrast) in enumerate(jobs, 1):
            subjects[f"{sid:04d}"] = {"ixi": name, "contrast": contrast}
            t1_path, lab_path = out / "imagesTr" / lumir_file(sid, "0000"), out / "labelsTr" / lumir_file(sid, "0000")
            img_path, img_lab = out / "imagesTr" / lumir_file(sid, code), out / "labelsTr" / lumir_file(sid, code)
            same_subject = made_from.get(f"{sid:04d}", {}).get("ixi") == name
            if same_subject and all(p.exists() for p in (img_path, img_lab, t1_path, lab_path)):
                print(f"[{n}/{len(jobs)}] {name} -> {sid:04d}_{code}: done already", flush=True)
                label_sets.append(set(np.unique(np.asarray(nib.load(str(lab_path)).dataobj)).tolist()))
                continue
            t0 = time.perf_counter()
            image, labels, brain = process_subject(name, reference, template)
            write_nifti(lab_path, labels.astype(np.uint8))
            write_nifti(t1_path, image)
            if code != "0000":
                fs = to_freesurfer(labels, table)
                synth = synthesize_image(
                    fs, contrast, generator_for(seed, sid), SynthConfig(thick_slice_prob=0.0), mask=brain
                )
                write_nifti(img_lab, labels.astype(np.uint8))
                write_nifti(img_path, synth[0, 0].numpy().astype(np.uint8))
            label_sets.append(set(np.unique(labels).tolist()))
            print(
                f"[{n}/{len(jobs)}] {name} -> {sid:04d}_{code} ({contrast}): {time.perf_counter() - t0:.1f} s, "
                f"{len(label_sets[-1]) - 1} labels, brain {brain.sum() / 1e3:.0f} ml",
                flush=True,
            )
    common = sorted(set.intersection(*label_sets))
    zero = [zero_field_dice(out, p, [k for k in common if k]) for p in pairs]
    (out / "LUMIR_like_dataset.json").write_text(json.dumps(dataset_json(pairs), indent=2))
    (out / "labels.json").write_text(
        json.dumps(
            {
                "description": "DLMUSE ROI ids present in every subject of the set (includes 0 like the LUMIR lists; "
                "bench.registration scores the non-zero ones); names in muse_dict.csv",
                "labels": common,
                "zero_field_dice": {
                    f"{p['fixed'][1]:04d}<-{p['moving'][1]:04d}": round(d, 4) for p, d in zip(pairs, zero)
                },
            },
            indent=1,
        )
    )
    (out / "subjects.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "subjects": subjects,
                "pairs": [
                    {
                        "fixed": f"{p['fixed'][1]:04d}",
                        "moving": f"{p['moving'][1]:04d}_{p['moving'][2]}",
                        "kind": p["kind"],
                    }
                    for p in pairs
                ],
            },
            indent=1,
        )
    )
    (out / "README.md").write_text(readme(pairs, len(common) - 1, zero, seed))
    print(
        f"{len(pairs)} pairs, {len(common) - 1} common non-zero labels; zero-field Dice "
        + ", ".join(f"{d:.3f}" for d in zero)
    )


def zero_field_dice(out: Path, pair: dict, labels: list[int]) -> float:
    f = np.asarray(nib.load(str(out / "labelsTr" / lumir_file(pair["fixed"][1], "0000"))).dataobj)
    m = np.asarray(nib.load(str(out / "labelsTr" / lumir_file(*pair["moving"][1:]))).dataobj)
    return mean_dice(f, m, labels)


def readme(pairs: list[dict], n_labels: int, zero: list[float], seed: int) -> str:
    rows = "\n".join(
        f"| {p['fixed'][1]:04d}_0000 ({p['fixed'][0]}) | {p['moving'][1]:04d}_{p['moving'][2]} "
        f"({p['moving'][0]}) | {p['kind']} | {d:.3f} |"
        for p, d in zip(pairs, zero)
    )
    return f"""# LUMIR-like benchmark set (generated; not for redistribution outside the project)

Made by `python -m bench.make_lumir_like --seed {seed}` (see its docstring for every step). 160x224x192, 1 mm, RAS array
order, identity affine, uint8 in [0, 255], skull-stripped (background exactly 0), affinely aligned (ANTs) to the
MNI ICBM152 2009a brain template. `imagesTr/LUMIRMRI_SSSS_0000` = real T1, `_0001` = T2-like, `_0002` = FLAIR-like
(synthetic, drawn from the subject's DLMUSE labels by `caio.synth.contrast_models.synthesize_image`);
`labelsTr/` = DLMUSE labels (148 ROIs, names in `muse_dict.csv` of the source) for every image.
Pairs in `LUMIR_like_dataset.json` ("validation", LUMIR layout); {n_labels} non-zero ROIs are present in every
subject (`labels.json`). Zero-field Dice = mean over those ROIs with the identity field.

| fixed | moving | kind | zero-field Dice |
|---|---|---|---|
{rows}

## Provenance and licences
* T1 + DLMUSE: `../shared/data/nichart_ixi_dlmuse_2mm` = IXI (Hammersmith) T1 scans, 2 mm, with DLMUSE
  parcellations, from GitHub `CBICA/NiChart_Project` (history path `test_data/processed/IXI/...`).
  IXI data: CC BY-SA 3.0 (brain-development.org/ixi-dataset). NiChart / DLMUSE derivatives: SBIA Contribution and
  Software License Agreement (`LICENSE_SBIA_NiChart.md` there; research use only; Part B must accompany
  redistribution). Derived images here inherit both; keep them inside the project.
* Template: MNI ICBM152 2009a nonlinear symmetric T1 (nilearn's converted copy), (c) 1993-2009 Louis Collins,
  McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University; use, copy, modify and
  distribute permitted with this notice.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-same", type=int, default=8, help="T1 <- T1 pairs (default 8)")
    p.add_argument("--n-cross", type=int, default=6, help="T1 <- T2-/FLAIR-like pairs (default 6, alternating)")
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument("--out", type=Path, default=LUMIR_LIKE)
    p.add_argument(
        "--skip-subjects",
        type=int,
        default=0,
        help="leave out the first K complete subjects of the seeded order (held-out set: 28, the default set's)",
    )
    p.add_argument("--id-base", type=int, default=SAME_ID0, help="first LUMIR id (held-out set: 7000)")
    p.add_argument(
        "--reserved", action="store_true", help=f"choose among the first {N_RESERVED} subjects (held-out set 2)"
    )
    args = p.parse_args(argv)
    build(args.out, args.n_same, args.n_cross, args.seed, args.skip_subjects, args.id_base, args.reserved)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
