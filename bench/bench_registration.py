"""Registration benchmark: caio (engine, pipeline, training-free, cascade) against Greedy, ANTs, ConvexAdam, elastix.

Run in the peer environment made by ``bench/setup_peers.sh`` (from the repository root)::

    nice -n 10 bench/.venv/bin/python bench/bench_registration.py --sets real1mm ixi --ixi-pairs 3
    nice -n 10 bench/.venv/bin/python bench/bench_registration.py --methods caio greedy --sets ixi

Sets (``shared/specs/data_and_peers.md``; ``../shared/data`` beside the checkout):

* ``real1mm``: voxelmorph test scan (fixed, 160x192x224) <- niivue FreeSurfer ``norm.mgz`` (moving),
  Dice over the 28 aseg labels of data_and_peers.md pair B (Destrieux cortex mapped to 3/42).
* ``ixi``: NiChart IXI T1 2 mm full-head pairs (subject 2k fixed, 2k+1 moving), DLMUSE labels.
* ``synth``: T2/FLAIR-like moving -> T1-like fixed made by :mod:`caio.synth.generator` from two SynthSeg label
  maps on a 96x112x96 grid (skipped if :mod:`caio.synth.generator` is absent).
* ``lumir``: the LUMIR-like set of ``bench/make_lumir_like.py`` (``--lumir-root``; 160x224x192, already
  aligned, no extra affine): tables ``lumir-t1`` (T1 <- T1) and ``lumir-cross`` (T1 <- T2-/FLAIR-like),
  Dice over the DLMUSE ROIs of its ``labels.json`` (0 excluded).
* ``test_data``: the repository's ``test_data/`` pairs (``test_data-t1``, ``test_data-t2``), its labels.json
  without 0; already aligned.

caio rows: ``caio_engine`` = :func:`caio.engine.register` alone (time = the call);
``caio_pipeline`` = ``python predict.py`` on a one-pair JSON in a subprocess, time = its wall clock including
reading and writing, peak RSS = the subprocess's; its written displacement file is scored;
``caio`` = :func:`caio.backbone.training_free.register_training_free`; ``caio_cascade`` = that + the cascade.

Every real moving image and label map is first aligned to the fixed one with one ANTs affine and
resampled onto the fixed grid; all methods get these same inputs. Each method runs in its own
subprocess (2 threads) so that its peak RSS (``ru_maxrss``, includes the Python/library baseline)
is its own. Time = registration only (no I/O). Each tool's transform is turned into a voxel
displacement on the fixed grid by warping coordinate images with it; labels are then warped
nearest-neighbour and scored exactly as the LUMIR evaluator (:func:`caio.metrics.evaluate.evaluate_pair`):
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
METHODS = ("caio_engine", "caio_pipeline", "caio", "caio_cascade", "greedy", "ants", "convexadam", "elastix")
REPO = HERE.parent
LUMIR_LIKE = HERE / "out" / "lumir_like"
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
        (case / "meta.json").write_text(
            json.dumps({"set": "real1mm", "mask": "fixed", "contrast": "same", "labels": ASEG28})
        )
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
            _affine_align(
                case,
                np.asarray(fimg.dataobj, np.float32),
                root / "T1" / f"{mid}_T1.nii.gz",
                root / "DLMUSE" / f"{mid}_T1_DLMUSE.nii.gz",
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
                _save(case / f"{name}.nii.gz", np.asarray(arr, dt), np.eye(4))
            (case / "meta.json").write_text(json.dumps({"set": "synth", "mask": "fixed", "contrast": "cross"}))
        cases.append(case)
    return cases


def prepare_lumir_folder(cache: Path, root: Path, json_name: str, set_name: str) -> list[Path]:
    """One case per "validation" pair of a LUMIR-style folder (images already aligned): links to its files.

    Cases are ``<set_name>-t1`` (moving modality 0000) or ``<set_name>-cross`` / ``-t2`` (other modalities);
    labels = ``labels.json["labels"]`` without 0; labels folder = images folder with ``images`` -> ``labels``.
    """
    if not (root / json_name).exists():
        print(f"{set_name}: {root / json_name} missing (bench/make_lumir_like.py makes it), skipping", file=sys.stderr)
        return []
    labels = [k for k in json.loads((root / "labels.json").read_text())["labels"] if k != 0]
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


# ------------------------------------------------------------------ methods (run inside a worker)


def _coordinate_images(tmp: Path, shape, affine) -> list[Path]:
    """Files holding ``index along axis c + 1`` (so that a tool's out-of-volume fill value 0 maps outside)."""
    paths = []
    for c in range(3):
        idx = np.broadcast_to(
            np.arange(1, shape[c] + 1, dtype=np.float32).reshape([-1 if a == c else 1 for a in range(3)]), shape
        )
        paths.append(tmp / f"coord{c}.nii.gz")
        _save(paths[-1], np.ascontiguousarray(idx), affine)
    return paths


def _disp_from_coords(warped: list[np.ndarray]) -> np.ndarray:
    from caio.spatial import identity_grid_np

    return np.stack(warped).astype(np.float64) - 1.0 - identity_grid_np(warped[0].shape)


def _load_pair_tensors(case: Path, threads: int):
    import torch

    torch.set_num_threads(threads)
    f = torch.from_numpy(nib.load(str(case / "fixed.nii.gz")).get_fdata(dtype=np.float32))[None, None]
    m = torch.from_numpy(nib.load(str(case / "moving.nii.gz")).get_fdata(dtype=np.float32))[None, None]
    return f, m


def run_caio_engine(case: Path, cross: bool, threads: int, extra: dict) -> tuple[float, np.ndarray]:
    """:func:`caio.engine.register` with its defaults (similarity "auto"), CPU; time = the call only."""
    from caio.engine import register

    f, m = _load_pair_tensors(case, threads)
    t0 = time.perf_counter()
    disp, trace = register(f, m, similarity="auto")
    elapsed = time.perf_counter() - t0
    extra["trace"] = trace.to_dict()
    return elapsed, disp[0].detach().double().numpy()


def run_caio_pipeline(case: Path, cross: bool, threads: int, extra: dict) -> tuple[float, np.ndarray]:
    """``python predict.py`` on a one-pair LUMIR-style folder of links; time = subprocess wall clock (I/O included)."""
    from caio.io import read_displacement

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "in" / "imagesVal").mkdir(parents=True)
        for sid, role in (("0001", "fixed"), ("0002", "moving")):
            (tmp / "in" / "imagesVal" / f"LUMIRMRI_{sid}_0000.nii.gz").symlink_to((case / f"{role}.nii.gz").resolve())
        pair = {"fixed": "./imagesVal/LUMIRMRI_0001_0000.nii.gz", "moving": "./imagesVal/LUMIRMRI_0002_0000.nii.gz"}
        (tmp / "pairs.json").write_text(json.dumps({"name": "LUMIR", "validation": [pair]}))
        shape = nib.load(str(case / "fixed.nii.gz")).shape
        cmd = [
            sys.executable,
            str(REPO / "predict.py"),
            "--json",
            str(tmp / "pairs.json"),
            "--input",
            str(tmp / "in"),
            "--output",
            str(tmp / "out"),
            "--report",
            str(tmp / "report.json"),
            "--no-progress",
            *([] if tuple(shape) == (160, 224, 192) else ["--shape", "any"]),
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        elapsed = time.perf_counter() - t0
        out_file = tmp / "out" / "disp_0001_0002.nii.gz"
        if proc.returncode != 0:  # predict.py exits 1 when a pair is degraded but still writes its field: score it
            message = f"predict.py exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}"
            if not out_file.exists():
                raise RuntimeError(message)
            extra["predict_warning"] = message
        if (tmp / "report.json").exists():
            extra["report"] = json.loads((tmp / "report.json").read_text())
        extra["rss_children_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        return elapsed, read_displacement(out_file, expected_shape=shape)


def run_caio(case: Path, cross: bool, threads: int, cascade: bool) -> tuple[float, np.ndarray]:
    import torch

    from caio.backbone.training_free import TrainingFreeConfig, register_training_free

    f, m = _load_pair_tensors(case, threads)
    t0 = time.perf_counter()
    disp = register_training_free(f, m, TrainingFreeConfig())
    if cascade:
        from caio.pipeline.stages import cascade_config_for
        from caio.refine.cascade import refine

        fsim = msim = None
        if cross:
            from caio.contrast.mind import mind_ssc

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
        g.execute(
            f"-d 3 -threads {threads} -i {case / 'fixed.nii.gz'} {case / 'moving.nii.gz'} -n 100x50x20 "
            f"-m {metric} -s 1.5vox 0.5vox -o {tmp / 'warp.nii.gz'}"
        )
        elapsed = time.perf_counter() - t0
        img = nib.load(str(case / "fixed.nii.gz"))
        coords = _coordinate_images(tmp, img.shape, img.affine)
        outs = [tmp / f"w{c}.nii.gz" for c in range(3)]
        rm = " ".join(f"-rm {a} {b}" for a, b in zip(coords, outs))
        Greedy3D().execute(f"-d 3 -rf {case / 'fixed.nii.gz'} -ri LINEAR {rm} -r {tmp / 'warp.nii.gz'}")
        return elapsed, _disp_from_coords([nib.load(str(o)).get_fdata() for o in outs])


def run_ants(case: Path, cross: bool, threads: int) -> tuple[float, np.ndarray]:
    import ants

    f = ants.image_read(str(case / "fixed.nii.gz"))
    m = ants.image_read(str(case / "moving.nii.gz"))
    t0 = time.perf_counter()
    r = ants.registration(
        f,
        m,
        type_of_transform="SyNOnly",
        syn_metric="mattes" if cross else "CC",
        syn_sampling=32 if cross else 2,
        reg_iterations=(40, 20, 0),
    )
    elapsed = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as t:
        img = nib.load(str(case / "fixed.nii.gz"))
        warped = [
            ants.apply_transforms(f, ants.image_read(str(p)), r["fwdtransforms"], interpolator="linear").numpy()
            for p in _coordinate_images(Path(t), img.shape, img.affine)
        ]
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


def score(case: Path, disp: np.ndarray) -> dict:
    """LUMIR-evaluator metrics of a ``(3, D0, D1, D2)`` voxel displacement on a case, and the zero-field Dice."""
    from caio.metrics.evaluate import evaluate_pair

    meta = json.loads((case / "meta.json").read_text())
    fseg = np.asarray(nib.load(str(case / "fixed_seg.nii.gz")).dataobj).astype(np.int64)
    mseg = np.asarray(nib.load(str(case / "moving_seg.nii.gz")).dataobj).astype(np.int64)
    labels = meta.get("labels") or sorted(set(np.unique(fseg).tolist()) & set(np.unique(mseg).tolist()) - {0})
    mask_src = (nib.load(str(case / "fixed.nii.gz")).get_fdata() if meta["mask"] == "fixed" else fseg).astype(
        np.float32
    )
    metrics = evaluate_pair(fseg, mseg, disp, fixed_image=mask_src, labels=labels)
    affine_dice = float(
        np.mean([2.0 * np.sum((fseg == k) & (mseg == k)) / (np.sum(fseg == k) + np.sum(mseg == k)) for k in labels])
    )
    return {
        "case": case.name,
        "set": meta["set"],
        "dice": metrics.dice,
        "hd95": metrics.hd95,
        "ndv": metrics.ndv,
        "dice_affine": affine_dice,
        "n_labels": len(labels),
    }


def _is_cross(case: Path) -> bool:
    return json.loads((case / "meta.json").read_text())["contrast"] == "cross"


def worker(method: str, case: Path, result: Path, threads: int) -> None:
    cross = _is_cross(case)
    extra: dict = {}
    runner = {
        "caio_engine": lambda: run_caio_engine(case, cross, threads, extra),
        "caio_pipeline": lambda: run_caio_pipeline(case, cross, threads, extra),
        "caio": lambda: run_caio(case, cross, threads, False),
        "caio_cascade": lambda: run_caio(case, cross, threads, True),
        "greedy": lambda: run_greedy(case, cross, threads),
        "ants": lambda: run_ants(case, cross, threads),
        "convexadam": lambda: run_convexadam(case, cross, threads),
        "elastix": lambda: run_elastix(case, cross, threads),
    }[method]
    seconds, disp = runner()
    rss_gib = extra.pop("rss_children_gib", None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = {"method": method, "seconds": seconds, "rss_gib": rss_gib, **score(case, disp), **extra}
    result.write_text(json.dumps(out))


# ------------------------------------------------------------------ driver


def run_worker(script: Path, worker_args: list[str], threads: int, timeout: float, row: dict) -> dict:
    """Run ``script --worker *worker_args --result R --threads T`` in a subprocess limited to ``threads`` threads.

    The worker writes its row as JSON to the temporary file ``R``. Returns that row, else ``row`` with an
    ``error`` (the worker's last output line, or the timeout after ``timeout`` seconds).
    """
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads),
        PYTHONUNBUFFERED="1",
    )
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result = Path(fh.name)
    cmd = [sys.executable, str(script), "--worker", *worker_args, "--result", str(result), "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or result.stat().st_size == 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {**row, "error": tail[0][:200]}
        return json.loads(result.read_text())
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timeout after {timeout:.0f} s"}
    finally:
        result.unlink(missing_ok=True)


def run_method(method: str, case: Path, threads: int, timeout: float) -> dict:
    """One method on one case in a worker subprocess (:func:`run_worker`)."""
    row = {"method": method, "case": case.name}
    return run_worker(Path(__file__).resolve(), [method, "--case", str(case)], threads, timeout, row)


def _fmt(x, digits=3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def table(rows: list[dict], methods: list[str]) -> str:
    """Markdown table: one line per (set, method), means over that set's cases."""
    lines = [
        "| set | method | pairs | Dice | affine Dice | HD95 (vox) | NDV % | time (s) | time / Greedy "
        "| peak RSS (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for set_name in dict.fromkeys(r.get("set", "?") for r in rows if "error" not in r):
        greedy = {r["case"]: r["seconds"] for r in rows if r.get("set") == set_name and r["method"] == "greedy"}
        for method in methods:
            ok = [r for r in rows if r.get("set") == set_name and r["method"] == method and "error" not in r]
            if not ok:
                continue
            ratios = [r["seconds"] / greedy[r["case"]] for r in ok if r["case"] in greedy]
            mean = lambda k, ok=ok: float(np.mean([r[k] for r in ok]))  # noqa: E731
            lines.append(
                f"| {set_name} | {method} | {len(ok)} | {_fmt(mean('dice'))} | {_fmt(mean('dice_affine'))} | "
                f"{_fmt(mean('hd95'), 2)} | {_fmt(mean('ndv'), 4)} | {_fmt(mean('seconds'), 1)} | "
                f"{_fmt(float(np.mean(ratios)) if ratios else None, 2)} | {_fmt(max(r['rss_gib'] for r in ok), 2)} |"
            )
    errors = [f"- {r['method']} on {r['case']}: {r['error']}" for r in rows if "error" in r]
    return (
        "\n".join(
            lines + [""] + versus_greedy(rows) + [""] + per_pair(rows, methods) + ([""] + errors if errors else [])
        )
        + "\n"
    )


def versus_greedy(rows: list[dict], method: str = "caio_engine") -> list[str]:
    """Per set: mean Dice difference and mean time ratio of ``method`` to Greedy over pairs both scored."""
    ok = {(r["case"], r["method"]): r for r in rows if "error" not in r}
    lines = []
    for set_name in dict.fromkeys(r["set"] for r in ok.values()):
        both = [
            (ok[c, method], ok[c, "greedy"])
            for c, m in ok
            if m == method and (c, "greedy") in ok and ok[c, m]["set"] == set_name
        ]
        if both:
            diff = float(np.mean([a["dice"] - b["dice"] for a, b in both]))
            ratio = float(np.mean([a["seconds"] / b["seconds"] for a, b in both]))
            lines.append(
                f"- {set_name}: {method} vs Greedy: Dice diff {diff:+.3f}, time ratio {ratio:.2f} ({len(both)} pairs)"
            )
    return lines


def per_pair(rows: list[dict], methods: list[str]) -> list[str]:
    """Markdown table: Dice (time s) of every method on every pair, and the zero-field (affine) Dice."""
    ok = {(r["case"], r["method"]): r for r in rows if "error" not in r}
    cases = list(dict.fromkeys(r["case"] for r in ok.values()))
    lines = ["| pair | zero-field Dice | " + " | ".join(methods) + " |", "|---" * (len(methods) + 2) + "|"]
    for case in cases:
        any_row = next(r for (c, _), r in ok.items() if c == case)
        cells = [
            f"{ok[case, m]['dice']:.3f} ({ok[case, m]['seconds']:.0f} s)" if (case, m) in ok else "–" for m in methods
        ]
        lines.append(f"| {case} | {any_row['dice_affine']:.3f} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sets = ["real1mm", "ixi", "synth", "lumir", "test_data"]
    p.add_argument("--sets", nargs="+", default=sets, choices=sets)
    p.add_argument("--lumir-root", type=Path, default=LUMIR_LIKE, help="folder made by bench/make_lumir_like.py")
    p.add_argument("--pairs", type=int, default=0, help="use only the first N pairs of every set (0: all)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--ixi-pairs", type=int, default=10, help="number of IXI pairs (default 10)")
    p.add_argument("--synth-pairs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="3 IXI pairs, 1 synthetic pair")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per method and pair")
    p.add_argument("--method-major", action="store_true", help="run each method on every pair before the next method")
    p.add_argument(
        "--cross-only",
        nargs="*",
        default=[],
        choices=METHODS,
        help="methods run on the cross-contrast pairs only (e.g. convexadam, a cross-contrast peer)",
    )
    p.add_argument("--out", type=Path, default=HERE / "out")
    p.add_argument(
        "--reuse",
        type=Path,
        nargs="*",
        default=[],
        help="JSON files of earlier runs whose rows are added to the table (methods not re-run)",
    )
    p.add_argument("--table-only", action="store_true", help="print the table of the --reuse rows; run nothing")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--case", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.case, args.result, args.threads)
        return 0
    methods = [] if args.table_only else list(args.methods)
    if "caio_engine" in methods:
        try:
            from caio.engine import register  # noqa: F401
        except ImportError:
            print("caio.engine.register not available: skipping caio_engine", file=sys.stderr)
            methods.remove("caio_engine")
    if "caio_cascade" in methods:
        try:
            import caio.refine.cascade  # noqa: F401
        except ImportError:
            print("caio.refine.cascade not available: skipping caio_cascade", file=sys.stderr)
            methods.remove("caio_cascade")
    n_ixi, n_synth = (min(3, args.ixi_pairs), 1) if args.quick else (args.ixi_pairs, args.synth_pairs)
    cache = args.out / "cache"
    cases: list[Path] = []
    for s in args.sets:
        found = {
            "real1mm": lambda: prepare_real1mm(cache),
            "ixi": lambda: prepare_ixi(cache, n_ixi),
            "synth": lambda: prepare_synth(cache, n_synth),
            "lumir": lambda: prepare_lumir_folder(cache, args.lumir_root, "LUMIR_like_dataset.json", "lumir"),
            "test_data": lambda: prepare_lumir_folder(cache, REPO / "test_data", "LUMIR25_dataset.json", "test_data"),
        }[s]()
        cases += found[: args.pairs] if args.pairs else found
    rows = [
        r
        for path in args.reuse
        for r in json.loads(Path(path).read_text())
        if r["method"] not in methods and r["case"] in {c.name for c in cases}
    ]
    jobs = [(c, m) for m in methods for c in cases] if args.method_major else [(c, m) for c in cases for m in methods]
    jobs = [(c, m) for c, m in jobs if m not in args.cross_only or _is_cross(c)]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    for case, method in jobs:
        rows.append(run_method(method, case, args.threads, args.timeout))
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("trace", "report")}), flush=True)
        (args.out / f"registration_{stamp}.json").write_text(json.dumps(rows, indent=1))  # partial results kept
    text = table(rows, [m for m in METHODS if any(r["method"] == m for r in rows)])
    (args.out / f"registration_{stamp}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
