#!/usr/bin/env python3
"""Build the submission image and run it exactly as the LUMIR organizers do, then check the outputs.

Steps (docker-py, so it works against Docker or any Docker-compatible API in DOCKER_HOST):

1. build the image from the repository root (``--build-arg BASE_IMAGE`` from the environment
   variable ``BASE_IMAGE`` when set, else the Dockerfile's default);
2. run it with the organizers' flags: ``--rm --ipc=host --network=none --user UID:GID``,
   the dataset JSON bound to ``/app/LUMIR25_dataset.json``, the data root to ``/app/input``
   and an empty output folder to ``/app/output``, a GPU requested only when the host has one,
   and the image's argument-free CMD;
3. check every expected ``disp_*.nii.gz`` (name, shape, float32, finite);
4. evaluate them against the label maps (Dice over the labels present in both maps, HD95,
   NDV) next to the zero-displacement baseline, and print a summary.

Exit status 0 only when the container exited 0, every output is valid, every metric is finite,
every pair with labels has a Dice above that of the zero displacement (test_data's moving images are
affinely aligned, so that is the affine-only Dice), and the run report shows every pair ``ok`` with
the path expected for the device and the weights in ``weights/`` (CPU: gate+engine; see
:func:`expected_path`). The report is read from ``CAIO_REPORT`` (a folder mounted at /app/report);
when the container wrote none, from its one stdout line per pair.
Environment: ``BASE_IMAGE``, ``CAIO_IMAGE`` (tag), ``CAIO_VALIDATE_BUDGET_S`` and
``CAIO_VALIDATE_STEPS`` (passed into the container as ``CAIO_BUDGET_S``/``CAIO_STEPS``; on a
host without a GPU the budget defaults to 60 s, the challenge's minute).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # caio.io / caio.spatial for the checks, also without an install

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from caio.errors import CaioInputError  # noqa: E402
from caio.io import Pair, load_pairs, output_names, read_displacement, validate_displacement_file  # noqa: E402

CPU_DEFAULT_BUDGET_S = "60"
CPU_DEFAULT_STEPS = None
REPORT_MOUNT = "/app/report"
WEIGHT_ROLES = {"backbone_mono": "vfa_mono", "backbone_multi": "vfa_multi", "contrast_adapter": "brainid"}


# ------------------------------------------------------------------ run report: status and path


def available_weights(weights_dir: Path | None = None) -> frozenset[str]:
    """Networks whose weights the image carries (``weights/`` of the repository by default)."""
    from caio.weights.manifest import resolve

    folder = weights_dir or REPO / "weights"
    return frozenset(attr for role, attr in WEIGHT_ROLES.items() if resolve(role, folder) is not None)


def expected_path(gpu: bool, cross: bool, available: frozenset[str]) -> tuple[str, ...]:
    """The steps the default configuration must run on a pair (e.g. ``("gate", "engine")`` on a CPU)."""
    from caio.pipeline.stages import plan_pair

    return plan_pair("cuda" if gpu else "cpu", cross, available, "auto", "auto").steps


def parse_pair_lines(text: str) -> list[dict]:
    """Report entries from ``predict.py``'s stdout lines ``[i/n] KEY STATUS gate=S:same|cross path=P ...``."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or not fields[0].startswith("[") or "/" not in fields[0]:
            continue
        entry = {"pair": fields[1], "status": fields[2], "message": line.partition(" | ")[2]}
        for item in fields[3:]:
            key, _, value = item.partition("=")
            if key == "path":
                entry["path"] = value
            elif key == "gate" and ":" in value:
                entry["cross_contrast"] = value.split(":", 1)[1].startswith("cross")
        entries.append(entry)
    return entries


