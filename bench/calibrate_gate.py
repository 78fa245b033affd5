"""Calibrate the contrast gate (caio.contrast.gate) on real and synthetic same/cross-contrast pairs.

One command (about 5-10 min on 2 shared cores):

    nice -n 10 python -m bench.calibrate_gate [--shared ../shared] [--out docs/gate_calibration.md]

Every volume is brought roughly onto the LUMIR grid (RAS array order, 1 mm, 160x224x192,
skull-stripped, [0, 255]): reoriented with nibabel, resampled to 1 mm (scipy zoom), masked
by its brain mask, and cut around the mask centroid (an integer translation; no affine fit).

Same-contrast pairs: real T1s of different subjects (voxelmorph test scan, niivue norm.mgz,
LapIRN OASIS A/B, MNI152 2009a, fsaverage brain, SPM avg152T1, Colin27), IXI 2 mm T1 pairs
(skull-stripped with their DLMUSE labels), and synthetic T1/T2/FLAIR/PD pairs of the same
contrast from different label maps (caio.synth.generator). Cross-contrast pairs: SPM avg152 T1 vs T2/PD
(identical anatomy), avg152 T2/PD vs the real T1s, and synthetic T2/FLAIR/PD vs real and
synthetic T1s (same and different anatomy). Writes the score table, the chosen threshold and
the error rate to ``--out``, and a JSON of every score beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from bench.common import REPO, VXM_AFFINE
from caio.contrast.gate import GateConfig, gate_score, tissue_score
from caio.io import LUMIR_SHAPE
from caio.synth import generator as synth

log = logging.getLogger("calibrate_gate")


# ----------------------------------------------------------------------------------------
# Bringing volumes onto a LUMIR-like grid
# ----------------------------------------------------------------------------------------


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array in RAS axis order and its voxel sizes (mm)."""
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(data, ornt)
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(0))[ornt[:, 0].astype(int)]
    return np.ascontiguousarray(ras), sizes


