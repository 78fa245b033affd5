#!/usr/bin/env python
"""Regenerate ``test_data/`` (a tiny LUMIR-style validation folder) from ``../shared/data``.

Usage (from the repository root; deterministic, about half a minute on 2 cores)::

    python scripts/make_test_data.py [--shared ../shared] [--out test_data]

Subjects (real anatomy, see test_data/README.md):

* A = voxelmorph test scan (Apache-2.0), already on the LUMIR grid in LIA order -> RAS.
* B = niivue FreeSurfer subject (BSD-2), 256^3 LIA -> RAS, affinely aligned to A by
  :func:`caio.synth.generator.fit_template_affine` (label centroids) and resampled onto the LUMIR grid.

Files: 3455_0000 = A T1, 3454_0000 = B T1, 4024_0000 = A T1 (same scan again, so that the
multi-modal pair uses the organizers' ID ranges), 4033_0001 = T2-like image synthesized from
B's labels by :func:`caio.synth.generator.synthesize_image`. Pairs: 3455_0000 <- 3454_0000 (T1-T1) and
4024_0000 <- 4033_0001 (T1 fixed <- T2-like moving, different subjects).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from caio.io import LUMIR_SHAPE, write_json_atomic, write_nifti_atomic
from caio.synth.generator import (
    SynthConfig,
    brain_mask,
    canonical_labels,
    fit_template_affine,
    generator_for,
    load_label_map_ras,
    resample_image,
    resample_labels,
    sampling_grid,
    synthesize_image,
)

SEED = 20251125
MASK_DILATION = 2
"""Skull-strip mask = labels > 0 grown by this many voxels (keeps sulcal/outer CSF, as SynthStrip)."""

log = logging.getLogger("make_test_data")


def lia_to_ras(array: np.ndarray) -> np.ndarray:
    """FreeSurfer-conformed LIA array order -> RAS: swap axes 1 and 2, reverse axes 0 and 2."""
    return np.ascontiguousarray(np.flip(np.swapaxes(array, 1, 2), axis=(0, 2)))


def subject_a(shared: Path) -> tuple[np.ndarray, np.ndarray]:
    """voxelmorph test scan: (image in [0, 255] float32, aseg labels int32), RAS 160x224x192."""
    data = np.load(shared / "data/voxelmorph_test_scan/test_scan.npz")
    image = lia_to_ras(data["vol"]).astype(np.float32) * 255.0
    labels = lia_to_ras(data["seg"]).astype(np.int32)
    assert image.shape == LUMIR_SHAPE, image.shape
    mask = brain_mask(labels, MASK_DILATION) & (image > 0)
    return np.where(mask, image, 0.0).astype(np.float32), labels


def subject_b(shared: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """niivue FreeSurfer subject aligned to A: (T1 image, aseg labels, skull-strip mask)."""
    folder = shared / "data/niivue_freesurfer_subject"
    labels_src = canonical_labels(load_label_map_ras(folder / "aparc.a2009s+aseg.mgz"))
    norm_src = load_label_map_ras(folder / "norm.mgz").astype(np.float32)  # integer-valued image
    affine = fit_template_affine(labels_src, LUMIR_SHAPE, what="niivue aparc.a2009s+aseg.mgz")
    grid = sampling_grid(LUMIR_SHAPE, affine)
    labels = resample_labels(labels_src, grid)
    image = resample_image(norm_src, grid)
    mask = brain_mask(labels, MASK_DILATION) & (image > 0)
    return np.where(mask, image, 0.0).astype(np.float32), labels, mask


def rescale_to_255(image: np.ndarray, mask: np.ndarray, percentile: float = 99.9) -> np.ndarray:
    """LUMIR-like intensities: the brain's ``percentile`` maps to 255 (clipped), background 0."""
    top = float(np.percentile(image[mask], percentile))
    return np.where(mask, np.clip(image * (255.0 / top), 0.0, 255.0), 0.0).astype(np.float32)