def check_run_report(entries: Sequence[dict], gpu: bool, available: frozenset[str]) -> list[str]:
    """Problems: a pair that is not ``ok``, or whose path (steps that ran) is not the expected one.

    ``entries``: the ``pairs`` of a ``--report`` JSON (with ``trace``) or :func:`parse_pair_lines`.
    """
    problems = []
    if not entries:
        return ["the run reported no pair (no report and no per-pair line)"]
    for entry in entries:
        key, status = entry.get("pair", "?"), entry.get("status")
        if status not in ("ok", "resumed"):
            problems.append(f"{key}: status {status} ({entry.get('message') or 'no reason given'})")
        if status == "resumed":
            continue
        expected = expected_path(gpu, bool(entry.get("cross_contrast")), available)
        trace = entry.get("trace") or {}
        ran = [s["name"] for s in trace.get("steps", []) if s["outcome"] in ("ran", "fallback")]
        ran = [n for n in ran if n not in ("read", "write")] if trace else str(entry.get("path", "")).split("+")
        if tuple(ran) != expected:
            problems.append(f"{key}: path {'+'.join(ran) or '-'} is not the expected {'+'.join(expected)}")
        configured = trace.get("configured")
        if configured is not None and tuple(configured) != expected:
            problems.append(f"{key}: configured path {'+'.join(configured)} is not the expected {'+'.join(expected)}")
    return problems


# ------------------------------------------------------------------ checks and metrics


def label_path(image_path: Path) -> Path:
    """``.../imagesVal/X.nii.gz`` -> ``.../labelsVal/X.nii.gz``."""
    parts = list(image_path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].startswith("images"):
            parts[i] = "labels" + parts[i][len("images") :]
            return Path(*parts)
    return image_path.parent / "labels" / image_path.name


def dice_per_label(fixed: np.ndarray, warped: np.ndarray, labels: Sequence[int]) -> list[float]:
    out = []
    for lab in labels:
        a, b = fixed == lab, warped == lab
        denom = int(a.sum()) + int(b.sum())
        out.append(2.0 * int((a & b).sum()) / denom if denom else float("nan"))
    return out


def evaluate_pair(pair: Pair, disp: np.ndarray) -> dict:
    """Metrics of one pair via :mod:`caio.metrics.evaluate` (labels optional: without them only NDV).

    Dice/HD95 use the labels present in both the fixed and the moving map (0 included, as in
    the official list); ``dice_initial`` is the Dice of the zero displacement on the same labels.
    """
    from caio.metrics.evaluate import evaluate_pair as caio_evaluate_pair

    fixed_img = np.asarray(nib.load(str(pair.fixed)).dataobj, dtype=np.float32)
    flab_path, mlab_path = label_path(pair.fixed), label_path(pair.moving)
    if not (flab_path.is_file() and mlab_path.is_file()):
        return {"ndv_percent": caio_evaluate_pair(None, None, disp, fixed_img).ndv, "labels": "absent"}
    flab = np.asarray(nib.load(str(flab_path)).dataobj).astype(np.int64)
    mlab = np.asarray(nib.load(str(mlab_path)).dataobj).astype(np.int64)
    labels = sorted(set(np.unique(flab).tolist()) & set(np.unique(mlab).tolist()))
    metrics = caio_evaluate_pair(flab, mlab, disp, fixed_img, labels=labels)
    return {
        "ndv_percent": metrics.ndv,
        "dice": metrics.dice,
        "hd95": metrics.hd95,
        "n_labels": len(labels),
        "dice_initial": float(np.nanmean(dice_per_label(flab, mlab, labels))),
    }


def check_and_evaluate(pairs: Sequence[Pair], out: Path, data_root: Path) -> dict:
    """Validate every expected file, evaluate each pair, print a table; ``ok`` says whether all passed."""
    problems, rows = [], []
    expected = {name for p in pairs for name in output_names(p)}
    extra = sorted(p.name for p in out.iterdir() if p.name not in expected)
    for pair in pairs:
        shape = tuple(nib.load(str(pair.fixed)).shape[:3])
        bad = [r for r in (validate_displacement_file(out / n, shape) for n in output_names(pair)) if r]
        if bad:
            problems.extend(bad)
            rows.append({"pair": pair.key, "valid": False})
            continue
        disp = read_displacement(out / output_names(pair)[-1], expected_shape=shape)
        row = {"pair": pair.key, "valid": True, "max_abs_disp": float(np.abs(disp).max())}
        row.update(evaluate_pair(pair, disp))
        for key in ("dice", "hd95", "ndv_percent"):
            if key in row and not math.isfinite(row[key]):
                problems.append(f"{pair.key}: {key} is {row[key]}")
        # test_data's moving images are affinely aligned: the zero field is the affine-only result
        if "dice" in row and not row["dice"] > row["dice_initial"]:
            problems.append(
                f"{pair.key}: Dice {row['dice']:.4f} is not above the affine-only (zero displacement) "
                f"Dice {row['dice_initial']:.4f}"
            )
        rows.append(row)
    if extra:
        problems.append(f"unexpected files in the output folder: {', '.join(extra)}")
    print(f"{'pair':28s} {'dice':>7s} {'(init)':>7s} {'hd95':>7s} {'ndv%':>8s} {'max|u|':>7s}")
    for r in rows:
        if not r["valid"]:
            print(f"{r['pair']:28s} INVALID")
            continue
        f = lambda k, fmt, r=r: format(r[k], fmt) if k in r else "-"  # noqa: E731
        print(
            f"{r['pair']:28s} {f('dice', '7.4f')} {f('dice_initial', '7.4f')} {f('hd95', '7.3f')} "
            f"{f('ndv_percent', '8.4f')} {f('max_abs_disp', '7.2f')}"
        )
    summary = {"pairs": rows, "problems": problems, "ok": not problems}
    valid = [r for r in rows if r.get("valid") and "dice" in r]
    if valid:
        summary["mean_dice"] = float(np.nanmean([r["dice"] for r in valid]))
        summary["mean_dice_initial"] = float(np.nanmean([r["dice_initial"] for r in valid]))
        print(
            f"mean Dice {summary['mean_dice']:.4f} (zero displacement {summary['mean_dice_initial']:.4f}) "
            f"over {len(valid)} pairs with labels"
        )
    for p in problems:
        print(f"PROBLEM: {p}")
    return summary


