"""Full-size VFA forward benchmark: time and peak memory (random weights, LUMIR config).

Usage (from the repo root)::

    nice -n 10 python -m bench.vfa                      # CPU (2 threads) + CUDA if present
    nice -n 10 python -m bench.vfa --devices cpu --shape 160 224 192 --threads 2

Each device runs in its own subprocess so that the CPU peak RSS (``ru_maxrss``) belongs to
that run alone. Prints one table row per (device, precision): wall seconds of the timed forward (after a
warm-up on CUDA), CPU seconds of the process (user + system, all threads), the 1-minute load
average at the end (a busy shared machine inflates wall time) and the peak memory (CPU: process peak
RSS, which includes the Python/torch baseline; CUDA: ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from bench.common import add_threads_argument


def run_one(device: str, precision: str, shape: list[int], threads: int, repeats: int) -> dict:
    """Time ``predict_displacement`` on random [0, 255] images; returns one result row."""
    import torch

    from caio.backbone.vfa import VFA, predict_displacement

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    model = VFA().eval().requires_grad_(False).to(dev)
    fixed = (torch.rand(1, 1, *shape) * 255).to(dev)
    moving = (torch.rand(1, 1, *shape) * 255).to(dev)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if dev.type == "cuda":
        predict_displacement(model, fixed, moving, precision)  # warm-up (cuDNN autotune, allocator)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        disp = predict_displacement(model, fixed, moving, precision)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    row = {
        "device": device,
        "precision": precision,
        "shape": shape,
        "threads": threads,
        "seconds": min(times),
        "cpu_seconds": min(cpu_times),
        "load_avg_1min": os.getloadavg()[0],
        "disp_abs_max": float(disp.abs().max()),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "baseline_rss_gb": baseline_rss,
    }
    if dev.type == "cuda":
        row["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
        row["gpu"] = torch.cuda.get_device_name()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)"
    )
    parser.add_argument(
        "--precisions", nargs="+", default=None, help="per device (default: cpu fp32; cuda fp32 bf16 fp16)"
    )
    parser.add_argument("--shape", nargs=3, type=int, default=[160, 224, 192])
    add_threads_argument(parser)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", nargs=2, metavar=("DEVICE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(args.worker[0], args.worker[1], args.shape, args.threads, args.repeats)))
        return 0
    devices = args.devices
    if devices is None:
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        precisions = args.precisions or (["fp32"] if device == "cpu" else ["fp32", "bf16", "fp16"])
        for precision in precisions:
            cmd = [
                sys.executable,
                "-m",
                "bench.vfa",
                "--worker",
                device,
                precision,
                "--shape",
                *map(str, args.shape),
                "--threads",
                str(args.threads),
                "--repeats",
                str(args.repeats),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{device} {precision}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"VFA forward, shape {tuple(args.shape)}, random weights")
    print(
        f"{'device':8} {'prec':5} {'threads':>7} {'wall s':>8} {'CPU s':>8} {'peak RSS GB':>12} {'peak CUDA GB':>13}"
        f" {'load':>5}"
    )
    for r in rows:
        cuda = f"{r['peak_cuda_gb']:13.2f}" if "peak_cuda_gb" in r else f"{'-':>13}"
        print(
            f"{r['device']:8} {r['precision']:5} {r['threads']:7d} {r['seconds']:8.1f} {r['cpu_seconds']:8.1f}"
            f" {r['peak_rss_gb']:12.2f} {cuda} {r['load_avg_1min']:5.1f}"
        )
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