def to_uint8_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Round to uint8 with brain voxels >= 1 (so ``image > 0`` is the brain mask) and background 0."""
    out = np.clip(np.round(image), 1, 255).astype(np.uint8)
    out[~mask] = 0
    return out


def dice_per_label(a: np.ndarray, b: np.ndarray, labels: list[int]) -> dict[int, float]:
    return {k: 2.0 * np.sum((a == k) & (b == k)) / max(np.sum(a == k) + np.sum(b == k), 1) for k in labels}


def dataset_json(pairs: list[tuple[str, str]]) -> dict:
    """Dataset JSON in the organizers' layout (spec section 1.3)."""
    return {
        "name": "LUMIR",
        "release": "0.1",
        "description": "caio test_data: tiny LUMIR-style validation set from two real subjects (see README.md)",
        "license": "see README.md (Apache-2.0 / BSD-2-Clause sources)",
        "reference": "voxelmorph test scan; niivue FreeSurfer demo subject",
        "pairings": "unpaired",
        "provided_data": {"0": ["image"]},
        "modality": {"0": "T1w Brain MRI", "1": "T2w-like Brain MRI (synthetic, from labels)"},
        "labels": {},
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": list(LUMIR_SHAPE)},
        "numTraining": 0,
        "training": [],
        "numValidation": len(pairs),
        "validation": [{"fixed": f"./imagesVal/{f}", "moving": f"./imagesVal/{m}"} for f, m in pairs],
    }


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=repo.parent / "shared", help="shared folder (has data/)")
    parser.add_argument("--out", type=Path, default=repo / "test_data", help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()

    image_a, labels_a = subject_a(args.shared)
    image_b, labels_b, mask_b = subject_b(args.shared)
    mask_a = image_a > 0
    image_a, image_b = rescale_to_255(image_a, mask_a), rescale_to_255(image_b, mask_b)
    t2_b = synthesize_image(
        canonical_labels(labels_b), "t2", generator_for(SEED, 4033), SynthConfig(thick_slice_prob=0.0), mask=mask_b
    )[0, 0].numpy()

    shared_labels = sorted(set(np.unique(labels_a).tolist()) & set(np.unique(labels_b).tolist()))
    dice = dice_per_label(labels_a, labels_b, [k for k in shared_labels if k > 0])
    log.info("affine-only Dice A<-B over %d shared labels: %.3f", len(dice), float(np.mean(list(dice.values()))))

    volumes = {
        "LUMIRMRI_3455_0000.nii.gz": (to_uint8_image(image_a, mask_a), labels_a),
        "LUMIRMRI_3454_0000.nii.gz": (to_uint8_image(image_b, mask_b), labels_b),
        "LUMIRMRI_4024_0000.nii.gz": (to_uint8_image(image_a, mask_a), labels_a),
        "LUMIRMRI_4033_0001.nii.gz": (t2_b.astype(np.uint8), labels_b),
    }
    for sub in ("imagesVal", "labelsVal"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for name, (image, labels) in volumes.items():
        write_nifti_atomic(args.out / "imagesVal" / name, image)
        write_nifti_atomic(args.out / "labelsVal" / name, labels.astype(np.uint8))
    pairs = [
        ("LUMIRMRI_3455_0000.nii.gz", "LUMIRMRI_3454_0000.nii.gz"),
        ("LUMIRMRI_4024_0000.nii.gz", "LUMIRMRI_4033_0001.nii.gz"),
    ]
    write_json_atomic(args.out / "LUMIR25_dataset.json", dataset_json(pairs))
    write_json_atomic(
        args.out / "labels.json",
        {
            "description": "FreeSurfer aseg labels present in both subjects (use for Dice/HD95 of test_data; "
            "includes 0 like the LUMIR lists)",
            "labels": shared_labels,
            "affine_only_dice": {str(k): round(v, 4) for k, v in dice.items()},
        },
    )
    log.info("wrote %s in %.1f s", args.out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
