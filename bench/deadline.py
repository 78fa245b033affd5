"""Does every pair keep its budget? ``predict.py`` end to end on one full-size pair at a time.

For each budget (default 5, 10, 20, 60 s), each of 3 full-size pairs and each weights setting
(absent; deterministic weights by the fixtures' recipe in the official layouts, from
``tests/helpers/weights_recipe.py``), runs ``python predict.py --json ONE_PAIR.json --budget-s B --report R``
in a fresh process and prints: budget, the pair's seconds from the report (reading and writing
included: what the budget covers), the process's wall time (adds interpreter start and the one-off
model loading), overrun % of the pair over the budget, status and path.

Pairs: 1 T1<-T1 and 2 cross-contrast pairs of ``bench/out/lumir_like`` (``python -m bench.make_lumir_like``),
else ``test_data``. Example (one run, ~30 s, from the repository root)::

    nice -n 10 python -m bench.deadline --budgets 10 --pairs 1 --weights absent
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import LUMIR_LIKE, TEST_DATA, predict_command, thread_env, write_dataset

SETS = ((LUMIR_LIKE, "LUMIR_like_dataset.json"), (TEST_DATA, "LUMIR25_dataset.json"))


def pick_pairs(n: int) -> tuple[Path, list[dict]]:
    """Data root and up to ``n`` pair entries: a same-contrast pair first, then cross-contrast ones."""
    for root, name in SETS:
        if (root / name).is_file():
            entries = json.loads((root / name).read_text())["validation"]
            same = [e for e in entries if e["fixed"][-11:] == e["moving"][-11:]]
            cross = [e for e in entries if e not in same]
            return root, (same[:1] + cross + same[1:])[:n]
    raise SystemExit("no benchmark set found (bench/out/lumir_like or test_data)")


def weights_folder(kind: str, scratch: Path) -> Path:
    """``absent``: an empty folder; ``deterministic``: the fixtures' recipe written once."""
    folder = scratch / f"weights-{kind}"
    if kind == "deterministic" and not folder.is_dir():
        from tests.helpers.weights_recipe import write_deterministic_weights  # the repository root is on sys.path

        write_deterministic_weights(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_one(root: Path, entry: dict, budget: float, weights: Path, scratch: Path, device: str) -> dict:
    """One ``predict.py`` process on one pair; the row to print."""
    work = Path(tempfile.mkdtemp(dir=scratch))
    report = work / "report.json"
    extra = ["--budget-s", str(budget), "--device", device, "--weights", str(weights)]
    command = predict_command(write_dataset(work / "pair.json", [entry]), root, work / "out", report, *extra)
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env=thread_env(2))
    wall = time.monotonic() - start
    row = {"budget_s": budget, "wall_s": wall, "exit": proc.returncode, "command": " ".join(command)}
    if not report.is_file():
        return row | {"status": "no report", "path": "-", "pair_s": float("nan"), "stderr": proc.stderr[-2000:]}
    pair = json.loads(report.read_text())["pairs"][0]
    seconds = pair["seconds"]
    return row | {
        "pair": pair["pair"],
        "pair_s": seconds,
        "overrun_pct": 100.0 * max(seconds - budget, 0.0) / budget,
        "status": pair["status"],
        "path": pair.get("path", "-"),
        "message": pair.get("message", ""),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 20, 60])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--weights", nargs="+", choices=("absent", "deterministic"), default=["absent", "deterministic"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json-out", type=Path, help="write every row here")
    args = ap.parse_args(argv)
    root, entries = pick_pairs(args.pairs)
    rows = []
    with tempfile.TemporaryDirectory(prefix="caio-bench-deadline-") as tmp:
        scratch = Path(tmp)
        print(f"{'weights':13s} {'budget':>6s} {'pair':32s} {'pair_s':>7s} {'wall_s':>7s} {'over%':>6s} status path")
        for kind in args.weights:
            folder = weights_folder(kind, scratch)
            for budget in args.budgets:
                for entry in entries:
                    row = run_one(root, entry, budget, folder, scratch, args.device) | {"weights": kind}
                    rows.append(row)
                    print(
                        f"{kind:13s} {budget:6.0f} {row.get('pair', '?'):32s} {row['pair_s']:7.1f} {row['wall_s']:7.1f}"
                        f" {row.get('overrun_pct', float('nan')):6.1f} {row['status']} {row['path']}"
                        + (f" | {row['message']}" if row.get("message") else ""),
                        flush=True,
                    )
    worst = max((r.get("overrun_pct", float("inf")) for r in rows), default=0.0)
    print(f"largest overrun: {worst:.1f} % of the budget (target <= 10 %)")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))
    return 0 if worst <= 10.0 else 1


if __name__ == "__main__":
    sys.exit(main())
