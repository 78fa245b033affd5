"""One-command GPU measurement (issue 15.4): every figure the GPU section of docs/measurements.md needs, in one JSON.

``bench/gpu_check.sh`` runs this (full: CUDA, 160x224x192, about 3-5 minutes on one GPU);
``--smoke`` runs the same sections on the CPU at tiny sizes in well under a minute, so a slow test
keeps it from rotting. Sections, most needed first: environment (torch, CUDA, GPU); the engine
(:func:`caio.engine.register`) on each ``test_data`` pair after a warm-up call; ``predict.py`` at the
default budget on ``test_data/`` and on each ``--dataset`` JSON, with the device's default refinement and
(GPU) with the cascade forced, every output folder scored like the evaluator; the cascade
(:func:`caio.refine.cascade.refine`, 50 steps at the GPU stages); VFA forward time and peak memory in
float32/float16/bfloat16 and Brain-ID at its default tiling and untiled (random weights). A failing section records
its error and the others still run.

    bash bench/gpu_check.sh --dataset DIR/LUMIR_like_dataset.json   # -> bench/out/gpu_check_<stamp>.json
    python -m bench.gpu_check --smoke --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.common import OUT, TEST_DATA, predict_command, read_labels, stamped, write_dataset

FULL_SHAPE = (160, 224, 192)
SMOKE_SHAPE = (32, 48, 40)
SMOKE_NET_SHAPE = (16, 16, 16)
"""VFA and Brain-ID on the CPU: 16^3 (their smallest input) takes seconds; 32x48x40 takes minutes."""
SECTIONS = ("environment", "engine", "predict", "cascade", "vfa", "brainid")
"""In order of what docs/measurements.md ("GPU") needs most (a timeout keeps the first ones)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def environment(device: torch.device, **_) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    info["device"] = str(device)
    info["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    if device.type == "cuda":
        info["gpu_memory_gb"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return info


def vfa(device: torch.device, shape, smoke: bool, **_) -> dict:
    from caio.backbone.vfa import VFA, predict_displacement

    shape = SMOKE_NET_SHAPE if smoke else shape
    precisions = ("fp32",) if smoke else ("fp32", "fp16", "bf16")  # CPU autocast in half precision is slow

    torch.manual_seed(0)
    model = VFA().eval().requires_grad_(False).to(device)
    fixed, moving = ((torch.rand(1, 1, *shape) * 255).to(device) for _ in range(2))
    rows = {}
    for precision in precisions:
        try:
            if device.type == "cuda":
                predict_displacement(model, fixed, moving, precision)  # warm-up (cuDNN autotune, allocator)
            _reset_peak(device)
            disp, seconds = _timed(lambda p=precision: predict_displacement(model, fixed, moving, p), device)
            rows[precision] = {"seconds": seconds, "peak_gb": _peak_gb(device), "finite": bool(disp.isfinite().all())}
        except Exception as err:  # e.g. bf16 unsupported, out of memory
            rows[precision] = {"error": f"{type(err).__name__}: {err}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"shape": list(shape), **rows}


def brainid(device: torch.device, shape, smoke: bool, **_) -> dict:
    """Brain-ID at its default tiling (:func:`caio.contrast.brainid.tiling`; the reported ``tiled``, ``seconds``,
    ``peak_gb``) and untiled (``untiled``)."""
    from caio.contrast.brainid import BrainIDConfig, run_network, tiling
    from caio.contrast.brainid_net import BrainID

    shape = SMOKE_NET_SHAPE if smoke else shape

    torch.manual_seed(0)
    model = BrainID().eval().requires_grad_(False).to(device)
    x = torch.rand(1, 1, *shape, device=device)
    if device.type == "cuda":
        run_network(model, x[..., :32, :32, :32])  # warm-up
    rows = {}
    for name, cfg in (("default", BrainIDConfig()), ("untiled", BrainIDConfig(gpu_untiled_max_voxels=2**40))):
        try:
            _reset_peak(device)
            out, seconds = _timed(lambda c=cfg: run_network(model, x, config=c), device)
            tile = tiling(device, x[0, 0].numel(), cfg)[0] if device.type == "cuda" else None
            rows[name] = {"tile": tile, "seconds": seconds, "peak_gb": _peak_gb(device), "out": list(out.shape)}
        except Exception as err:  # e.g. out of memory
            rows[name] = {"error": f"{type(err).__name__}: {err}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    default = rows["default"]
    return {"shape": list(shape), "tiled": default.get("tile") is not None, **default, "untiled": rows["untiled"]}


def _pairs(shape) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``test_data`` pairs (T1 <- T1, T1 <- T2-like), resized to ``shape`` when that is not theirs."""
    from caio.io import load_pairs, read_volume
    from caio.spatial import resize_image

    pairs = []
    for pair in load_pairs(TEST_DATA / "LUMIR25_dataset.json", TEST_DATA, check_files=False):
        images = [torch.from_numpy(read_volume(p, None))[None, None] for p in (pair.fixed, pair.moving)]
        if tuple(images[0].shape[2:]) != tuple(shape):
            images = [resize_image(i, shape) for i in images]
        pairs.append((images[0], images[1]))
    return pairs


def engine(device: torch.device, shape, **_) -> dict:
    """:func:`caio.engine.register` on each ``test_data`` pair, after one untimed warm-up call (CUDA context,
    kernel caches) whose time is reported as ``cold_seconds``."""
    from caio.engine import register

    pairs = [(f.to(device), m.to(device)) for f, m in _pairs(shape)]
    _, cold = _timed(lambda: register(*pairs[0], device=device), device)
    rows = []
    for fixed, moving in pairs:
        _reset_peak(device)
        (_, trace), seconds = _timed(lambda f=fixed, m=moving: register(f, m, device=device), device)
        rows.append(
            {
                "seconds": seconds,
                "peak_gb": _peak_gb(device),
                "similarity": trace.similarity,
                "iterations": trace.iterations,
                "levels": [(lv.factor, lv.done, lv.similarity, round(lv.seconds, 3)) for lv in trace.levels],
                "similarity_before": trace.similarity_before,
                "similarity_after": trace.similarity_after,
            }
        )
    return {"shape": list(shape), "cold_seconds": cold, "pairs": rows, **rows[0]}


def cascade(device: torch.device, shape, smoke: bool, **_) -> dict:
    from caio.refine.cascade import refine
    from caio.refine.settings import CascadeConfig

    fixed, moving = (t.to(device) for t in _pairs(shape)[0])
    cfg = CascadeConfig(steps=1 if smoke else 50)  # the default stages are the GPU stages
    init = torch.zeros(1, 3, *shape, device=device)
    _reset_peak(device)
    (_, report), seconds = _timed(lambda: refine(fixed, moving, init, cfg), device)
    return {
        "shape": list(shape),
        "stage_factors": list(cfg.stage_factors),
        "steps": report.steps,
        "seconds": seconds,
        "seconds_per_step": seconds / max(report.steps, 1),
        "peak_gb": _peak_gb(device),
    }


def _tiny_dataset(folder: Path, shape) -> Path:
    """``test_data``'s first pair resized to ``shape``, as a one-pair dataset."""
    import nibabel as nib

    fixed, moving = _pairs(shape)[0]
    images = folder / "imagesVal"
    images.mkdir(parents=True)
    for name, image in (("LUMIRMRI_3454_0000.nii.gz", fixed), ("LUMIRMRI_3455_0000.nii.gz", moving)):
        nib.save(nib.Nifti1Image(image[0, 0].numpy().astype(np.float32), np.eye(4)), str(images / name))
    entry = {"fixed": "./imagesVal/LUMIRMRI_3454_0000.nii.gz", "moving": "./imagesVal/LUMIRMRI_3455_0000.nii.gz"}
    return write_dataset(folder / "LUMIR25_dataset.json", [entry])


def _score(json_path: Path, disp_dir: Path, shape) -> dict:
    """Per-pair Dice / HD95 / NDV of ``disp_dir`` (labels: the dataset's ``labels.json`` without 0, else none;
    ``shape`` ``None``: the LUMIR grid)."""
    from caio.metrics.evaluate import evaluate_folder

    labels = read_labels(json_path.parent) if (json_path.parent / "labels.json").is_file() else None
    rows, _ = evaluate_folder(json_path, json_path.parent, disp_dir, labels=labels, expected_shape=shape)
    keys = ("pair", "status", "dice", "hd95", "ndv")
    return {row["pair"]: {k: row.get(k) for k in keys} for row in rows}


def _predict_once(json_path: Path, out: Path, device: torch.device, refine: str, smoke: bool) -> dict:
    extra = ["--device", str(device), "--refine", refine, *(["--shape", "any", "--budget-s", "5"] if smoke else [])]
    cmd = predict_command(json_path, json_path.parent, out, out / "report.json", *extra)
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    wall = time.monotonic() - start
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else None
    result = {"command": " ".join(cmd[1:]), "exit_code": done.returncode, "wall_s": wall, "report": report}
    if report is None:
        result["stderr_tail"] = done.stderr[-2000:]
    return result


def predict(device: torch.device, shape, smoke: bool, datasets: list[Path] | None = None, **_) -> dict:
    """``predict.py`` at the default budget on each dataset JSON (``test_data`` and ``--dataset`` ones), once per
    refinement (``auto`` = the device's default; on a GPU also ``cascade``, forced after the engine or VFA), each
    output folder scored in a worker process while the GPU runs the next one. ``report`` is the first run's report."""
    from concurrent.futures import ProcessPoolExecutor

    refines = ("auto",) if smoke else ("auto", "cascade")
    with tempfile.TemporaryDirectory(prefix="caio-gpu-check-") as tmp, ProcessPoolExecutor(4) as pool:
        tmp = Path(tmp)
        json_paths = [_tiny_dataset(tmp / "data", shape)] if smoke else [TEST_DATA / "LUMIR25_dataset.json"]
        json_paths += list(datasets or [])
        runs, scores = [], []
        for k, json_path in enumerate(json_paths):
            for refine in refines:
                out = tmp / f"out{k}_{refine}"
                out.mkdir()
                run = _predict_once(json_path, out, device, refine, smoke)
                runs.append({"dataset": str(json_path), "refine": refine, **run})
                scores.append(pool.submit(_score, json_path, out, shape if smoke and k == 0 else None))
        for run, future in zip(runs, scores):
            try:
                run["metrics"] = future.result()
            except Exception as err:
                run["metrics"] = {"error": f"{type(err).__name__}: {err}"}
    return {**runs[0], "runs": runs}


RUNNERS = {
    "environment": environment,
    "vfa": vfa,
    "brainid": brainid,
    "engine": engine,
    "cascade": cascade,
    "predict": predict,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, 1 cascade step (< 60 s)")
    parser.add_argument("--device", default=None, help="default: cuda (full) or cpu (--smoke)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/out/gpu_check_<stamp>.json)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--dataset", type=Path, action="append", default=[], help="another dataset JSON for the predict section"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cpu":
        torch.set_num_threads(2)
    shape = SMOKE_SHAPE if args.smoke else FULL_SHAPE
    out = args.out or stamped(OUT, "gpu_check").with_suffix(".json")
    result: dict = {"smoke": args.smoke, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    total = time.monotonic()
    for name in args.sections:
        start = time.monotonic()
        try:
            result[name] = RUNNERS[name](device=device, shape=shape, smoke=args.smoke, datasets=args.dataset)
        except Exception as err:
            result[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
        result[name]["section_s"] = time.monotonic() - start
        print(f"gpu_check: {name} done in {result[name]['section_s']:.1f} s", file=sys.stderr, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))  # partial results survive a timeout
    result["total_s"] = time.monotonic() - total
    out.write_text(json.dumps(result, indent=2, default=str))
    print(out)
    return 0 if not any("error" in result[s] for s in args.sections) else 1


if __name__ == "__main__":
    sys.exit(main())
