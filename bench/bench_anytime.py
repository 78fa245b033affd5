"""Anytime benchmark: Dice of :func:`caio.engine.register` at fixed time budgets (deadline = start + budget).

Run in the peer environment (``bench/setup_peers.sh``), from the repository root, after
``bench/make_lumir_like.py``::

    nice -n 10 bench/.venv/bin/python bench/bench_anytime.py                       # 3 pairs x 10/20/40/60/120 s
    nice -n 10 bench/.venv/bin/python bench/bench_anytime.py --pairs 0 1 8 --budgets 10 60

Pairs are indices into the "validation" list of the LUMIR-like set (``--lumir-root``; default: the first two
T1 <- T1 pairs and the first cross-contrast pair). Every (pair, budget) runs in its own worker subprocess with
2 threads; the deadline is ``time.monotonic()`` at the start of the call + budget, images already in memory.
Wall = the ``register`` call (the one-off kernel loading, ``warm_up``, runs before the clock and is
reported apart); overrun % = max(0, wall - budget) / budget. Scoring as ``bench_registration.py``
(:func:`caio.metrics.evaluate.evaluate_pair`, DLMUSE ROIs of ``labels.json``, NDV inside ``fixed > 0``).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_methods as bm  # noqa: E402  (sibling scripts: loading and scoring, worker subprocesses, case folders)
import bench_registration as br  # noqa: E402
import bench_sets as bs  # noqa: E402

BUDGETS = (10.0, 20.0, 40.0, 60.0, 120.0)


def worker(case: Path, budget: float, result: Path, threads: int) -> None:
    from caio.engine import register, warm_up

    f, m = bm._load_pair_tensors(case, threads)
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
        **bm.score(case, disp[0].detach().double().numpy()),
        "trace": trace.to_dict(),
    }
    result.write_text(json.dumps(out))


def run_one(case: Path, budget: float, threads: int) -> dict:
    """One (pair, budget) in a worker subprocess (:func:`bench_registration.run_worker`)."""
    row = {"case": case.name, "budget_s": budget}
    args = ["--case", str(case), "--budget", str(budget)]
    return br.run_worker(Path(__file__).resolve(), args, threads, 3 * budget + 300, row)


def table(rows: list[dict]) -> str:
    """Per budget: mean Dice / NDV / wall / worst overrun over the pairs, then every pair's Dice per budget."""
    ok = [r for r in rows if "error" not in r]
    budgets = sorted({r["budget_s"] for r in ok})
    lines = [
        "| budget (s) | pairs | Dice | zero-field Dice | NDV % | wall (s) | max overrun % | peak RSS (GiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in budgets:
        rs = [r for r in ok if r["budget_s"] == b]
        lines.append(
            f"| {b:g} | {len(rs)} | {np.mean([r['dice'] for r in rs]):.3f} | "
            f"{np.mean([r['dice_affine'] for r in rs]):.3f} | {np.mean([r['ndv'] for r in rs]):.4f} | "
            f"{np.mean([r['wall_s'] for r in rs]):.1f} | {max(r['overrun_pct'] for r in rs):.1f} | "
            f"{max(r['rss_gib'] for r in rs):.2f} |"
        )
    cases = list(dict.fromkeys(r["case"] for r in ok))
    lines += ["", "| pair | " + " | ".join(f"{b:g} s" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    by = {(r["case"], r["budget_s"]): r for r in ok}
    for c in cases:
        lines.append(
            f"| {c} | "
            + " | ".join(
                f"{by[c, b]['dice']:.3f} ({by[c, b]['wall_s']:.0f} s)" if (c, b) in by else "–" for b in budgets
            )
            + " |"
        )
    errors = [f"- {r['case']} at {r['budget_s']:g} s: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lumir-root", type=Path, default=bs.LUMIR_LIKE)
    p.add_argument(
        "--pairs",
        type=int,
        nargs="+",
        default=None,
        help="indices into the set's validation list (default: first two T1 pairs + first cross pair)",
    )
    p.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.case, args.budget, args.result, args.threads)
        return 0
    cases = bs.prepare_lumir_folder(args.out / "cache", args.lumir_root, "LUMIR_like_dataset.json", "lumir")
    if not cases:
        return 1
    if args.pairs is None:
        same = [c for c in cases if json.loads((c / "meta.json").read_text())["contrast"] == "same"]
        cross = [c for c in cases if c not in same]
        chosen = same[:2] + cross[:1]
    else:
        chosen = [cases[i] for i in args.pairs]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for case in chosen:
        for budget in args.budgets:
            rows.append(run_one(case, budget, args.threads))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "trace"}), flush=True)
            (args.out / f"anytime_{stamp}.json").write_text(json.dumps(rows, indent=1))
    text = table(rows)
    (args.out / f"anytime_{stamp}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
