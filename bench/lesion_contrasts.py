"""Known-warp recovery on real T1 / T2 / FLAIR of brain-tumour patients: cross-contrast registration with pathology.

Data: ``../shared/data/brainlesion_multicontrast`` (4 patients; T1, T2 and FLAIR of each, co-registered,
skull-stripped, 1 mm; BraTS / TCIA / AURORA terms: the data stays out of the repository, cases are built under
``bench/out/cache``). Per patient, contrast (T2, FLAIR), direction and seed:

* ``t1-fixed``: fixed = the T1 warped by a known smooth field ``v`` (``fixed(x) = T1(x + v(x))``), moving = the T2 or
  FLAIR as acquired; ``other-fixed``: fixed = the T2 or FLAIR warped by ``v``, moving = the T1. The true answer is
  ``v`` (:func:`bench.real_cross.known_warp`, largest vector ``--max-disp`` voxels).
* Images are cropped to the patient's brain box (8 voxels of margin) and scaled by their brain's 99.5th
  percentile, for every method alike.
* Scored: endpoint error ``|u - v|`` (mm = voxels) inside the warped brain mask, mean and 95th percentile, outside
  the lesion and inside it. Lesion = FLAIR hyperintensity (brain voxels above median + 3 robust standard deviations,
  opened, components of at least 200 voxels, dilated by 2), warped with the brain mask.

Tuning and reporting: settings are chosen on the patients of :data:`TUNING` (``--patients aurora
brats_gli_00001``) and reported on those of :data:`REPORTING`, never used to choose anything.

Methods: ``zero`` (no registration), ``caio`` (``caio.engine.register``, similarity "auto" unless ``--similarity``,
each ``--config`` on the same cases), and the peers of :mod:`bench.methods` in 2-thread worker subprocesses:
``greedy`` (NMI), ``ants`` (SyN, Mattes), ``convexadam`` (MIND). Rows are appended to the JSON as they finish, and
``--reuse FILE`` takes rows of an earlier run instead of recomputing them (peers take minutes per case)::

    python -m bench.lesion_contrasts --methods zero caio                                  # caio only, all 16 cases
    python -m bench.lesion_contrasts --methods greedy ants convexadam --directions t1-fixed  # peers, 8 cases
    python -m bench.lesion_contrasts --methods caio --config "" "mind_remapped_levels=()" --reuse OLD.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from bench.common import (
    DATA,
    OUT,
    add_out_argument,
    add_threads_argument,
    keep_row,
    markdown_header,
    markdown_row,
    run_worker,
    save_nifti,
    stamped,
    write_table,
)

LESION_DATA = DATA / "brainlesion_multicontrast"
PATIENTS = ("aurora", "brats_gli_00001", "tcga_du_7294", "tcia_example")
TUNING = PATIENTS[:2]
"""Patients whose cases chose caio's cross-contrast settings (issue 32, 7 December)."""
REPORTING = PATIENTS[2:]
"""Patients never used to choose a setting: the figures reported for this benchmark."""
CACHE = OUT / "cache"
PEERS = ("greedy", "ants", "convexadam")


def _read(patient: str, contrast: str) -> np.ndarray:
    return np.asarray(nib.load(str(LESION_DATA / patient / f"{contrast}.nii.gz")).dataobj, dtype=np.float32)


