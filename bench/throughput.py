"""Throughput of ``predict.py``: reading and writing overlapped with the registration, or not (issue 15).

Runs ``predict.py`` (CPU, fixed small budget) on N pairs -- ``test_data`` plus the LUMIR-like set
(``bench/out/lumir_like``) when present -- once with overlap and once with ``--no-overlap``, each in
its own subprocess, and prints a table: total wall seconds, model loading, per pair registration
seconds (``seconds - io_wait_s``), I/O wait and background write seconds (mean and max over pairs
after the first), and the process's peak RSS. ``--gzip`` instead measures the gzip levels of one
160x224x192x3 float32 field (time and size). From the repository root::

    nice -n 10 python -m bench.throughput --pairs 2 --budget-s 20            # both modes
    nice -n 10 python -m bench.throughput --gzip [--field out/disp_X_Y.nii.gz]

Writes ``bench/out/throughput_<stamp>.json`` (the raw reports) beside the printed table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    LUMIR_LIKE,
    OUT,
    TEST_DATA,
    add_threads_argument,
    markdown_header,
    markdown_row,
    predict_command,
    stamped,
    thread_env,
    write_dataset,
)

SETS = {
    "test_data": (TEST_DATA / "LUMIR25_dataset.json", TEST_DATA),
    "lumir_like": (LUMIR_LIKE / "LUMIR_like_dataset.json", LUMIR_LIKE),
}


def gather_pairs(n: int) -> list[tuple[Path, Path]]:
    """Up to ``n`` (fixed, moving) absolute paths: ``test_data`` first, then the LUMIR-like set."""
    pairs: list[tuple[Path, Path]] = []
    for json_path, root in SETS.values():
        if not json_path.is_file():
            continue
        data = json.loads(json_path.read_text())
        for key in ("validation", "test", "training"):
            for entry in data.get(key, []) or []:
                if isinstance(entry, dict) and "fixed" in entry and "moving" in entry:
                    pairs.append(tuple((root / entry[k].removeprefix("./")).resolve() for k in ("fixed", "moving")))
    return pairs[:n]


def make_dataset(pairs: list[tuple[Path, Path]], folder: Path) -> Path:
    """A dataset JSON in ``folder`` whose ``imagesVal/`` holds symbolic links to the pairs' images."""
    images = folder / "imagesVal"
    images.mkdir(parents=True, exist_ok=True)
    entries = []
    for fixed, moving in pairs:
        for path in (fixed, moving):
            link = images / path.name
            if not link.exists():
                link.symlink_to(path)
        entries.append({"fixed": f"./imagesVal/{fixed.name}", "moving": f"./imagesVal/{moving.name}"})
    return write_dataset(folder / "LUMIR25_dataset.json", entries)