# ------------------------------------------------------------------ container
def host_has_gpu() -> bool:
    """True when an NVIDIA GPU is visible on the host (the runtime may ignore GPU requests otherwise)."""
    return (
        Path("/dev/nvidia0").exists()
        or shutil.which("nvidia-smi") is not None
        and os.system("nvidia-smi -L >/dev/null 2>&1") == 0
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO / "test_data", help="data root (default: test_data/)")
    ap.add_argument("--json", type=Path, help="dataset JSON (default: <data>/LUMIR25_dataset.json)")
    ap.add_argument("--tag", default=os.environ.get("CAIO_IMAGE", "localhost/caio-lumir25:validate"))
    ap.add_argument(
        "--base-image",
        default=os.environ.get("BASE_IMAGE") or None,
        help="BASE_IMAGE build arg (env BASE_IMAGE; default: the Dockerfile's)",
    )
    ap.add_argument("--no-build", action="store_true", help="use the existing image --tag")
    ap.add_argument("--out", type=Path, help="output folder (default: a fresh temporary folder, removed after)")
    ap.add_argument("--user", help="UID:GID to run as (default: yours; 1000:1000 when you are root)")
    ap.add_argument(
        "--gpu", choices=("auto", "on", "off"), default="auto", help="request GPU 0 (auto: if the host has one)"
    )
    ap.add_argument(
        "--budget-s",
        default=os.environ.get("CAIO_VALIDATE_BUDGET_S"),
        help="per-pair budget passed as CAIO_BUDGET_S (CPU host default: 60)",
    )
    ap.add_argument(
        "--steps",
        default=os.environ.get("CAIO_VALIDATE_STEPS"),
        help="cascade steps passed as CAIO_STEPS (default: the cascade's)",
    )
    ap.add_argument("--timeout-s", type=float, default=3600, help="kill the container after this long")
    ap.add_argument("--summary", type=Path, help="write the validation summary JSON here")
    return ap.parse_args(argv)


def build(client, tag: str, base_image: str | None) -> float:
    import docker

    start = time.monotonic()
    buildargs = {"BASE_IMAGE": base_image} if base_image else {}
    print(f"validate: building {tag} (BASE_IMAGE={base_image or 'Dockerfile default'})", flush=True)
    try:
        client.images.build(path=str(REPO), tag=tag, rm=True, buildargs=buildargs)
    except docker.errors.BuildError as err:
        for chunk in err.build_log:
            sys.stderr.write(chunk.get("stream", "") or chunk.get("error", "") or "")
        raise SystemExit(f"validate: build failed: {err}") from None
    return time.monotonic() - start


