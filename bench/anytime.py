"""Anytime benchmark: Dice of :func:`caio.engine.register` at fixed time budgets (deadline = start + budget).

Run in the peer environment (``bench/setup_peers.sh``), from the repository root, after
``python -m bench.make_lumir_like``::

    nice -n 10 bench/.venv/bin/python -m bench.anytime                       # 3 pairs x 10/20/40/60/120 s
    nice -n 10 bench/.venv/bin/python -m bench.anytime --pairs 0 1 8 --budgets 10 60

Pairs are indices into the "validation" list of the LUMIR-like set (``--lumir-root``; default: the first two
T1 <- T1 pairs and the first cross-contrast pair). Every (pair, budget) runs in its own worker subprocess with
2 threads; the deadline is ``time.monotonic()`` at the start of the call + budget, images already in memory.
Wall = the ``register`` call (the one-off kernel loading, ``warm_up``, runs before the clock and is
reported apart); overrun % = max(0, wall - budget) / budget. Scoring as ``bench.registration``
(:func:`bench.methods.score`: :func:`caio.metrics.evaluate.evaluate_pair`, DLMUSE ROIs of ``labels.json``, NDV
inside ``fixed > 0``; TRE = the TRE proxy in mm, label-centroid distance of the same warped labels,
:func:`bench.common.mean_tre_mm`; zero-field = the moving labels as given).
Writes ``bench/out/anytime_<stamp>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import (
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
from bench.methods import load_pair_tensors, score
from bench.sets import prepare_lumir_folder

BUDGETS = (10.0, 20.0, 40.0, 60.0, 120.0)


def worker(case: Path, budget: float, result: Path, threads: int) -> None:
    from caio.engine import register, warm_up

    f, m = load_pair_tensors(case, threads)
    warm_up_s = warm_up()  # one-off kernel loading, reported apart (the pipeline does it at model loading)
    t0 = time.monotonic()
    disp, trace = register(f, m, similarity="auto", deadline=t0 + budget)
    wall = time.monotonic() - t0
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = {
        "budget_s": budget,
        "wall_s": wall,
        "overrun_pct": 100.0 * max(0.0, wall - budget) / budget,
        "rss_gib": rss_gib,
        "warm_up_s": warm_up_s,
        **score(case, disp[0].detach().double().numpy()),
        "trace": trace.to_dict(),
    }
    result.write_text(json.dumps(out))


def run_one(case: Path, budget: float, threads: int) -> dict:
    """One (pair, budget) in a worker subprocess (:func:`bench.common.run_worker`)."""
    row = {"case": case.name, "budget_s": budget}
    args = ["--case", str(case), "--budget", str(budget)]
    return run_worker("bench.anytime", args, threads, 3 * budget + 300, row)


def table(rows: list[dict]) -> str:
    """Per budget: mean Dice / TRE proxy / NDV / wall / worst overrun over the pairs, then every pair's Dice / TRE
    per budget."""
    ok = [r for r in rows if "error" not in r]
    budgets = sorted({r["budget_s"] for r in ok})
    columns = ["budget (s)", "pairs", "Dice", "zero-field Dice", "TRE (mm)", "zero-field TRE (mm)", "NDV %"]
    lines = markdown_header([*columns, "wall (s)", "max overrun %", "peak RSS (GiB)"])
    for b in budgets:
        rs = [r for r in ok if r["budget_s"] == b]
        mean = lambda k, rs=rs: float(np.mean([r[k] for r in rs]))  # noqa: E731
        cells = [f"{b:g}", len(rs), fmt(mean("dice")), fmt(mean("dice_affine")), fmt(mean("tre"), 2)]
        cells += [fmt(mean("tre_affine"), 2), fmt(mean("ndv"), 4), fmt(mean("wall_s"), 1)]
        lines.append(
            markdown_row([*cells, fmt(max(r["overrun_pct"] for r in rs), 1), fmt(max(r["rss_gib"] for r in rs), 2)])
        )
    cases = list(dict.fromkeys(r["case"] for r in ok))
    lines += ["", *markdown_header(["pair: Dice / TRE mm (wall s)", *(f"{b:g} s" for b in budgets)])]
    by = {(r["case"], r["budget_s"]): r for r in ok}
    for c in cases:
        cells = [
            f"{fmt(by[c, b]['dice'])} / {fmt(by[c, b]['tre'], 2)} ({by[c, b]['wall_s']:.0f} s)" if (c, b) in by else "–"
            for b in budgets
        ]
        lines.append(markdown_row([c, *cells]))
    errors = [f"- {r['case']} at {r['budget_s']:g} s: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_lumir_root_argument(p)
    p.add_argument(
        "--pairs",
        type=int,
        nargs="+",
        default=None,
        help="indices into the set's validation list (default: first two T1 pairs + first cross pair)",
    )
    p.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    add_threads_argument(p)
    add_out_argument(p)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.case, args.budget, args.result, args.threads)
        return 0
    cases = prepare_lumir_folder(args.out / "cache", args.lumir_root, "LUMIR_like_dataset.json", "lumir")
    if not cases:
        return 1
    if args.pairs is None:
        same = [c for c in cases if json.loads((c / "meta.json").read_text())["contrast"] == "same"]
        cross = [c for c in cases if c not in same]
        chosen = same[:2] + cross[:1]
    else:
        chosen = [cases[i] for i in args.pairs]
    base = stamped(args.out, "anytime")
    rows: list[dict] = []
    for case in chosen:
        for budget in args.budgets:
            keep_row(base, rows, run_one(case, budget, args.threads))
    write_table(base, table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
