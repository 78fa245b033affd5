"""Registration benchmark: caio (engine, pipeline, training-free, cascade) against Greedy, ANTs, ConvexAdam, elastix,
FireANTs.

Run in the peer environment made by ``bench/setup_peers.sh`` (from the repository root)::

    nice -n 10 bench/.venv/bin/python -m bench.registration --sets real1mm ixi --ixi-pairs 3
    nice -n 10 bench/.venv/bin/python -m bench.registration --methods caio greedy --sets ixi

Sets (``shared/specs/data_and_peers.md``; ``../shared/data`` beside the checkout):

* ``real1mm``: voxelmorph test scan (fixed, 160x192x224) <- niivue FreeSurfer ``norm.mgz`` (moving),
  Dice over the 28 aseg labels of data_and_peers.md pair B (Destrieux cortex mapped to 3/42).
* ``ixi``: NiChart IXI T1 2 mm full-head pairs (subject 2k fixed, 2k+1 moving), DLMUSE labels.
* ``synth``: T2/FLAIR-like moving -> T1-like fixed made by :mod:`caio.synth.generator` from two SynthSeg label
  maps on a 96x112x96 grid (skipped if :mod:`caio.synth.generator` is absent).
* ``lumir``: the LUMIR-like set of ``python -m bench.make_lumir_like`` (``--lumir-root``; 160x224x192, already
  aligned, no extra affine): tables ``lumir-t1`` (T1 <- T1) and ``lumir-cross`` (T1 <- T2-/FLAIR-like),
  Dice over the DLMUSE ROIs of its ``labels.json`` (0 excluded).
* ``test_data``: the repository's ``test_data/`` pairs (``test_data-t1``, ``test_data-t2``), its labels.json
  without 0; already aligned.

caio rows: ``caio_engine`` = :func:`caio.engine.register` alone (time = the call);
``caio_pipeline`` = ``python predict.py`` on a one-pair JSON in a subprocess, time = its wall clock including
reading and writing, peak RSS = the subprocess's; its written displacement file is scored;
``caio`` = :func:`caio.backbone.training_free.register_training_free`; ``caio_cascade`` = that + the cascade.

``fireants`` (not run unless named in ``--methods``: minutes per 1 mm pair on 2 cores) = FireANTs 1.5.0 on the CPU,
moments + affine + greedy deformable with local CC as its brain-MRI quickstart (:func:`bench.methods.run_fireants`);
install it without its dependencies, ``bench/.venv/bin/pip install --no-deps fireants==1.5.0`` (else its rows are
errors saying so).

Every real moving image and label map is first aligned to the fixed one with one ANTs affine and
resampled onto the fixed grid; all methods get these same inputs. Each method runs in its own
subprocess (2 threads) so that its peak RSS (``ru_maxrss``, includes the Python/library baseline)
is its own. Time = registration only (no I/O). Each tool's transform is turned into a voxel
displacement on the fixed grid by warping coordinate images with it; labels are then warped
nearest-neighbour and scored exactly as the LUMIR evaluator (:func:`caio.metrics.evaluate.evaluate_pair`):
Dice and HD95 (voxels) over labels present in both maps (background excluded), NDV % inside
``fixed > 0`` (skull-stripped) or inside the fixed labels (full-head IXI). TRE (mm) = the TRE proxy of that same
warped label map: mean over the labels of the distance between each label's centroid in the fixed map and in the
warped moving map, through the fixed grid's affine (:func:`bench.common.mean_tre_mm`; LUMIR's TRE with the label
regions as landmarks; the ``synth`` grid's affine is the identity, so there it is in voxels). "affine Dice" /
"affine TRE" = the zero field (the moving labels as given, after the affine alignment of real pairs).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import numpy as np

from bench.common import (
    TEST_DATA,
    add_lumir_root_argument,
    add_out_argument,
    add_threads_argument,
    fmt,
    keep_row,
    markdown_header,
    markdown_row,
    run_worker,
    stamped,
    write_table,
)
from bench.methods import (
    is_cross,
    run_ants,
    run_caio,
    run_caio_engine,
    run_caio_pipeline,
    run_convexadam,
    run_elastix,
    run_fireants,
    run_greedy,
    score,
)
from bench.sets import prepare_ixi, prepare_lumir_folder, prepare_real1mm, prepare_synth

METHODS = (
    "caio_engine",
    "caio_pipeline",
    "caio",
    "caio_cascade",
    "greedy",
    "ants",
    "convexadam",
    "elastix",
    "fireants",
)
DEFAULT_METHODS = tuple(m for m in METHODS if m != "fireants")
"""What runs without ``--methods``: FireANTs takes minutes per 1 mm pair on 2 cores, so it runs only when named."""


def worker(method: str, case: Path, result: Path, threads: int) -> None:
    cross = is_cross(case)
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
        "fireants": lambda: run_fireants(case, cross, threads),
    }[method]
    seconds, disp = runner()
    rss_gib = extra.pop("rss_children_gib", None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = {"method": method, "seconds": seconds, "rss_gib": rss_gib, **score(case, disp), **extra}
    result.write_text(json.dumps(out))


# ------------------------------------------------------------------ driver


def run_method(method: str, case: Path, threads: int, timeout: float) -> dict:
    """One method on one case in a worker subprocess (:func:`bench.common.run_worker`)."""
    row = {"method": method, "case": case.name}
    return run_worker("bench.registration", [method, "--case", str(case)], threads, timeout, row)


def mean_of(rows: list[dict], key: str) -> float | None:
    """Mean of ``key`` over ``rows``; ``None`` if a row lacks it (rows of an earlier run read by ``--reuse``)."""
    return float(np.mean([r[key] for r in rows])) if all(r.get(key) is not None for r in rows) else None


def table(rows: list[dict], methods: list[str]) -> str:
    """Markdown table: one line per (set, method), means over that set's cases (TRE: the TRE proxy, mm)."""
    columns = ["set", "method", "pairs", "Dice", "affine Dice", "TRE (mm)", "affine TRE (mm)", "HD95 (vox)", "NDV %"]
    lines = markdown_header([*columns, "time (s)", "time / Greedy", "peak RSS (GiB)"])
    for set_name in dict.fromkeys(r.get("set", "?") for r in rows if "error" not in r):
        greedy = {r["case"]: r["seconds"] for r in rows if r.get("set") == set_name and r["method"] == "greedy"}
        for method in methods:
            ok = [r for r in rows if r.get("set") == set_name and r["method"] == method and "error" not in r]
            if not ok:
                continue
            ratios = [r["seconds"] / greedy[r["case"]] for r in ok if r["case"] in greedy]
            cells = [set_name, method, len(ok), fmt(mean_of(ok, "dice")), fmt(mean_of(ok, "dice_affine"))]
            cells += [fmt(mean_of(ok, "tre"), 2), fmt(mean_of(ok, "tre_affine"), 2), fmt(mean_of(ok, "hd95"), 2)]
            cells += [fmt(mean_of(ok, "ndv"), 4), fmt(mean_of(ok, "seconds"), 1)]
            cells += [fmt(float(np.mean(ratios)) if ratios else None, 2), fmt(max(r["rss_gib"] for r in ok), 2)]
            lines.append(markdown_row(cells))
    errors = [f"- {r['method']} on {r['case']}: {r['error']}" for r in rows if "error" in r]
    return (
        "\n".join(
            lines + [""] + versus_greedy(rows) + [""] + per_pair(rows, methods) + ([""] + errors if errors else [])
        )
        + "\n"
    )