def run_mode(json_path: Path, out: Path, budget_s: float, overlap: bool, threads: int) -> dict:
    """One ``predict.py`` run in a subprocess; returns its report plus wall seconds and peak RSS."""
    report = out.with_suffix(".report.json")
    extra = ["--device", "cpu", "--budget-s", str(budget_s), *([] if overlap else ["--no-overlap"])]
    cmd = predict_command(json_path, json_path.parent, out, report, *extra)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=thread_env(threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    rc = os.waitstatus_to_exitcode(status)
    if not report.is_file():
        raise SystemExit(f"predict.py failed (exit {rc}):\n{output[-3000:]}")
    result = json.loads(report.read_text())
    result.update(
        wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024, exit_code_seen=rc, mode="overlap" if overlap else "sequential"
    )
    return result


def summarise(result: dict) -> dict:
    pairs = result["pairs"]
    later = pairs[1:] or pairs
    reg = [p["seconds"] - p["io_wait_s"] for p in pairs]
    return {
        "mode": result["mode"],
        "pairs": len(pairs),
        "total_s": result["wall_s"],
        "run_s": result["seconds"],
        "models_s": (result.get("model_loading") or {}).get("seconds") or 0.0,
        "reg_mean_s": float(np.mean(reg)),
        "io_wait_first_s": pairs[0]["io_wait_s"],
        "io_wait_later_mean_s": float(np.mean([p["io_wait_s"] for p in later])),
        "io_wait_later_max_s": float(np.max([p["io_wait_s"] for p in later])),
        "write_mean_s": float(np.mean([p.get("write_s", 0.0) for p in pairs])),
        "peak_rss_mb": result["peak_rss_mb"],
        "statuses": ",".join(p["status"] for p in pairs),
    }


def print_table(rows: list[dict]) -> None:
    print("\n".join(markdown_header(list(rows[0]))))
    for row in rows:
        print(markdown_row(f"{v:.2f}" if isinstance(v, float) else v for v in row.values()))


def smooth_field(shape=(160, 224, 192), seed: int = 0) -> np.ndarray:
    """A smooth random displacement ``(D0, D1, D2, 3)`` float32 (a few voxels), like a registration's."""
    import torch

    torch.manual_seed(seed)
    low = torch.randn(1, 3, 10, 14, 12) * 3
    disp = torch.nn.functional.interpolate(low, size=shape, mode="trilinear", align_corners=True)[0].numpy()
    return np.ascontiguousarray(np.moveaxis(disp, 0, -1), dtype=np.float32)


def gzip_table(field_path: Path | None, levels=(0, 1, 6, 9)) -> list[dict]:
    """Seconds and MB to gzip one field's NIfTI bytes at each level, and a nibabel round trip check."""
    import nibabel as nib

    from caio.io.atomic import write_nifti_atomic

    field = np.asarray(nib.load(str(field_path)).dataobj, np.float32) if field_path else smooth_field()
    raw = nib.Nifti1Image(field, np.eye(4)).to_bytes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in levels:
            start = time.perf_counter()
            size = len(gzip.compress(raw, compresslevel=level))
            seconds = time.perf_counter() - start
            path = write_nifti_atomic(Path(tmp) / f"l{level}.nii.gz", field, compresslevel=level)
            same = bool(np.array_equal(np.asarray(nib.load(str(path)).dataobj), field))
            rows.append(
                {"level": level, "seconds": seconds, "MB": size / 1e6, "raw_MB": len(raw) / 1e6, "loads_equal": same}
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4, help="number of pairs (test_data first, then lumir_like)")
    parser.add_argument("--budget-s", type=float, default=20.0)
    parser.add_argument("--modes", nargs="+", choices=("overlap", "sequential"), default=["overlap", "sequential"])
    add_threads_argument(parser)
    parser.add_argument("--gzip", action="store_true", help="measure gzip levels instead")
    parser.add_argument(
        "--field", type=Path, help="--gzip: a displacement file to compress (default: a smooth random field)"
    )
    args = parser.parse_args()
    out_json = stamped(OUT, "throughput").with_suffix(".json")
    if args.gzip:
        rows = gzip_table(args.field)
        print_table(rows)
        out_json.write_text(json.dumps({"gzip": rows, "field": str(args.field or "smooth random")}, indent=2))
        return 0
    pairs = gather_pairs(args.pairs)
    print(f"{len(pairs)} pairs, budget {args.budget_s} s, {args.threads} threads", flush=True)
    rows, raw = [], []
    with tempfile.TemporaryDirectory(prefix="caio-throughput-") as tmp:
        json_path = make_dataset(pairs, Path(tmp) / "data")
        for mode in args.modes:
            result = run_mode(json_path, Path(tmp) / f"out_{mode}", args.budget_s, mode == "overlap", args.threads)
            raw.append(result)
            rows.append(summarise(result))
            print(f"{mode}: {rows[-1]['total_s']:.1f} s", flush=True)
    print_table(rows)
    out_json.write_text(
        json.dumps({"args": vars(args) | {"field": None}, "rows": rows, "reports": raw}, indent=2, default=str)
    )
    print(f"written {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