def run_container(
    client,
    args: argparse.Namespace,
    json_path: Path,
    out: Path,
    user: str,
    environment: dict[str, str],
    gpu: bool,
    report_dir: Path | None = None,
) -> tuple[int, float, str]:
    """Organizer-style run; streams the container's output; returns (exit status, seconds, output text).

    ``report_dir`` (if given) is mounted read-write at :data:`REPORT_MOUNT` for the run report.
    """
    from docker.types import DeviceRequest

    kwargs = dict(
        ipc_mode="host",
        network_mode="none",
        user=user,
        environment=environment,
        detach=True,
        volumes={
            str(json_path.resolve()): {"bind": "/app/LUMIR25_dataset.json", "mode": "ro"},
            str(args.data.resolve()): {"bind": "/app/input", "mode": "ro"},
            str(out.resolve()): {"bind": "/app/output", "mode": "rw"},
        },
    )
    if report_dir is not None:
        kwargs["volumes"][str(report_dir.resolve())] = {"bind": REPORT_MOUNT, "mode": "rw"}
    if gpu:
        kwargs["device_requests"] = [DeviceRequest(device_ids=["0"], capabilities=[["gpu"]])]
    print(
        f"validate: docker run --rm --ipc=host --network=none --user {user}"
        f"{' --gpus device=0' if gpu else ''} {' '.join(f'-e {k}={v}' for k, v in environment.items())}"
        f" -v {json_path}:/app/LUMIR25_dataset.json -v {args.data}:/app/input -v {out}:/app/output {args.tag}",
        flush=True,
    )
    start = time.monotonic()
    container = client.containers.run(args.tag, **kwargs)  # the image's CMD, no arguments
    text = []
    try:
        for chunk in container.logs(stream=True, follow=True):
            text.append(chunk.decode(errors="replace"))
            sys.stdout.write(text[-1])
            sys.stdout.flush()
            if time.monotonic() - start > args.timeout_s:
                container.kill()
                break
        status = int(container.wait(timeout=60)["StatusCode"])
    finally:
        container.remove(force=True)  # = --rm
    return status, time.monotonic() - start, "".join(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import docker

    json_path = args.json or args.data / "LUMIR25_dataset.json"
    try:
        pairs = load_pairs(json_path, args.data)  # fails early (one line) on a broken test set
    except CaioInputError as err:
        raise SystemExit(f"validate: {err}") from None
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as err:
        raise SystemExit(
            f"validate: no container engine at DOCKER_HOST={os.environ.get('DOCKER_HOST', '(default)')}: {err}"
        ) from None
    timings = {}
    if not args.no_build:
        timings["build_s"] = build(client, args.tag, args.base_image)
    gpu = {"on": True, "off": False, "auto": host_has_gpu()}[args.gpu]
    environment = {}
    budget = args.budget_s or (None if gpu else CPU_DEFAULT_BUDGET_S)
    steps = args.steps or (None if gpu else CPU_DEFAULT_STEPS)
    if budget:
        environment["CAIO_BUDGET_S"] = str(budget)
    if steps:
        environment["CAIO_STEPS"] = str(steps)
    environment["CAIO_REPORT"] = f"{REPORT_MOUNT}/report.json"
    uid, gid = os.getuid(), os.getgid()
    user = args.user or (f"{uid}:{gid}" if uid != 0 else "1000:1000")
    out = args.out or Path(tempfile.mkdtemp(prefix="caio-validate-"))
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise SystemExit(f"validate: {out} is not empty")
    if uid == 0:
        os.chown(out, *(int(x) for x in user.split(":")))
    report_dir = Path(tempfile.mkdtemp(prefix="caio-validate-report-"))
    if uid == 0:
        os.chown(report_dir, *(int(x) for x in user.split(":")))
    try:
        status, timings["run_s"], text = run_container(client, args, json_path, out, user, environment, gpu, report_dir)
        start = time.monotonic()
        summary = check_and_evaluate(pairs, out, args.data)
        report_file = report_dir / "report.json"
        entries = json.loads(report_file.read_text())["pairs"] if report_file.is_file() else parse_pair_lines(text)
        run_problems = check_run_report(entries, gpu, available_weights())
        for problem in run_problems:
            print(f"PROBLEM: {problem}")
        summary["problems"] += run_problems
        summary["ok"] = summary["ok"] and not run_problems
        timings["check_s"] = time.monotonic() - start
    finally:
        shutil.rmtree(report_dir, ignore_errors=True)
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    summary.update(container_exit=status, timings=timings, gpu=gpu, environment=environment)
    ok = status == 0 and summary["ok"]
    print(f"validate: container exit {status}; " + "; ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"validate: {'PASS' if ok else 'FAIL'}", flush=True)
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