def lumir_like(data: np.ndarray, affine: np.ndarray, mask: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Skull-strip, resample to 1 mm, cut 160x224x192 around the mask centroid, scale to [0, 255]."""
    image, sizes = to_ras(np.asarray(data, np.float32), affine)
    mask, _ = to_ras(np.asarray(mask, np.uint8), affine)
    if not np.allclose(sizes, 1.0, atol=0.05):
        image = ndimage.zoom(image, sizes, order=1)
        mask = ndimage.zoom(mask, sizes, order=0)
    image = np.where(mask > 0, np.clip(image, 0, None), 0)
    shift = np.round(centre - np.array(ndimage.center_of_mass(mask > 0))).astype(int)
    out = np.zeros(LUMIR_SHAPE, np.float32)
    src = tuple(slice(max(0, -s), min(n, t - s)) for s, n, t in zip(shift, image.shape, LUMIR_SHAPE))
    dst = tuple(slice(a.start + s, a.stop + s) for a, s in zip(src, shift))
    out[dst] = image[src]
    top = np.percentile(out[out > 0], 99.5)
    return np.round(np.clip(out / top, 0, 1) * 255).astype(np.float32)


def mni_brain_mask_in(shared: Path, target: nib.Nifti1Image) -> np.ndarray:
    """MNI152 2009a brain (T1 > 0) resampled (nearest) into ``target``'s voxel grid via world coordinates."""
    mni = nib.load(str(shared / "data/mni_icbm152_2009a_nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    vox = np.indices(target.shape[:3]).reshape(3, -1)
    world = target.affine[:3, :3] @ vox + target.affine[:3, 3:]
    mni_vox = np.linalg.inv(mni.affine)[:3, :3] @ world + np.linalg.inv(mni.affine)[:3, 3:]
    values = ndimage.map_coordinates(np.asarray(mni.dataobj, np.float32), mni_vox, order=0, cval=0)
    return values.reshape(target.shape[:3]) > 0


def load_volumes(shared: Path, n_ixi: int, n_synth: int, seed: int) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (contrast, LUMIR-like volume)."""
    data = shared / "data"
    vols: dict[str, tuple[str, np.ndarray]] = {}
    vxm = np.load(data / "voxelmorph_test_scan/test_scan.npz")["vol"].astype(np.float32)
    vxm_ras, _ = to_ras(vxm, VXM_AFFINE)
    centre = np.array(ndimage.center_of_mass(vxm_ras > 0))
    vols["vxm"] = ("t1", lumir_like(vxm, VXM_AFFINE, vxm > 0, centre))

    def add(name: str, contrast: str, path: Path, mask: np.ndarray | None = None) -> None:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj, np.float32).squeeze()
        vols[name] = (contrast, lumir_like(arr, img.affine, arr > 0 if mask is None else mask, centre))

    add("norm", "t1", data / "niivue_freesurfer_subject/norm.mgz")
    add("oasisA", "t1", data / "lapirn_oasis_pair/image_A_160x192x144.nii.gz")
    add("oasisB", "t1", data / "lapirn_oasis_pair/image_B_160x192x144.nii.gz")
    add("mni09a", "t1", data / "mni_icbm152_2009a_nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    add("fsavg", "t1", data / "freesurfer_fsaverage/brain.mgz")
    spm = data / "spm_canonical"
    spm_mask = mni_brain_mask_in(shared, nib.load(str(spm / "avg152T1.nii.gz")))
    for contrast, file in (("t1", "avg152T1"), ("t2", "avg152T2"), ("pd", "avg152PD"), ("t1", "single_subj_T1")):
        add(f"spm_{file}", contrast, spm / f"{file}.nii.gz", spm_mask)
    t1s = sorted((data / "nichart_ixi_dlmuse_2mm/T1").glob("*_T1.nii.gz"))[:n_ixi]
    for path in t1s:
        labels = path.parent.parent / "DLMUSE" / path.name.replace("_T1.nii.gz", "_T1_DLMUSE.nii.gz")
        if labels.exists():
            add(f"ixi_{path.name[:9]}", "t1", path, np.asarray(nib.load(str(labels)).dataobj) > 0)
    vols.update(synthetic_volumes(data / "synthseg_label_maps", n_synth, seed))
    return vols


def synthetic_volumes(folder: Path, n: int, seed: int) -> dict[str, tuple[str, np.ndarray]]:
    """T1/T2/FLAIR/PD images of ``n`` label maps, from caio.synth.generator (its default randomisation)."""

    out = {}
    for i, path in enumerate(sorted(folder.glob("*.nii.gz"))[:n]):
        subject = synth.make_subject(
            synth.load_label_map_ras(path), ["t1", "t2", "flair", "pd"], synth.generator_for(seed, i), source=path
        )
        for contrast, image in subject.images.items():
            out[f"syn{i:02d}_{contrast}"] = (contrast, image.astype(np.float32))
    return out


# ----------------------------------------------------------------------------------------
# Pairs, scores, threshold
# ----------------------------------------------------------------------------------------


def plan_pairs(vols: dict[str, tuple[str, np.ndarray]]) -> list[tuple[str, str, str, bool]]:
    """(group, name_a, name_b, cross_contrast)."""
    real_t1 = [k for k in vols if not k.startswith(("ixi_", "syn")) and vols[k][0] == "t1"]
    ixi = [k for k in vols if k.startswith("ixi_")]
    syn = sorted({k.split("_")[0] for k in vols if k.startswith("syn")})
    pairs = [("real T1 vs real T1", a, b, False) for a, b in itertools.combinations(real_t1, 2)]
    pairs += [("IXI T1 vs IXI T1", a, b, False) for a, b in zip(ixi[0::2], ixi[1::2])]
    pairs += [("IXI T1 vs real T1", a, real_t1[i % len(real_t1)], False) for i, a in enumerate(ixi[:10])]
    for i, s in enumerate(syn):
        other = syn[(i + 1) % len(syn)]
        pairs.append(("synth T1 vs real T1", f"{s}_t1", "vxm", False))
        for c in ("t1", "t2", "flair", "pd"):
            pairs.append((f"synth {c.upper()} vs synth {c.upper()} (other subject)", f"{s}_{c}", f"{other}_{c}", False))
        for c in ("t2", "flair", "pd"):
            pairs.append((f"synth {c.upper()} vs real T1", f"{s}_{c}", real_t1[i % len(real_t1)], True))
            pairs.append((f"synth {c.upper()} vs synth T1 (same subject)", f"{s}_{c}", f"{s}_t1", True))
            pairs.append((f"synth {c.upper()} vs synth T1 (other subject)", f"{s}_{c}", f"{other}_t1", True))
    pairs += [
        ("SPM avg152 T1 vs T2/PD", "spm_avg152T1", "spm_avg152T2", True),
        ("SPM avg152 T1 vs T2/PD", "spm_avg152T1", "spm_avg152PD", True),
    ]
    for c in ("T2", "PD"):
        pairs += [
            (f"SPM avg152 {c} vs real T1", f"spm_avg152{c}", b, True) for b in real_t1 if not b.startswith("spm_avg152")
        ]
    return pairs


def choose_threshold(same: np.ndarray, cross: np.ndarray) -> tuple[float, int]:
    """Midpoint of the widest gap minimising errors (ties: most balanced); returns (threshold, errors)."""
    candidates = np.unique(np.concatenate([same, cross]))
    best = (math.inf, -math.inf, 0.0)
    for lo, hi in zip(candidates[:-1], candidates[1:]):
        t = 0.5 * (lo + hi)
        errors = int((same < t).sum() + (cross >= t).sum())
        margin = min(np.abs(same - t).min(), np.abs(cross - t).min())
        if (errors, -margin) < (best[0], -best[1]):
            best = (errors, margin, t)
    return float(best[2]), int(best[0])


def t1_relevant(pairs) -> np.ndarray:
    """Pairs LUMIR can contain: T1 vs T1 (same) and T1 vs another contrast (cross).

    Same-contrast pairs of two non-T1 images (synthetic T2-T2, FLAIR-FLAIR, PD-PD) are
    reported but do not set the threshold."""
    non_t1_same = ("synth T2 vs synth T2", "synth FLAIR vs synth FLAIR", "synth PD vs synth PD")
    return np.array([p[3] or not p[0].startswith(non_t1_same) for p in pairs])


def evaluate(vols, pairs, cfg: GateConfig) -> list[float]:
    return [gate_score(torch.from_numpy(vols[a][1]), torch.from_numpy(vols[b][1]), cfg) for _, a, b, _ in pairs]


def evaluate_tissue(vols, pairs, cfg: GateConfig) -> list[float]:
    return [tissue_score(torch.from_numpy(vols[a][1]), torch.from_numpy(vols[b][1]), cfg) for _, a, b, _ in pairs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "gate_calibration.md")
    parser.add_argument("--n-ixi", type=int, default=24)
    parser.add_argument("--n-synth", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="rewrite the report from the scores JSON of an earlier run (no recomputation)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    start = time.time()
    if args.from_json:
        cached = json.loads(args.from_json.read_text())
        pairs = [(p["group"], p["a"], p["b"], p["cross"]) for p in cached["pairs"]]
        raw = [
            (GateConfig(factor=c["factor"], sigma_vox=c["sigma_vox"]), np.array(c["scores"]), c["cpu_s"])
            for c in cached["sweep"]
        ]
        tissue = np.array([p.get("tissue", math.nan) for p in cached["pairs"]])
        seconds = cached["seconds"]
    else:
        vols = load_volumes(args.shared, args.n_ixi, args.n_synth, args.seed)
        pairs = plan_pairs(vols)
        log.info("%d volumes, %d pairs (%.0f s)", len(vols), len(pairs), time.time() - start)
        raw = []
        default = GateConfig()
        configs = [GateConfig(factor=default.factor, sigma_vox=s) for s in (1.0, 1.5, 2.5)]
        configs += [GateConfig(factor=f, sigma_vox=default.sigma_vox) for f in (2, 8)]
        for cfg in configs:
            t0 = time.process_time()
            scores = np.array(evaluate(vols, pairs, cfg))
            raw.append((cfg, scores, (time.process_time() - t0) / len(pairs)))
        tissue = np.array(evaluate_tissue(vols, pairs, GateConfig()))
        seconds = time.time() - start
    labels = np.array([p[3] for p in pairs])
    t1_only = t1_relevant(pairs)
    sweep = []
    for cfg, scores, cpu in raw:
        thr, errors = choose_threshold(scores[~labels & t1_only], scores[labels & t1_only])
        gap = scores[~labels].min() - scores[labels].max()
        sweep.append((cfg, scores, thr, errors, gap, cpu))
        log.info(
            "factor %d sigma %.1f: threshold %.3f errors %d gap %.3f cpu %.3f s/pair",
            cfg.factor,
            cfg.sigma_vox,
            thr,
            errors,
            gap,
            cpu,
        )
    default = GateConfig()
    chosen = next(s for s in sweep if s[0].factor == default.factor and s[0].sigma_vox == default.sigma_vox)
    write_report(args.out, pairs, sweep, chosen, default, seconds, tissue)
    return 0


def pair_groups(pairs) -> list[tuple[str, list[int]]]:
    """``(group, indices of its pairs)``, same-contrast groups first, then by name."""
    groups = sorted({p[0] for p in pairs}, key=lambda g: (any(p[3] for p in pairs if p[0] == g), g))
    return [(g, [i for i, p in enumerate(pairs) if p[0] == g]) for g in groups]


def tissue_lines(pairs, scores: np.ndarray, tissue: np.ndarray, default: GateConfig) -> list[str]:
    """The tissue score per group and what the whole decision registers each group as."""
    lines = [
        "",
        "## Tissue score",
        "",
        f"Signed LNCC at factor {default.tissue_factor} inside the tissue (both images above their "
        f"{default.tissue_quantile:g} brain quantile), computed for every pair with the defaults. A same-contrast "
        f"call with a tissue score below {default.tissue_below:g} is ambiguous, and the engine registers ambiguous "
        "pairs as cross-contrast (MIND-SSC). Real FLAIR against T1 of the same patient, which scores 0.60-0.67 on "
        "the main score, reaches 0.07-0.09 here (tuning patient aurora of `bench/lesion_contrasts.py`: "
        "`caio gate` on its cached cases). The threshold is the midpoint between that and the lowest tissue score "
        "of a T1-T1 pair that the main score alone calls same-contrast and not ambiguous (the only pairs the "
        "tissue score can move): the last column counts those it moves.",
        "",
        "| group | kind | n | tissue min | median | max | ambiguous by the main score | moved by the tissue score |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for g, idx in pair_groups(pairs):
        t = tissue[idx]
        same = [i for i in idx if scores[i] >= default.threshold]
        by_score = sum(bool(scores[i] < default.ambiguous_below) for i in same)
        moved = sum(bool(scores[i] >= default.ambiguous_below and tissue[i] < default.tissue_below) for i in same)
        lines.append(f"{_group_cells(g, pairs, idx, t)} {by_score} / {len(idx)} | {moved} / {len(idx)} |")
    return lines


def _group_cells(group: str, pairs, idx, values: np.ndarray) -> str:
    """A group's first table cells: name, kind, pair count, and the min / median / max of ``values`` (NaN ignored)."""
    kind = "cross" if pairs[idx[0]][3] else "same"
    spread = f"{np.nanmin(values):.3f} | {np.nanmedian(values):.3f} | {np.nanmax(values):.3f}"
    return f"| {group} | {kind} | {len(idx)} | {spread} |"


def write_report(out: Path, pairs, sweep, chosen, default: GateConfig, seconds: float, tissue: np.ndarray) -> None:
    from caio.io import write_json_atomic

    cfg, scores, thr, errors, gap, cpu = chosen
    labels = np.array([p[3] for p in pairs])
    rel = t1_relevant(pairs)
    same, cross = scores[~labels], scores[labels]
    wrong = int((same < default.threshold).sum() + (cross >= default.threshold).sum())
    wrong_rel = int((scores[~labels & rel] < default.threshold).sum() + (cross >= default.threshold).sum())
    fn = int((cross >= default.threshold).sum())
    lines = [
        "# Contrast gate calibration (`bench/calibrate_gate.py`)",
        "",
        f"Command: `nice -n 10 python -m bench.calibrate_gate` ({seconds:.0f} s, 1 thread). "
        f"{len(pairs)} pairs: {int((~labels).sum())} same-contrast, {int(labels.sum())} cross-contrast.",
        "",
        f"**Defaults (`caio.contrast.gate.GateConfig`)**: factor {default.factor}, sigma_vox {default.sigma_vox}, "
        f"threshold {default.threshold}. With them: same-contrast scores {same.min():.3f} .. {same.max():.3f} "
        f"(median {np.median(same):.3f}), cross-contrast {cross.min():.3f} .. {cross.max():.3f} "
        f"(median {np.median(cross):.3f}); gap {gap:.3f}.",
        "",
        f"* T1-relevant pairs (T1-T1 same, T1-other cross; {int(rel.sum())} pairs), which set the threshold: "
        f"**{wrong_rel} misclassified ({100 * wrong_rel / max(int(rel.sum()), 1):.1f} %)**; the error-minimising "
        f"threshold on them is {thr:.3f} ({errors} errors).",
        f"* All {len(pairs)} pairs (including non-T1 same-contrast pairs): {wrong} misclassified "
        f"({100 * wrong / len(pairs):.1f} %); cross-contrast pairs called same: {fn} / {int(labels.sum())}.",
        f"* CPU time {cpu:.3f} s per full-size pair (1 thread, process time).",
        "",
        "Reading: T1-T1 and T1-vs-T2/PD pairs separate cleanly at every setting. T1-vs-FLAIR pairs do not: "
        "CSF is dark in both, so the local correlation is positive wherever CSF/tissue edges dominate a "
        "window, and only the GM/WM inversion disagrees. Same-contrast pairs of two non-T1 images (low GM/WM "
        "contrast in synthetic FLAIR/PD) can fall below the threshold; LUMIR has no such pairs. Where the "
        "modality codes of a pair differ, force the decision instead of trusting the score.",
        "",
        "## Score per pair group (defaults)",
        "",
        "| group | kind | n | min | median | max | misclassified |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for g, idx in pair_groups(pairs):
        s = scores[idx]
        is_cross = pairs[idx[0]][3]
        bad = int((s >= default.threshold).sum() if is_cross else (s < default.threshold).sum())
        lines.append(f"{_group_cells(g, pairs, idx, s)} {bad} |")
    lines += [
        "",
        "## Parameter sweep",
        "",
        "| factor | sigma_vox | best threshold (T1-relevant) | errors there | gap, all pairs (min same - max cross) "
        "| CPU s/pair |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c, _, t, e, gp, cp in sweep:
        lines.append(f"| {c.factor} | {c.sigma_vox} | {t:.3f} | {e} | {gp:.3f} | {cp:.3f} |")
    lines += tissue_lines(pairs, scores, tissue, default)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp_{out.name}")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    write_json_atomic(
        out.with_suffix(".json"),
        {
            "defaults": {"factor": default.factor, "sigma_vox": default.sigma_vox, "threshold": default.threshold},
            "seconds": seconds,
            "pairs": [
                {"group": p[0], "a": p[1], "b": p[2], "cross": bool(p[3]), "score": float(x), "tissue": float(t)}
                for p, x, t in zip(pairs, scores, tissue)
            ],
            "sweep": [
                {"factor": c.factor, "sigma_vox": c.sigma_vox, "cpu_s": cp, "scores": [float(v) for v in sc]}
                for c, sc, _, _, _, cp in sweep
            ],
        },
    )
    log.info("wrote %s", out)


if __name__ == "__main__":
    sys.exit(main())