def versus_greedy(rows: list[dict], method: str = "caio_engine") -> list[str]:
    """Per set: mean Dice and TRE-proxy differences and mean time ratio of ``method`` to Greedy over pairs both
    scored."""
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
            tre = [a["tre"] - b["tre"] for a, b in both if a.get("tre") is not None and b.get("tre") is not None]
            tre_text = f", TRE diff {float(np.mean(tre)):+.2f} mm" if len(tre) == len(both) else ""
            ratio = float(np.mean([a["seconds"] / b["seconds"] for a, b in both]))
            lines.append(
                f"- {set_name}: {method} vs Greedy: Dice diff {diff:+.3f}{tre_text}, time ratio {ratio:.2f} "
                f"({len(both)} pairs)"
            )
    return lines


def per_pair(rows: list[dict], methods: list[str]) -> list[str]:
    """Markdown table: "Dice / TRE mm (time s)" of every method on every pair, and the zero-field (affine)
    "Dice / TRE mm"."""
    ok = {(r["case"], r["method"]): r for r in rows if "error" not in r}
    cases = list(dict.fromkeys(r["case"] for r in ok.values()))
    lines = markdown_header(["pair", "zero field: Dice / TRE mm", *(f"{m}: Dice / TRE mm (s)" for m in methods)])
    for case in cases:
        any_row = next(r for (c, _), r in ok.items() if c == case)
        cells = [
            f"{fmt(ok[case, m]['dice'])} / {fmt(ok[case, m].get('tre'), 2)} ({ok[case, m]['seconds']:.0f} s)"
            if (case, m) in ok
            else "–"
            for m in methods
        ]
        zero = f"{fmt(any_row['dice_affine'])} / {fmt(any_row.get('tre_affine'), 2)}"
        lines.append(markdown_row([case, zero, *cells]))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sets = ["real1mm", "ixi", "synth", "lumir", "test_data"]
    p.add_argument("--sets", nargs="+", default=sets, choices=sets)
    add_lumir_root_argument(p)
    p.add_argument("--pairs", type=int, default=0, help="use only the first N pairs of every set (0: all)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=METHODS,
        help="default: all but fireants (minutes per 1 mm pair on 2 cores; name it to run it)",
    )
    p.add_argument("--ixi-pairs", type=int, default=10, help="number of IXI pairs (default 10)")
    p.add_argument("--synth-pairs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="3 IXI pairs, 1 synthetic pair")
    add_threads_argument(p)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per method and pair")
    p.add_argument("--method-major", action="store_true", help="run each method on every pair before the next method")
    p.add_argument(
        "--cross-only",
        nargs="*",
        default=[],
        choices=METHODS,
        help="methods run on the cross-contrast pairs only (e.g. convexadam, a cross-contrast peer)",
    )
    add_out_argument(p)
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
            "test_data": lambda: prepare_lumir_folder(cache, TEST_DATA, "LUMIR25_dataset.json", "test_data"),
        }[s]()
        cases += found[: args.pairs] if args.pairs else found
    rows = [
        r
        for path in args.reuse
        for r in json.loads(Path(path).read_text())
        if r["method"] not in methods and r["case"] in {c.name for c in cases}
    ]
    jobs = [(c, m) for m in methods for c in cases] if args.method_major else [(c, m) for c in cases for m in methods]
    jobs = [(c, m) for c, m in jobs if m not in args.cross_only or is_cross(c)]
    base = stamped(args.out, "registration")
    for case, method in jobs:
        keep_row(base, rows, run_method(method, case, args.threads, args.timeout), hidden=("trace", "report"))
    write_table(base, table(rows, [m for m in METHODS if any(r["method"] == m for r in rows)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