def _scaled(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    return image / max(float(np.percentile(image[brain], 99.5)), 1e-6) * brain


def lesion_mask(flair: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """FLAIR hyperintensity: brain voxels above median + 3 robust standard deviations (1.4826 MAD), opened,
    components of at least 200 voxels, dilated by 2 voxels."""
    from scipy import ndimage

    values = flair[brain]
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    bright = ndimage.binary_opening((flair > median + 3 * spread) & brain)
    labels, count = ndimage.label(bright)
    sizes = ndimage.sum(bright, labels, range(1, count + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(sizes >= 200))
    return ndimage.binary_dilation(keep, iterations=2) & brain


def build_case(patient: str, contrast: str, direction: str, seed: int, max_disp: float) -> Path:
    """The case folder (cached): ``fixed``/``moving``/``truth`` (``(3, ...)`` voxels)/``brain``/``lesion`` NIfTIs."""
    from bench.real_cross import known_warp
    from caio import spatial
    from caio.engine.images import foreground_box

    case = CACHE / f"lesion_{patient}_{contrast}_{direction}_s{seed}_d{max_disp:g}"
    if (case / "meta.json").is_file():
        return case
    t1, other, flair = (_read(patient, c) for c in ("t1", contrast, "flair"))
    brain = (t1 > 0) & (other > 0)
    box = foreground_box(*(torch.from_numpy(brain.astype(np.float32))[None, None],) * 2, 8)
    t1, other, flair, brain = (a[box] for a in (t1, other, flair, brain))
    lesion = lesion_mask(flair, brain)
    t1, other = _scaled(t1, brain), _scaled(other, brain)
    fixed_native, moving = (t1, other) if direction == "t1-fixed" else (other, t1)
    truth = known_warp(tuple(t1.shape), max_disp, seed)

    def warped(a: np.ndarray, mode: str = "bilinear") -> np.ndarray:
        return spatial.warp(torch.from_numpy(a.astype(np.float32))[None, None], truth, mode=mode)[0, 0].numpy()

    case.mkdir(parents=True, exist_ok=True)
    eye = np.eye(4)
    save_nifti(case / "fixed.nii.gz", warped(fixed_native), eye)
    save_nifti(case / "moving.nii.gz", moving.astype(np.float32), eye)
    save_nifti(case / "truth.nii.gz", np.moveaxis(truth[0].numpy(), 0, -1), eye)
    save_nifti(case / "brain.nii.gz", (warped(brain, "nearest") > 0.5).astype(np.uint8), eye)
    save_nifti(case / "lesion.nii.gz", (warped(lesion, "nearest") > 0.5).astype(np.uint8), eye)
    meta = dict(patient=patient, contrast=contrast, direction=direction, seed=seed, max_disp=max_disp)
    meta["lesion_voxels"] = int(lesion.sum())
    (case / "meta.json").write_text(json.dumps(meta))
    return case


def score(case: Path, disp: np.ndarray) -> dict:
    """Endpoint errors of a ``(3, D0, D1, D2)`` voxel displacement: brain without lesion, lesion, mean and p95."""
    truth = np.moveaxis(np.asarray(nib.load(str(case / "truth.nii.gz")).dataobj, np.float32), -1, 0)
    brain = np.asarray(nib.load(str(case / "brain.nii.gz")).dataobj) > 0
    lesion = np.asarray(nib.load(str(case / "lesion.nii.gz")).dataobj) > 0
    error = np.sqrt(((disp - truth) ** 2).sum(axis=0))
    out = {}
    for name, region in (("epe", brain & ~lesion), ("epe_lesion", brain & lesion)):
        values = error[region]
        out[name] = float(values.mean()) if values.size else float("nan")
        out[name + "95"] = float(np.percentile(values, 95)) if values.size else float("nan")
    return out


def run_caio(case: Path, config_text: str, similarity: str) -> tuple[float, np.ndarray, dict]:
    from bench.tune_engine import config_from_text
    from caio.engine import register

    fixed, moving = (
        torch.from_numpy(np.asarray(nib.load(str(case / f"{n}.nii.gz")).dataobj, np.float32))[None, None]
        for n in ("fixed", "moving")
    )
    start = time.perf_counter()
    disp, trace = register(fixed, moving, similarity=similarity, config=config_from_text(config_text))
    seconds = time.perf_counter() - start
    notes = dict(ran=trace.similarity, safeguard=trace.safeguard, rerouted=trace.rerouted, checks=trace.checks)
    return seconds, disp[0].double().numpy(), notes


def worker(method: str, case: Path, result: Path, threads: int) -> None:
    """A peer on one case (run by :func:`bench.common.run_worker`): its row with the scores and seconds."""
    from bench import methods

    seconds, disp = getattr(methods, f"run_{method}")(case, True, threads)
    result.write_text(json.dumps({"case": case.name, "method": method, "seconds": seconds, **score(case, disp)}))


def label(method: str, config: str, similarity: str) -> str:
    """What a row's ``config`` says: caio's configuration, with its similarity when it is not the gate's choice."""
    if method != "caio":
        return ""
    return (f"[{similarity}] " if similarity != "auto" else "") + config


def rows_for(case: Path, method: str, args, config: str) -> dict:
    row = {"case": case.name, "method": method, "config": label(method, config, args.similarity)}
    if method == "zero":
        return {**row, "seconds": 0.0, **score(case, np.zeros((3, *nib.load(str(case / "fixed.nii.gz")).shape)))}
    if method == "caio":
        seconds, disp, notes = run_caio(case, config, args.similarity)
        return {**row, "seconds": seconds, **notes, **score(case, disp)}
    done = run_worker("bench.lesion_contrasts", [method, "--case", str(case)], args.threads, args.timeout, row)
    return {**row, **done}


def table(rows: list[dict]) -> str:
    """Per method and configuration: mean EPE outside and inside the lesion, cases worse than no registration,
    time; then per case the EPE of every method."""

    def key(r: dict) -> str:
        return r["method"] + (f" `{r['config']}`" if r.get("config") else "")

    zero = {r["case"]: r["epe"] for r in rows if r["method"] == "zero" and "epe" in r}
    lines = markdown_header(["method", "cases", "EPE (mm)", "EPE p95", "EPE lesion", "worse than zero", "s/case"])
    for name in dict.fromkeys(key(r) for r in rows):
        sel = [r for r in rows if key(r) == name and "epe" in r]
        if not sel:
            continue
        worse = sum(r["epe"] > zero.get(r["case"], np.inf) for r in sel)
        cells = [np.mean([r[k] for r in sel]) for k in ("epe", "epe95", "epe_lesion", "seconds")]
        lines.append(markdown_row([name, len(sel), *(f"{c:.2f}" for c in cells[:3]), worse, f"{cells[3]:.1f}"]))
    names = list(dict.fromkeys(key(r) for r in rows))
    lines += ["", *markdown_header(["case", *names])]
    for case in dict.fromkeys(r["case"] for r in rows):
        by = {key(r): r for r in rows if r["case"] == case}
        cells = [f"{by[k]['epe']:.2f}" if "epe" in by.get(k, {}) else "–" for k in names]
        lines.append(markdown_row([case.removeprefix("lesion_"), *cells]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lesion_contrasts", description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", nargs="+", default=list(PATIENTS), choices=PATIENTS)
    p.add_argument("--contrasts", nargs="+", default=["t2", "flair"], choices=["t2", "flair"])
    p.add_argument("--directions", nargs="+", default=["t1-fixed", "other-fixed"], choices=["t1-fixed", "other-fixed"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--max-disp", type=float, default=10.0, help="largest vector of the known warp, voxels")
    p.add_argument("--methods", nargs="+", default=["zero", "caio"], choices=["zero", "caio", *PEERS])
    p.add_argument("--similarity", default="auto", help="caio's similarity (default: the gate's choice)")
    p.add_argument("--config", nargs="+", default=[""], help="EngineConfig keyword arguments as Python text")
    p.add_argument("--reuse", type=Path, help="JSON of an earlier run: its rows are kept, not recomputed")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per peer run")
    add_threads_argument(p)
    add_out_argument(p)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--case", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.case, args.result, args.threads)
        return 0
    rows = json.loads(args.reuse.read_text()) if args.reuse else []
    have = {(r["case"], r["method"], r.get("config", "")) for r in rows if "epe" in r}
    cases = [
        build_case(patient, contrast, direction, seed, args.max_disp)
        for patient in args.patients
        for contrast in args.contrasts
        for direction in args.directions
        for seed in args.seeds
    ]
    base = stamped(args.out, "lesion")
    for method in args.methods:  # method-major: an interrupted run keeps whole rows of the first methods
        for config in args.config if method == "caio" else [""]:
            for case in cases:
                if (case.name, method, label(method, config, args.similarity)) in have:
                    continue
                keep_row(base, rows, rows_for(case, method, args, config))
    base.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    write_table(base, table(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
