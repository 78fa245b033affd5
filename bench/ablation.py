"""Ablation of the instance-optimisation cascade on real pairs (Dice, HD95, NDV, time).

Sub-commands (run from the repository root; ``../shared/data`` beside the checkout)::

    nice -n 10 python -m bench.ablation prepare --out bench/out/ablation --ixi-pairs 10 --pretrain-subjects 30
    nice -n 10 python -m bench.ablation run --out bench/out/ablation --configs noio io3 single additive
    nice -n 10 python -m bench.ablation table --out bench/out/ablation

Data (``shared/specs/data_and_peers.md``):

* ``real1mm``: voxelmorph test scan (fixed, 160x192x224) <- niivue FreeSurfer ``norm.mgz`` (moving),
  Dice over the 28 aseg labels of the spec (Destrieux cortex mapped to 3/42).
* ``ixi``: NiChart IXI T1 2 mm full-head pairs (subject 2k fixed, 2k+1 moving, k < ixi-pairs),
  DLMUSE labels present in both maps.
* pretraining set: IXI subjects after the evaluation ones, aligned to the first of them (never
  to an evaluation subject), written as NIfTI for ``caio pretrain``.

Alignment (our own, not ANTs): the moving image is first put on the fixed grid with the two
files' world affines, then a 12-parameter affine is fitted in fixed-voxel coordinates by Adam
on LNCC (:func:`caio.refine.losses.lncc_loss`) at 1/4 and 1/2 resolution, initialised by the
difference of the intensity centroids. Images and labels are resampled once through the whole
chain (labels nearest-neighbour as the evaluator).

Registration runs on a working grid ``--work-factor`` times coarser than the evaluation grid
(CPU budget); its field is upsampled with :func:`caio.spatial.resize_displacement` and scored
on the evaluation grid with :func:`caio.metrics.evaluate.evaluate_pair` (HD95 in voxels of that grid,
NDV % inside the fixed brain/labels). The initial field is ``caio.backbone.training_free.register_training_free``
(``--init tf``) or zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from bench.common import (
    ASEG28,
    DATA,
    IXI,
    VXM_AFFINE,
    add_threads_argument,
    common_labels,
    destrieux_to_aseg,
    evaluator_scores,
    ixi_subjects,
    markdown_header,
    markdown_row,
)
from caio import spatial
from caio.refine.cascade import normalize_image, refine
from caio.refine.settings import CascadeConfig
from caio.similarity.lncc import lncc_loss

CONFIGS = {
    "noio": None,
    "io3": {},
    "single": {"stage_factors": (2,), "residual_scales": (1.0,)},
    "additive": {"composition": "additive"},
    "pretrained": {},
    "steps100": {"steps": 100},
}


# ------------------------------------------------------------------ affine alignment


def _centroid(image: torch.Tensor) -> torch.Tensor:
    grid = spatial.identity_grid(image.shape[2:])
    w = image.clamp_min(0)
    return (grid * w).sum(dim=(2, 3, 4))[0] / w.sum()


def fit_affine(fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``y = c + B (x - c) + t`` (fixed-voxel units) aligning ``moving`` (on the fixed grid) to ``fixed``."""
    f, m = normalize_image(fixed), normalize_image(moving)
    shape = torch.tensor(fixed.shape[2:], dtype=torch.float32)
    c = _centroid(f)
    t = (_centroid(m) - c).clone().requires_grad_(True)
    b = torch.eye(3).requires_grad_(True)
    for factor, iters, lr_t, lr_b in ((4, 80, 0.5, 5e-3), (2, 40, 0.2, 2e-3)):
        s = tuple(max(8, int(round((n - 1) / factor)) + 1) for n in fixed.shape[2:])
        r = (shape - 1) / (torch.tensor(s, dtype=torch.float32) - 1)
        fs, ms = spatial.resize_image(f, s), spatial.resize_image(m, s)
        x = spatial.identity_grid(s) * r.view(1, 3, 1, 1, 1)
        opt = torch.optim.Adam([{"params": [t], "lr": lr_t}, {"params": [b], "lr": lr_b}])
        for _ in range(iters):
            y = (
                c.view(1, 3, 1, 1, 1)
                + torch.einsum("ij,bjxyz->bixyz", b, x - c.view(1, 3, 1, 1, 1))
                + t.view(1, 3, 1, 1, 1)
            )
            loss = lncc_loss(fs, spatial.sample(ms, y / r.view(1, 3, 1, 1, 1)), 2.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return b.detach(), t.detach(), c


def align_case(
    fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray, moving_affine: np.ndarray, moving_seg: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Moving image and labels on the fixed grid after the world + fitted affine (see module doc)."""
    world = torch.tensor(np.linalg.inv(moving_affine) @ fixed_affine, dtype=torch.float32)

    def to_moving(y: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,bjxyz->bixyz", world[:3, :3], y) + world[:3, 3].view(1, 3, 1, 1, 1)

    shape = fixed.shape
    ident = spatial.identity_grid(shape)
    f_t = torch.from_numpy(fixed.astype(np.float32))[None, None]
    m_t = torch.from_numpy(moving.astype(np.float32))[None, None]
    on_grid = spatial.sample(m_t, to_moving(ident), padding_mode="zeros")
    b, t, c = fit_affine(f_t, on_grid)
    with torch.no_grad():
        y = (
            c.view(1, 3, 1, 1, 1)
            + torch.einsum("ij,bjxyz->bixyz", b, ident - c.view(1, 3, 1, 1, 1))
            + t.view(1, 3, 1, 1, 1)
        )
        coords = to_moving(y)
        image = spatial.sample(m_t, coords, padding_mode="zeros")[0, 0].numpy()
    seg = spatial.warp_labels_nearest(moving_seg, (coords - ident)[0].double().numpy())
    return np.clip(image, 0, 255).astype(np.float32), seg.astype(np.int32)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _to_255(image: np.ndarray) -> np.ndarray:
    """Rescale to [0, 255] by the 99.9th percentile of the non-zero voxels (IXI T1 values reach ~5000)."""
    top = float(np.percentile(image[image > 0], 99.9))
    return np.clip(image * (255.0 / top), 0, 255).astype(np.float32)


def prepare(out: Path, ixi_pairs: int, pretrain_subjects: int, parts: list[str]) -> None:
    cases = out / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    if "real1mm" in parts and not (cases / "real1mm.npz").exists():
        scan = np.load(DATA / "voxelmorph_test_scan" / "test_scan.npz")
        src = DATA / "niivue_freesurfer_subject"
        seg, seg_affine = _load(src / "aparc.a2009s+aseg.mgz")
        seg = destrieux_to_aseg(seg)
        norm, norm_affine = _load(src / "norm.mgz")
        fixed = (scan["vol"] * 255.0).astype(np.float32)
        image, mseg = align_case(fixed, VXM_AFFINE, norm * (255.0 / norm.max()), norm_affine, seg)
        np.savez_compressed(
            cases / "real1mm.npz",
            fixed=fixed,
            moving=image,
            fixed_seg=scan["seg"].astype(np.int32),
            moving_seg=mseg,
            labels=np.array(ASEG28),
            mask="fixed",
        )
        print("prepared real1mm", flush=True)
    subjects = ixi_subjects()
    for k in range(ixi_pairs if "ixi" in parts else 0):
        name = f"ixi_{k:02d}"
        if (cases / f"{name}.npz").exists():
            continue
        fixed, fa = _load(IXI / "T1" / f"{subjects[2 * k]}_T1.nii.gz")
        moving, ma = _load(IXI / "T1" / f"{subjects[2 * k + 1]}_T1.nii.gz")
        fixed, moving = _to_255(fixed), _to_255(moving)
        fseg = np.asarray(nib.load(str(IXI / "DLMUSE" / f"{subjects[2 * k]}_T1_DLMUSE.nii.gz")).dataobj).astype(
            np.int32
        )
        mseg0 = np.asarray(nib.load(str(IXI / "DLMUSE" / f"{subjects[2 * k + 1]}_T1_DLMUSE.nii.gz")).dataobj).astype(
            np.int32
        )
        image, mseg = align_case(fixed, fa, moving, ma, mseg0)
        labels = common_labels(fseg, mseg0)
        np.savez_compressed(
            cases / f"{name}.npz",
            fixed=fixed,
            moving=image,
            fixed_seg=fseg,
            moving_seg=mseg,
            labels=np.array(labels),
            mask="labels",
        )
        print("prepared", name, subjects[2 * k], "<-", subjects[2 * k + 1], flush=True)
    if "pretrain" not in parts:
        return
    pre = out / "pretrain_volumes"
    pre.mkdir(exist_ok=True)
    first = 2 * ixi_pairs
    ref, ref_affine = _load(IXI / "T1" / f"{subjects[first]}_T1.nii.gz")
    ref = _to_255(ref)
    for subject in subjects[first : first + pretrain_subjects]:
        path = pre / f"{subject}.nii.gz"
        if path.exists():
            continue
        moving, ma = _load(IXI / "T1" / f"{subject}_T1.nii.gz")
        moving = _to_255(moving)
        image, _ = (
            (ref, None)
            if subject == subjects[first]
            else align_case(ref, ref_affine, moving, ma, np.zeros((2, 2, 2), np.int32))
        )
        nib.save(nib.Nifti1Image(image.astype(np.float32), ref_affine), str(path))
        print("pretrain volume", subject, flush=True)


# ------------------------------------------------------------------ registration + scoring


def run_case(case: Path, config: str, work_factor: int, init: str, weights: str | None, seed: int) -> dict:
    data = np.load(case)
    fixed, moving = data["fixed"], data["moving"]
    shape = fixed.shape
    work = tuple(int(round((n - 1) / work_factor)) + 1 for n in shape) if work_factor > 1 else shape
    f = spatial.resize_image(torch.from_numpy(fixed)[None, None], work)
    m = spatial.resize_image(torch.from_numpy(moving)[None, None], work)
    init_path = case.with_name(f"{case.stem}_init_{init}_w{work_factor}.pt")
    t0 = time.monotonic()
    if init == "tf":
        if init_path.exists():
            u0 = torch.load(init_path)
        else:
            from caio.backbone.training_free import register_training_free

            u0 = register_training_free(f, m)
            torch.save(u0, init_path)
    else:
        u0 = torch.zeros(1, 3, *work)
    t_init = time.monotonic() - t0
    row = {"case": case.stem, "config": config, "init": init, "work_shape": list(work), "init_seconds": t_init}
    if CONFIGS[config] is None:
        disp, steps, seconds = u0, 0, 0.0
    else:
        cfg = dataclasses.replace(CascadeConfig(), **CONFIGS[config])
        state = weights if config == "pretrained" else None
        if config == "pretrained" and not weights:
            raise SystemExit("config 'pretrained' needs --weights")
        t0 = time.monotonic()
        disp, report = refine(f, m, u0, cfg, init_state=state, seed=seed)
        seconds, steps = time.monotonic() - t0, report.steps
        row.update(loss_first=report.losses[0], loss_best=min(report.losses), best_step=report.best_step)
    full = spatial.resize_displacement(disp, shape)[0].double().numpy()
    mask_image = fixed if str(data["mask"]) == "fixed" else (data["fixed_seg"] > 0).astype(np.float32)
    labels = [int(x) for x in data["labels"]]
    row.update(**evaluator_scores(data["fixed_seg"], data["moving_seg"], full, mask_image, labels))
    row.update(steps=steps, seconds=seconds)
    return row


def run(
    out: Path,
    configs: list[str],
    sets: list[str],
    work_factor: int,
    init: str,
    weights: str | None,
    seed: int,
    threads: int,
) -> None:
    torch.set_num_threads(threads)
    cases = sorted(p for p in (out / "cases").glob("*.npz") if any(p.stem.startswith(s) for s in sets))
    results = out / "results.jsonl"
    done = set()
    if results.exists():
        done = {(r["case"], r["config"], r["init"]) for r in map(json.loads, results.read_text().splitlines())}
    for config in configs:
        for case in cases:
            if (case.stem, config, init) in done:
                continue
            row = run_case(case, config, work_factor, init, weights, seed)
            row["threads"] = threads
            with results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print("peak RSS GiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)


def table(out: Path) -> str:
    """Mean per (set, config, init) and, paired on the same cases, the Dice difference to ``io3``."""
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    by_key = {(r["case"], r["config"], r["init"]): r for r in rows}
    columns = ["set", "config", "init", "pairs", "Dice", "HD95 (vox)", "NDV %", "IO steps", "IO time (s)"]
    lines = markdown_header([*columns, "Dice - io3 (same pairs)"])
    keys = sorted(
        {(r["case"].split("_")[0], r["config"], r["init"]) for r in rows},
        key=lambda k: (k[0], list(CONFIGS).index(k[1]), k[2]),
    )
    for set_name, config, init in keys:
        sel = [r for r in rows if r["case"].split("_")[0] == set_name and r["config"] == config and r["init"] == init]
        mean = lambda key, sel=sel: float(np.mean([r[key] for r in sel]))  # noqa: E731
        paired = [
            r["dice"] - by_key[(r["case"], "io3", init)]["dice"] for r in sel if (r["case"], "io3", init) in by_key
        ]
        delta = f"{np.mean(paired):+.4f} (n={len(paired)})" if paired and config != "io3" else ""
        cells = [set_name, config, init, len(sel), f"{mean('dice'):.4f}", f"{mean('hd95'):.2f}", f"{mean('ndv'):.3f}"]
        lines.append(markdown_row([*cells, f"{mean('steps'):.0f}", f"{mean('seconds'):.1f}", delta]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("prepare", "run", "table"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/ablation"))
    parser.add_argument("--ixi-pairs", type=int, default=10)
    parser.add_argument("--pretrain-subjects", type=int, default=30)
    parser.add_argument("--parts", nargs="+", default=["real1mm", "ixi", "pretrain"], help="what 'prepare' makes")
    parser.add_argument("--configs", nargs="+", default=["noio", "io3", "single", "additive"], choices=list(CONFIGS))
    parser.add_argument("--sets", nargs="+", default=["ixi", "real1mm"])
    parser.add_argument("--work-factor", type=int, default=2, help="registration grid = evaluation grid / this")
    parser.add_argument("--init", choices=("tf", "zero"), default="tf")
    parser.add_argument("--weights", default=None, help="pretrained cascade weights (config 'pretrained')")
    parser.add_argument("--seed", type=int, default=0)
    add_threads_argument(parser, default=1)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        torch.set_num_threads(args.threads)
        prepare(args.out, args.ixi_pairs, args.pretrain_subjects, args.parts)
    elif args.command == "run":
        run(args.out, args.configs, args.sets, args.work_factor, args.init, args.weights, args.seed, args.threads)
    else:
        print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
