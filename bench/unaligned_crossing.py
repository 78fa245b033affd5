"""Crossing experiment of :mod:`bench.unaligned`: which stage, affine or deformable, carries a Dice gap.

On a case where ``caio`` and ``greedy`` have run (their work folders hold ``affine.mat`` / ``itk_warp.nii.gz`` and
``affine.mat`` / ``warp.nii.gz``), these combinations, every one scored with the labels carried by nearest
neighbour through the composed map (as ``caio warp --nearest``), the same interpolation for all:

* ``GA`` / ``CA``: Greedy's / caio's affine alone;
* ``GA+GD``: Greedy's chain (its baseline);
* ``CA+CD``: caio's chain (its ITK warp, then its affine converted to Greedy's RAS matrix);
* ``GA+CD``: the moving image resliced by Greedy's affine onto the fixed grid (linear), ``caio register
  fixed resliced --affine none --itk-warp W`` (caio's deformable stage alone), labels through ``W`` + Greedy's
  affine;
* ``CA+GD``: Greedy's deformable stage started from caio's affine (``-it``), labels through its warp + caio's
  affine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from bench.unaligned_methods import (
    Pair,
    greedy,
    greedy_deformable,
    labels_through_itk,
    read_greedy_matrix,
    run_command,
    write_greedy_matrix,
)


def run_crossing(pair: Pair, work_root: Path, threads: int) -> dict:
    """The Dice of the combinations of the module docstring, and the seconds of the two new runs."""
    from caio.io.itk import read_itk_affine

    caio_dir, greedy_dir, work = work_root / "caio", work_root / "greedy", work_root / "crossing"
    work.mkdir(parents=True, exist_ok=True)
    f, m, cross = pair.case / "fixed.nii.gz", pair.case / "moving.nii.gz", bool(pair.meta["cross"])
    g_affine, g_warp = greedy_dir / "affine.mat", greedy_dir / "warp.nii.gz"
    c_affine = write_greedy_matrix(work / "caio_affine.txt", read_itk_affine(caio_dir / "affine.mat"))
    c_warp = caio_dir / "itk_warp.nii.gz"

    resliced = work / "moving_on_fixed_by_greedy_affine.nii.gz"
    greedy(f"-d 3 -threads {threads} -rf {f} -ri LINEAR -rm {m} {resliced} -r {g_affine}")
    start = time.perf_counter()
    register = ["register", str(f), str(resliced), "-o", str(work / "disp.nii.gz"), "--affine", "none"]
    register += ["--itk-warp", str(work / "caio_warp.nii.gz"), "--device", "cpu", "--threads", str(threads)]
    run_command([sys.executable, "-m", "caio", *register], threads, accepted=(0, 1))  # 1: written, flagged
    caio_seconds = time.perf_counter() - start
    start = time.perf_counter()
    greedy_deformable(f, m, c_affine, work / "greedy_warp.nii.gz", threads, cross)
    greedy_seconds = time.perf_counter() - start

    g_matrix, c_matrix = read_greedy_matrix(g_affine), read_itk_affine(caio_dir / "affine.mat")

    def dice(matrix: np.ndarray, warp: Path | None = None) -> float:
        return pair.dice(labels_through_itk(pair, matrix, warp))

    return {
        "GA": dice(g_matrix),
        "CA": dice(c_matrix),
        "GA+GD": dice(g_matrix, g_warp),
        "CA+CD": dice(c_matrix, c_warp),
        "GA+CD": dice(g_matrix, work / "caio_warp.nii.gz"),
        "CA+GD": dice(c_matrix, work / "greedy_warp.nii.gz"),
        "seconds_caio_deformable": caio_seconds,
        "seconds_greedy_deformable": greedy_seconds,
    }


COMBINATIONS = ("GA", "CA", "GA+GD", "CA+CD", "GA+CD", "CA+GD")
SECONDS = ("seconds_caio_deformable", "seconds_greedy_deformable")


def crossing_table(rows: list[dict]) -> list[str]:
    """Markdown lines: one row per case and the mean."""
    from bench.common import markdown_header, markdown_row

    lines = markdown_header(["case", *COMBINATIONS, "s caio D", "s greedy D"])
    done = [r for r in rows if "GA" in r]
    for r in rows:
        if "GA" not in r:
            lines.append(markdown_row([r["case"], r.get("error", "–")]))
            continue
        cells = [f"{r[k]:.3f}" for k in COMBINATIONS] + [f"{r[k]:.1f}" for k in SECONDS]
        lines.append(markdown_row([r["case"], *cells]))
    if done:
        means = [f"{np.mean([r[k] for r in done]):.3f}" for k in COMBINATIONS]
        seconds = [f"{np.mean([r[k] for r in done]):.1f}" for k in SECONDS]
        lines.append(markdown_row(["**mean**", *means, *seconds]))
    return lines
