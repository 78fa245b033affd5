"""Registration benchmark: caio training-free (+ cascade) against Greedy, ANTs, ConvexAdam, elastix.

Run in the peer environment made by ``bench/setup_peers.sh`` (from the repository root)::

    nice -n 10 bench/.venv/bin/python bench/bench_registration.py --sets real1mm ixi --ixi-pairs 3
    nice -n 10 bench/.venv/bin/python bench/bench_registration.py --methods caio greedy --sets ixi

Sets (``shared/specs/data_and_peers.md``; ``../shared/data`` beside the checkout):

* ``real1mm``: voxelmorph test scan (fixed, 160x192x224) <- niivue FreeSurfer ``norm.mgz`` (moving),
  Dice over the 28 aseg labels of data_and_peers.md pair B (Destrieux cortex mapped to 3/42).
* ``ixi``: NiChart IXI T1 2 mm full-head pairs (subject 2k fixed, 2k+1 moving), DLMUSE labels.
* ``synth``: T2/FLAIR-like moving -> T1-like fixed made by :mod:`caio.synth` from two SynthSeg label
  maps on a 96x112x96 grid (skipped if :mod:`caio.synth` is absent).

Every real moving image and label map is first aligned to the fixed one with one ANTs affine and
resampled onto the fixed grid; all methods get these same inputs. Each method runs in its own
subprocess (2 threads) so that its peak RSS (``ru_maxrss``, includes the Python/library baseline)
is its own. Time = registration only (no I/O). Each tool's transform is turned into a voxel
displacement on the fixed grid by warping coordinate images with it; labels are then warped
nearest-neighbour and scored exactly as the LUMIR evaluator (:func:`caio.evaluate.evaluate_pair`):
Dice and HD95 (voxels) over labels present in both maps (background excluded), NDV % inside
``fixed > 0`` (skull-stripped) or inside the fixed labels (full-head IXI).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
METHODS = ("caio", "caio_cascade", "greedy", "ants", "convexadam", "elastix")
ASEG28 = [2, 3, 4, 7, 8, *range(10, 19), 24, 28, 41, 42, 43, 46, 47, *range(49, 55), 60]
"""The 28 aseg labels of data_and_peers.md pair B (Dice of the peers there is over these)."""
VXM_AFFINE = np.array([[-1, 0, 0, 80], [0, 0, 1, -112], [0, -1, 0, 96], [0, 0, 0, 1]], float)


# ------------------------------------------------------------------ data preparation (ANTs affine)

def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))


def _to_0_255(image: np.ndarray) -> np.ndarray:
    """Images above 255 (e.g. raw IXI T1, up to ~4500) are scaled so their 99.9th percentile is 255, then clipped."""
    image = np.asarray(image, np.float32)
    if image.max() > 255:
        image = image * (255.0 / np.percentile(image[image > 0], 99.9))
    return np.clip(image, 0, 255).astype(np.float32)


def _affine_align(case: Path, fixed: np.ndarray, moving_path: Path, moving_seg_path: Path, affine: np.ndarray) -> None:
    """Write fixed/moving images ([0, 255]) and label maps of one case on the fixed grid (moving affinely aligned)."""
    import ants

    _save(case / "fixed.nii.gz", _to_0_255(fixed), affine)
    f = ants.image_read(str(case / "fixed.nii.gz"))
    m = ants.image_read(str(moving_path))
    ms = ants.image_read(str(moving_seg_path))
    reg = ants.registration(f, m, type_of_transform="Affine")
    mw = ants.apply_transforms(f, m, reg["fwdtransforms"], interpolator="linear")
    sw = ants.apply_transforms(f, ms, reg["fwdtransforms"], interpolator="nearestNeighbor")
    _save(case / "moving.nii.gz", _to_0_255(mw.numpy()), affine)
    _save(case / "moving_seg.nii.gz", np.round(sw.numpy()).astype(np.int32), affine)


def prepare_real1mm(cache: Path) -> list[Path]:
    case = cache / "real1mm"
    if not (case / "meta.json").exists():
        case.mkdir(parents=True, exist_ok=True)
        scan = np.load(DATA / "voxelmorph_test_scan" / "test_scan.npz")
        _save(case / "fixed_seg.nii.gz", scan["seg"].astype(np.int32), VXM_AFFINE)
        src = DATA / "niivue_freesurfer_subject"
        seg_img = nib.load(str(src / "aparc.a2009s+aseg.mgz"))
        seg = np.asarray(seg_img.dataobj).astype(np.int32)
        seg[(seg >= 11100) & (seg < 11200)] = 3
        seg[(seg >= 12100) & (seg < 12200)] = 42
        with tempfile.TemporaryDirectory() as tmp:
            _save(Path(tmp) / "mseg.nii.gz", seg, seg_img.affine)
            norm = nib.load(str(src / "norm.mgz"))
            _save(Path(tmp) / "m.nii.gz", np.asarray(norm.dataobj, np.float32), norm.affine)
            _affine_align(case, scan["vol"] * 255.0, Path(tmp) / "m.nii.gz", Path(tmp) / "mseg.nii.gz", VXM_AFFINE)
        (case / "meta.json").write_text(json.dumps({"set": "real1mm", "mask": "fixed", "contrast": "same",
                                                    "labels": ASEG28}))
    return [case]


def prepare_ixi(cache: Path, n_pairs: int) -> list[Path]:
    root = DATA / "nichart_ixi_dlmuse_2mm"
    subjects = sorted(p.name[: -len("_T1.nii.gz")] for p in (root / "T1").glob("*_T1.nii.gz"))
    cases = []
    for k in range(min(n_pairs, len(subjects) // 2)):
        fid, mid = subjects[2 * k], subjects[2 * k + 1]
        case = cache / f"ixi_{fid[:6]}_{mid[:6]}"
        if not (case / "meta.json").exists():
            case.mkdir(parents=True, exist_ok=True)
            fimg = nib.load(str(root / "T1" / f"{fid}_T1.nii.gz"))
            fseg = np.asarray(nib.load(str(root / "DLMUSE" / f"{fid}_T1_DLMUSE.nii.gz")).dataobj).astype(np.int32)
            _save(case / "fixed_seg.nii.gz", fseg, fimg.affine)
            _affine_align(case, np.asarray(fimg.dataobj, np.float32), root / "T1" / f"{mid}_T1.nii.gz",
                          root / "DLMUSE" / f"{mid}_T1_DLMUSE.nii.gz", fimg.affine)
            (case / "meta.json").write_text(json.dumps({"set": "ixi", "mask": "labels", "contrast": "same"}))
        cases.append(case)
    return cases


SYNTH_SHAPE = (96, 112, 96)
"""Grid of the synthetic pairs (the LUMIR field of view at about 1.7-2 mm, to keep the peers fast)."""


def prepare_synth(cache: Path, n_pairs: int) -> list[Path]:
    """Cross-contrast pairs from :mod:`caio.synth`: T1-like fixed <- T2/FLAIR-like moving of another subject.

    Both subjects are placed on the template by :mod:`caio.synth`'s label-centroid affine (plus its
    random jitter and deformation), so no extra affine is run. Labels are exact.
    """
    try:
        import torch

        from caio.synth import load_label_map_ras, make_subject
    except ImportError:
        print("synth: caio.synth not available, skipping the cross-contrast set", file=sys.stderr)
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
            for name, arr, dt in (("fixed", fixed.images["t1"], np.float32), ("moving", moving.images[contrast], np.float32),
                                  ("fixed_seg", fixed.labels, np.int32), ("moving_seg", moving.labels, np.int32)):
                _save(case / f"{name}.nii.gz", np.asarray(arr, dt), np.eye(4))
            (case / "meta.json").write_text(json.dumps({"set": "synth", "mask": "fixed", "contrast": "cross"}))
        cases.append(case)
    return cases


# ------------------------------------------------------------------ methods (run inside a worker)

def _coordinate_images(tmp: Path, shape, affine) -> list[Path]:
    """Files holding ``index along axis c + 1`` (so that a tool's out-of-volume fill value 0 maps outside)."""
    paths = []
    for c in range(3):
        idx = np.broadcast_to(np.arange(1, shape[c] + 1, dtype=np.float32).reshape([-1 if a == c else 1 for a in range(3)]),
                              shape)
        paths.append(tmp / f"coord{c}.nii.gz")
        _save(paths[-1], np.ascontiguousarray(idx), affine)
    return paths


def _disp_from_coords(warped: list[np.ndarray]) -> np.ndarray:
    from caio.spatial import identity_grid_np

    return np.stack(warped).astype(np.float64) - 1.0 - identity_grid_np(warped[0].shape)


def run_caio(case: Path, cross: bool, threads: int, cascade: bool) -> tuple[float, np.ndarray]:
    import torch

    from caio.convex import TrainingFreeConfig, register_training_free

    torch.set_num_threads(threads)
    f = torch.from_numpy(nib.load(str(case / "fixed.nii.gz")).get_fdata(dtype=np.float32))[None, None]
    m = torch.from_numpy(nib.load(str(case / "moving.nii.gz")).get_fdata(dtype=np.float32))[None, None]
    t0 = time.perf_counter()
    disp = register_training_free(f, m, TrainingFreeConfig())
    if cascade:
        from caio.cascade import refine
        from caio.pipeline_stages import cascade_config_for

        fsim = msim = None
        if cross:
            from caio.features import mind_ssc

            fsim, msim = mind_ssc(f), mind_ssc(m)
        disp, _ = refine(f, m, disp, cascade_config_for(torch.device("cpu")), fixed_sim=fsim, moving_sim=msim)
    return time.perf_counter() - t0, disp[0].detach().double().numpy()


def run_greedy(case: Path, cross: bool, threads: int) -> tuple[float, np.ndarray]:
    from picsl_greedy import Greedy3D

    metric = "NMI" if cross else "NCC 2x2x2"
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        g = Greedy3D()
        t0 = time.perf_counter()
        g.execute(f"-d 3 -threads {threads} -i {case/'fixed.nii.gz'} {case/'moving.nii.gz'} -n 100x50x20 "
                  f"-m {metric} -s 1.5vox 0.5vox -o {tmp/'warp.nii.gz'}")
        elapsed = time.perf_counter() - t0
        img = nib.load(str(case / "fixed.nii.gz"))
        coords = _coordinate_images(tmp, img.shape, img.affine)
        outs = [tmp / f"w{c}.nii.gz" for c in range(3)]
        rm = " ".join(f"-rm {a} {b}" for a, b in zip(coords, outs))
        Greedy3D().execute(f"-d 3 -rf {case/'fixed.nii.gz'} -ri LINEAR {rm} -r {tmp/'warp.nii.gz'}")
        return elapsed, _disp_from_coords([nib.load(str(o)).get_fdata() for o in outs])


def run_ants(case: Path, cross: bool, threads: int) -> tuple[float, np.ndarray]:
    import ants

    f = ants.image_read(str(case / "fixed.nii.gz"))
    m = ants.image_read(str(case / "moving.nii.gz"))
    t0 = time.perf_counter()
    r = ants.registration(f, m, type_of_transform="SyNOnly", syn_metric="mattes" if cross else "CC",
                          syn_sampling=32 if cross else 2, reg_iterations=(40, 20, 0))
    elapsed = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as t:
        img = nib.load(str(case / "fixed.nii.gz"))
        warped = [ants.apply_transforms(f, ants.image_read(str(p)), r["fwdtransforms"], interpolator="linear").numpy()
                  for p in _coordinate_images(Path(t), img.shape, img.affine)]
    return elapsed, _disp_from_coords(warped)


def run_convexadam(case: Path, cross: bool, threads: int) -> tuple[float, np.ndarray]:
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    torch.set_num_threads(threads)
    f = nib.load(str(case / "fixed.nii.gz")).get_fdata(dtype=np.float32)
    m = nib.load(str(case / "moving.nii.gz")).get_fdata(dtype=np.float32)
    t0 = time.perf_counter()
    disp = convex_adam_pt(f, m, device=torch.device("cpu"), dtype=torch.float32)
    elapsed = time.perf_counter() - t0
    return elapsed, np.moveaxis(np.asarray(disp, np.float64), -1, 0)


def run_elastix(case: Path, cross: bool, threads: int) -> tuple[float, np.ndarray]:
    import itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    po = itk.ParameterObject.New()
    pm = po.GetDefaultParameterMap("bspline", 3)
    pm["FinalGridSpacingInPhysicalUnits"] = ["8.0"]
    po.AddParameterMap(pm)
    f = itk.imread(str(case / "fixed.nii.gz"), itk.F)
    m = itk.imread(str(case / "moving.nii.gz"), itk.F)
    t0 = time.perf_counter()
    _, tp = itk.elastix_registration_method(f, m, parameter_object=po, log_to_console=False)
    elapsed = time.perf_counter() - t0
    tp.SetParameter("FinalBSplineInterpolationOrder", "1")
    with tempfile.TemporaryDirectory() as t:
        img = nib.load(str(case / "fixed.nii.gz"))
        warped = []
        for p in _coordinate_images(Path(t), img.shape, img.affine):
            w = itk.transformix_filter(itk.imread(str(p), itk.F), tp)
            itk.imwrite(w, str(Path(t) / "w.nii.gz"))
            warped.append(nib.load(str(Path(t) / "w.nii.gz")).get_fdata())
    return elapsed, _disp_from_coords(warped)


def worker(method: str, case: Path, result: Path, threads: int) -> None:
    from caio.evaluate import evaluate_pair

    meta = json.loads((case / "meta.json").read_text())
    cross = meta["contrast"] == "cross"
    runner = {"caio": lambda: run_caio(case, cross, threads, False),
              "caio_cascade": lambda: run_caio(case, cross, threads, True),
              "greedy": lambda: run_greedy(case, cross, threads), "ants": lambda: run_ants(case, cross, threads),
              "convexadam": lambda: run_convexadam(case, cross, threads),
              "elastix": lambda: run_elastix(case, cross, threads)}[method]
    seconds, disp = runner()
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    fseg = np.asarray(nib.load(str(case / "fixed_seg.nii.gz")).dataobj).astype(np.int64)
    mseg = np.asarray(nib.load(str(case / "moving_seg.nii.gz")).dataobj).astype(np.int64)
    labels = meta.get("labels") or sorted(set(np.unique(fseg).tolist()) & set(np.unique(mseg).tolist()) - {0})
    mask_src = (nib.load(str(case / "fixed.nii.gz")).get_fdata() if meta["mask"] == "fixed" else fseg).astype(np.float32)
    metrics = evaluate_pair(fseg, mseg, disp, fixed_image=mask_src, labels=labels)
    affine_dice = float(np.mean([2.0 * np.sum((fseg == k) & (mseg == k)) / (np.sum(fseg == k) + np.sum(mseg == k))
                                 for k in labels]))
    out = {"method": method, "case": case.name, "set": meta["set"], "seconds": seconds, "rss_gib": rss_gib,
           "dice": metrics.dice, "hd95": metrics.hd95, "ndv": metrics.ndv, "dice_affine": affine_dice,
           "n_labels": len(labels)}
    result.write_text(json.dumps(out))


# ------------------------------------------------------------------ driver

def run_method(method: str, case: Path, threads: int, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads), PYTHONUNBUFFERED="1")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result = Path(fh.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--case", str(case),
           "--result", str(result), "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or result.stat().st_size == 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"method": method, "case": case.name, "error": tail[0][:200]}
        return json.loads(result.read_text())
    except subprocess.TimeoutExpired:
        return {"method": method, "case": case.name, "error": f"timeout after {timeout:.0f} s"}
    finally:
        result.unlink(missing_ok=True)


def _fmt(x, digits=3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def table(rows: list[dict], methods: list[str]) -> str:
    """Markdown table: one line per (set, method), means over that set's cases."""
    lines = ["| set | method | pairs | Dice | affine Dice | HD95 (vox) | NDV % | time (s) | time / Greedy | peak RSS (GiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for set_name in dict.fromkeys(r.get("set", "?") for r in rows if "error" not in r):
        greedy = {r["case"]: r["seconds"] for r in rows if r.get("set") == set_name and r["method"] == "greedy"}
        for method in methods:
            ok = [r for r in rows if r.get("set") == set_name and r["method"] == method and "error" not in r]
            if not ok:
                continue
            ratios = [r["seconds"] / greedy[r["case"]] for r in ok if r["case"] in greedy]
            mean = lambda k: float(np.mean([r[k] for r in ok]))  # noqa: E731
            lines.append(f"| {set_name} | {method} | {len(ok)} | {_fmt(mean('dice'))} | {_fmt(mean('dice_affine'))} | "
                         f"{_fmt(mean('hd95'), 2)} | {_fmt(mean('ndv'), 4)} | {_fmt(mean('seconds'), 1)} | "
                         f"{_fmt(float(np.mean(ratios)) if ratios else None, 2)} | {_fmt(max(r['rss_gib'] for r in ok), 2)} |")
    errors = [f"- {r['method']} on {r['case']}: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=["real1mm", "ixi", "synth"], choices=["real1mm", "ixi", "synth"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--ixi-pairs", type=int, default=10, help="number of IXI pairs (default 10)")
    p.add_argument("--synth-pairs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="3 IXI pairs, 1 synthetic pair")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per method and pair")
    p.add_argument("--out", type=Path, default=HERE / "out")
    p.add_argument("--reuse", type=Path, nargs="*", default=[],
                   help="JSON files of earlier runs whose rows are added to the table (methods not re-run)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--case", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.case, args.result, args.threads)
        return 0
    methods = list(args.methods)
    if "caio_cascade" in methods:
        try:
            import caio.cascade  # noqa: F401
        except ImportError:
            print("caio.cascade not available: skipping caio_cascade", file=sys.stderr)
            methods.remove("caio_cascade")
    n_ixi, n_synth = (min(3, args.ixi_pairs), 1) if args.quick else (args.ixi_pairs, args.synth_pairs)
    cache = args.out / "cache"
    cases: list[Path] = []
    for s in args.sets:
        cases += {"real1mm": lambda: prepare_real1mm(cache), "ixi": lambda: prepare_ixi(cache, n_ixi),
                  "synth": lambda: prepare_synth(cache, n_synth)}[s]()
    rows = [r for path in args.reuse for r in json.loads(Path(path).read_text())
            if r["method"] not in methods and r["case"] in {c.name for c in cases}]
    for case in cases:
        for method in methods:
            row = run_method(method, case, args.threads, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
    text = table(rows, [m for m in METHODS if any(r["method"] == m for r in rows)])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"registration_{stamp}.md").write_text(text)
    (args.out / f"registration_{stamp}.json").write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
