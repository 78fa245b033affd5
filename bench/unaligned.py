"""Own scans, unaligned: affine + deformable registration of pairs whose moving image was moved and re-gridded.

One invocation runs every method on every case of the chosen sets (in the order given), the crossing
experiment right after each of its cases, and writes ``bench/out/unaligned_<stamp>.md`` (tables) and ``.json``
(rows, rewritten after each one), 2 threads per tool::

    cd /work/main && nice -n 10 bench/.venv/bin/python -m bench.unaligned
    # the same as: --sets real1mm cross ixi ixicross --ixi-pairs 8 --ixi-cross-pairs 4 \
    #   --methods caio greedy ants --crossing-pairs 3      (about 1 h on 2 free cores, several under load)
    # the run of 2026-12-07 (shared machine under load):
    nice -n 10 bench/.venv/bin/python -m bench.unaligned --sets ixicross ixi cross real1mm --ixi-pairs 4 \
        --ixi-cross-pairs 2 --crossing-pairs 3

The cases (sets ``real1mm``, ``cross``, ``ixi`` T1 <- T1, ``ixicross`` T1 <- T2/FLAIR-like; random world affine
and re-gridding of the moving image, labels carried; built once in ``bench/out/cache``) are described in
:mod:`bench.unaligned_cases`, the methods (``caio``, ``greedy``, ``ants``; ``fireants`` only when named in
``--methods``) and every column in :mod:`bench.unaligned_methods`, the crossing experiment (Greedy's and caio's
affine and deformable stages swapped, on the first ``--crossing-pairs`` ``ixi`` cases) in
:mod:`bench.unaligned_crossing`. Each tool's outputs stay in ``bench/out/unaligned_work/<case>/<method>/``
(overwritten by the next run).
Dice = mean over the labels present in both maps (0 excluded). Nothing of caio was tuned on these pairs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from bench.common import (
    OUT,
    add_out_argument,
    add_threads_argument,
    fmt,
    keep_row,
    markdown_header,
    markdown_row,
    stamped,
    thread_env,
    write_table,
)
from bench.unaligned_cases import SETS, cases
from bench.unaligned_crossing import crossing_table, run_crossing
from bench.unaligned_methods import DEFAULT_METHODS, METHODS, load_pair, score

WORK = OUT / "unaligned_work"
COLUMNS = {  # row key -> (column title, digits)
    "dice_affine": ("Dice affine", 3),
    "dice": ("Dice", 3),
    "tre": ("TRE mm", 2),
    "seconds": ("s", 1),
    "affine_seconds": ("s affine", 1),
    "ndv": ("NDV %", 4),
    "corner_mm": ("corner mm", 2),
    "d_ants": ("ΔDice ants", 4),
    "d_sitk": ("ΔDice sitk", 4),
    "img_ants": ("img ants %", 2),
    "img_sitk": ("img sitk %", 2),
    "inv_vox": ("inv vox", 3),
}


def case_table(rows: list[dict]) -> list[str]:
    """One Markdown row per case and method (``–`` where a column does not apply; ``(flagged)``: ``caio register``
    exited 1, its outputs written but distrusted by the engine's safeguard)."""
    lines = markdown_header(["set", "case", "method", *(title for title, _ in COLUMNS.values())])
    for r in rows:
        if "error" in r:
            lines.append(markdown_row([r["set"], r["case"], r["method"], r["error"]]))
            continue
        cells = [fmt(r.get(key), digits) for key, (_, digits) in COLUMNS.items()]
        method = f"{r['method']} (flagged)" if r.get("flagged") else r["method"]
        lines.append(markdown_row([r["set"], r["case"].removeprefix("unaligned_"), method, *cells]))
    return lines


def set_means(rows: list[dict]) -> list[str]:
    """Per set and method: mean of every column (ΔDice: the largest absolute value), n, time / Greedy's."""
    titles = [title if not key.startswith("d_") else f"max\\|{title}\\|" for key, (title, _) in COLUMNS.items()]
    lines = markdown_header(["set", "method", "n", *titles, "s / greedy s"])
    ok = [r for r in rows if "error" not in r]
    for set_name in dict.fromkeys(r["set"] for r in ok):
        greedy = [r["seconds"] for r in ok if r["set"] == set_name and r["method"] == "greedy"]
        for method in dict.fromkeys(r["method"] for r in ok if r["set"] == set_name):
            sel = [r for r in ok if r["set"] == set_name and r["method"] == method]
            cells = []
            for key, (_, digits) in COLUMNS.items():
                values = [r[key] for r in sel if r.get(key) is not None]
                reduce = (lambda v: float(np.max(np.abs(v)))) if key.startswith("d_") else np.mean
                cells.append(fmt(float(reduce(values)), digits) if values else "–")
            ratio = np.mean([r["seconds"] for r in sel]) / np.mean(greedy) if greedy else None
            lines.append(markdown_row([set_name, method, len(sel), *cells, fmt(ratio, 2)]))
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.unaligned", description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    p.add_argument("--ixi-pairs", type=int, default=8, help="ixi T1 <- T1 pairs (default 8, at most 8)")
    p.add_argument("--ixi-cross-pairs", type=int, default=4, help="ixicross pairs (default 4)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=list(METHODS),
        help="default: all but fireants (minutes per pair on 2 cores; name it to run it)",
    )
    p.add_argument("--crossing-pairs", type=int, default=3, help="ixi cases of the crossing experiment (0: none)")
    p.add_argument("--max-angle", type=float, default=15.0, help="degrees")
    p.add_argument("--max-shift", type=float, default=20.0, help="mm")
    p.add_argument("--voxel-factor", type=float, default=0.8, help="moving voxel size / original (IXI)")
    p.add_argument("--work", type=Path, default=WORK, help="folder for the tools' outputs")
    add_threads_argument(p)
    add_out_argument(p)
    args = p.parse_args(argv)
    if args.ixi_pairs > 8:
        p.error("--ixi-pairs: at most 8 (the ixicross subjects follow the first 16 ixi ones)")
    return args


def limit_threads(threads: int) -> None:
    """This process (antspyx, SimpleITK, torch) and its children on ``threads`` threads."""
    os.environ.update(thread_env(threads))
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def crossing_row(case: Path, args: argparse.Namespace) -> dict:
    """The crossing experiment's row for a case where caio and Greedy have run (an ``error`` if it fails)."""
    row = {"case": case.name, "method": "crossing"}
    try:
        row.update(run_crossing(load_pair(case), args.work / case.name, args.threads))
    except Exception as err:  # the other cases go on
        row["error"] = f"{type(err).__name__}: {err}"[:300]
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit_threads(args.threads)
    base, rows, crossing = stamped(args.out, "unaligned"), [], []
    crossing_left = args.crossing_pairs if {"caio", "greedy"} <= set(args.methods) else 0
    for case in cases(args):
        for method in args.methods:
            keep_row(base, rows, score(case, method, args.work / case.name / method, args.threads), ("printed",))
        if crossing_left > 0 and case.name.startswith("unaligned_ixi_"):
            crossing_left -= 1
            keep_row(base, crossing, crossing_row(case, args))
    text = "\n".join(["## Per case", "", *case_table(rows), "", "## Per set", "", *set_means(rows)])
    if crossing:
        title = "## Crossing (Dice, labels by nearest neighbour through each composed map)"
        text += "\n\n" + "\n".join([title, "", *crossing_table(crossing)])
    base.with_suffix(".json").write_text(json.dumps(rows + crossing, indent=1))
    write_table(base, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
