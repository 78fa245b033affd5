"""``caio evaluate``: the evaluation of :mod:`caio.metrics.evaluate` on a folder, as a table, CSV and JSON."""

from __future__ import annotations

import argparse
import csv
import io as text_io
import os
from collections.abc import Sequence
from pathlib import Path

from caio import io
from caio.cli.options import add_output, add_shape, examples
from caio.errors import CaioInputError
from caio.metrics.evaluate import DSC, HD95, LUMIR_LABELS, NDV, SUBSET_RANGES, TRE, evaluate_folder, official_cases

EXAMPLES = examples(
    "caio evaluate --json LUMIR25_dataset.json --data-root data/ --disp-dir output/",
    "caio evaluate --json test_data/LUMIR25_dataset.json --data-root test_data --disp-dir out/ -o metrics/",
)

CSV_COLUMNS = ("pair", "fixed", "moving", "disp_file", "status", "subset", "dice", "hd95", "tre", "ndv", "error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, help="dataset JSON (LUMIR25_dataset.json) or official eval config")
    parser.add_argument("--data-root", required=True, help="folder the JSON's ./imagesVal/... paths are relative to")
    parser.add_argument("--disp-dir", required=True, help="folder with the disp_<F>_<M>.nii.gz files")
    parser.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="label values ('lumir' = the 133 LUMIR labels; default: the JSON's list, else lumir)",
    )
    parser.add_argument("--labels-dir", default=None, help="folder of label maps (default: images -> labels)")
    parser.add_argument(
        "--landmarks-dir", default=None, help="folder of landmark images (default: images -> landmarks)"
    )
    parser.add_argument(
        "--labels-as-landmarks",
        action="store_true",
        help="without landmark files, TRE between the centroids of each label region (fixed vs warped moving)",
    )
    parser.add_argument(
        "--pairs-key",
        action="append",
        default=None,
        help="JSON key holding the pairs (repeatable; default: every list of fixed/moving entries)",
    )
    add_shape(parser, "expected grid (default: the JSON's expected_shape, else 160 224 192)")
    add_output(parser, "folder for metrics.csv and metrics.json (default: print only)")


def parse_labels(values: Sequence[str] | None) -> list[int] | None:
    """``--labels`` values: ``lumir`` or integers (spaces or commas)."""
    if values is None:
        return None
    if [v.lower() for v in values] == ["lumir"]:
        return list(LUMIR_LABELS)
    try:
        return [int(x) for v in values for x in v.split(",") if x.strip()]
    except ValueError:
        raise CaioInputError(f"--labels: expected 'lumir' or integers, got {' '.join(values)}") from None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_table(rows: Sequence[dict], aggregates: dict) -> str:
    """Readable per-pair table plus mean / std / robustness lines."""
    lines = [f"{'pair':<24} {'Dice':>8} {'HD95':>8} {'TRE':>8} {'NDV%':>8}  status"]
    for r in rows:
        lines.append(
            f"{r['pair']:<24} {_fmt(r['dice']):>8} {_fmt(r['hd95']):>8} {_fmt(r['tre']):>8} "
            f"{_fmt(r['ndv']):>8}  {r['status']}"
        )
    for stat, label in (("mean", "mean"), ("std", "std"), ("30", "p30 (TRE p70)")):
        values = [aggregates[m][stat] if m in aggregates else None for m in (DSC, HD95, TRE, NDV)]
        lines.append(f"{label:<24} " + " ".join(f"{_fmt(v):>8}" for v in values))
    for subset in SUBSET_RANGES:
        if f"{subset}_dice" in aggregates:
            a = aggregates[f"{subset}_dice"]
            lines.append(f"{subset + ' Dice':<24} mean {a['mean']:.4f} std {a['std']:.4f} p30 {a['30']:.4f}")
    return "\n".join(lines)


def write_outputs(out_dir: str | os.PathLike, rows: Sequence[dict], aggregates: dict) -> None:
    """``metrics.csv`` (one row per pair) and ``metrics.json`` (aggregates, official-style cases, rows)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CaioInputError(f"{out}: cannot create output folder ({err.strerror or err})") from None
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    io.write_text_atomic(out / "metrics.csv", buffer.getvalue())
    payload = {
        "name": "caio evaluate",
        "eval_version": "3.0",
        "aggregates": aggregates,
        "cases": official_cases(rows),
        "pairs": list(rows),
    }
    io.write_json_atomic(out / "metrics.json", payload)


def run(args: argparse.Namespace) -> int:
    rows, aggregates = evaluate_folder(
        args.json,
        args.data_root,
        args.disp_dir,
        labels_dir=args.labels_dir,
        landmarks_dir=args.landmarks_dir,
        labels=parse_labels(args.labels),
        expected_shape=args.shape,
        pairs_keys=args.pairs_key,
        labels_as_landmarks=args.labels_as_landmarks,
    )
    print(format_table(rows, aggregates))
    if args.output is not None:
        write_outputs(args.output, rows, aggregates)
        print(f"wrote {Path(args.output) / 'metrics.csv'} and {Path(args.output) / 'metrics.json'}")
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        raise CaioInputError(
            f"{args.disp_dir}: {len(bad)} of {len(rows)} displacement files missing or invalid "
            f"({', '.join(r['disp_file'] for r in bad)}); the first: {bad[0]['error']}"
        )
    return 0
