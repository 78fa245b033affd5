"""Pieces shared by the benchmark scripts, each written once.

* Where things are: :data:`REPO`, :data:`OUT` (``bench/out``, git-ignored), :data:`DATA` (``../shared/data``),
  :data:`IXI`, :data:`LUMIR_LIKE`, :data:`TEST_DATA`; the real 1 mm pair's constants :data:`VXM_AFFINE`,
  :data:`ASEG28` and :func:`destrieux_to_aseg`; :func:`ixi_subjects`.
* Files: :func:`save_nifti`, :func:`read_labels` (a set's ``labels.json``), :func:`write_dataset` (a LUMIR-style
  pairs JSON), :func:`stamped` (an output path ``bench/out/<name>_<YYYYmmdd-HHMMSS>``), :func:`keep_row` and
  :func:`write_table` (its ``.json`` rows and ``.md`` table).
* Subprocesses: :func:`thread_env` (thread variables), :func:`run_worker` (``python -m bench.<name> --worker ...``
  limited to N threads, its row read back as JSON), :func:`predict_command` (``predict.py`` on a dataset JSON).
* Scores: :func:`common_labels`, :func:`mean_dice`, :func:`mean_tre_mm` (the TRE proxy: label-centroid distance,
  mm), :func:`evaluator_scores` (the LUMIR evaluator's Dice / HD95 / NDV on a voxel displacement, and the TRE proxy).
* Tables and flags: :func:`fmt`, :func:`markdown_header`, :func:`markdown_row`, :func:`add_threads_argument`,
  :func:`add_out_argument`, :func:`add_lumir_root_argument`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
"""Every benchmark's default output folder (git-ignored)."""
DATA = REPO.parent / "shared" / "data"
"""The read-only data beside the checkout (``shared/data/SOURCES.md``)."""
IXI = DATA / "nichart_ixi_dlmuse_2mm"
"""NiChart IXI subjects: ``T1/<subject>_T1.nii.gz`` (2 mm full head) and ``DLMUSE/<subject>_T1_DLMUSE.nii.gz``."""
LUMIR_LIKE = OUT / "lumir_like"
"""The LUMIR-like set made by ``python -m bench.make_lumir_like``."""
TEST_DATA = REPO / "test_data"
"""The repository's two LUMIR-style pairs (``LUMIR25_dataset.json``)."""
VXM_AFFINE = np.array([[-1, 0, 0, 80], [0, 0, 1, -112], [0, -1, 0, 96], [0, 0, 0, 1]], float)
"""World affine of the voxelmorph test scan (160x192x224, 1 mm, LIA)."""
ASEG28 = [2, 3, 4, 7, 8, *range(10, 19), 24, 28, 41, 42, 43, 46, 47, *range(49, 55), 60]
"""The 28 aseg labels of data_and_peers.md pair B (Dice of the peers there is over these)."""


def ixi_subjects() -> list[str]:
    """The IXI subject names (``IXI002-Guys-0828``...) in sorted order."""
    return sorted(p.name[: -len("_T1.nii.gz")] for p in (IXI / "T1").glob("*_T1.nii.gz"))


def destrieux_to_aseg(seg: np.ndarray) -> np.ndarray:
    """``aparc.a2009s+aseg`` labels with the Destrieux cortex parcels mapped to aseg cortex (left 3, right 42)."""
    seg = np.asarray(seg).astype(np.int32)
    seg[(seg >= 11100) & (seg < 11200)] = 3
    seg[(seg >= 12100) & (seg < 12200)] = 42
    return seg


# ------------------------------------------------------------------ files


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))


def read_labels(folder: Path) -> list[int]:
    """The non-zero label values of ``folder/labels.json`` (``{"labels": [...]}``, the LUMIR lists include 0)."""
    return [k for k in json.loads((folder / "labels.json").read_text())["labels"] if k != 0]


def write_dataset(path: Path, entries: list[dict]) -> Path:
    """A LUMIR-style dataset JSON at ``path`` whose "validation" list is ``entries`` (``{"fixed", "moving"}``)."""
    path.write_text(json.dumps({"name": "LUMIR", "validation": entries}))
    return path


def stamped(out: Path, name: str) -> Path:
    """``out/<name>_<YYYYmmdd-HHMMSS>`` (add the suffix with ``.with_suffix``); ``out`` is created."""
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}"


def keep_row(base: Path, rows: list[dict], row: dict, hidden: tuple[str, ...] = ("trace",)) -> None:
    """Append ``row`` to ``rows``, print it as one JSON line without the bulky ``hidden`` keys, and rewrite
    ``base.json`` with every row so far (an interrupted run keeps its finished rows)."""
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if k not in hidden}), flush=True)
    base.with_suffix(".json").write_text(json.dumps(rows, indent=1))


def write_table(base: Path, text: str) -> None:
    """Write the Markdown ``text`` to ``base.md`` and print it."""
    base.with_suffix(".md").write_text(text)
    print(text)


# ------------------------------------------------------------------ subprocesses


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with OpenMP, MKL and ITK limited to ``threads`` threads."""
    n = str(threads)
    return dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=n)


def run_worker(module: str, worker_args: list[str], threads: int, timeout: float, row: dict) -> dict:
    """Run ``python -m module --worker *worker_args --result R --threads T`` limited to ``threads`` threads.

    The worker writes its row as JSON to the temporary file ``R``. Returns that row, else ``row`` with an
    ``error`` (the worker's last output line, or the timeout after ``timeout`` seconds). The worker inherits
    this process's working folder, so ``bench`` imports there as it does here.
    """
    env = dict(thread_env(threads), PYTHONUNBUFFERED="1")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result = Path(fh.name)
    cmd = [sys.executable, "-m", module, "--worker", *worker_args, "--result", str(result), "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or result.stat().st_size == 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {**row, "error": tail[0][:200]}
        return json.loads(result.read_text())
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timeout after {timeout:.0f} s"}
    finally:
        result.unlink(missing_ok=True)


def predict_command(json_path: Path, input_dir: Path, output: Path, report: Path, *extra: str) -> list[str]:
    """``python predict.py --json J --input I --output O --report R --no-progress *extra`` (this interpreter)."""
    cmd = [sys.executable, str(REPO / "predict.py"), "--json", str(json_path), "--input", str(input_dir)]
    return cmd + ["--output", str(output), "--report", str(report), "--no-progress", *extra]


# ------------------------------------------------------------------ scores


def common_labels(fixed_seg: np.ndarray, moving_seg: np.ndarray) -> list[int]:
    """Label values present in both maps, background 0 excluded, sorted."""
    return sorted(set(np.unique(fixed_seg).tolist()) & set(np.unique(moving_seg).tolist()) - {0})


def mean_dice(fixed_seg: np.ndarray, moving_seg: np.ndarray, labels: Iterable[int]) -> float:
    """Mean over ``labels`` of the Dice of the two label maps (a label absent from both is left out)."""
    scores = []
    for label in labels:
        a, b = fixed_seg == label, moving_seg == label
        total = a.sum() + b.sum()
        if total:
            scores.append(2.0 * (a & b).sum() / total)
    return float(np.mean(scores))


def mean_tre_mm(fixed_seg: np.ndarray, warped_seg: np.ndarray, labels: Iterable[int], affine: np.ndarray) -> float:
    """The TRE proxy: mean over ``labels`` of the distance (mm, through ``affine``'s linear part) between each
    label's centroid in the fixed map and in the warped moving map, as LUMIR computes TRE from landmark images
    (:mod:`caio.metrics.landmarks`); a label absent from the warped map is left out."""
    from scipy import ndimage

    labels = [int(label) for label in labels]
    ones = np.ones(fixed_seg.shape, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):  # a label absent from a map: NaN centroid, left out
        fixed = np.asarray(ndimage.center_of_mass(ones, fixed_seg, labels))
        warped = np.asarray(ndimage.center_of_mass(ones, np.asarray(warped_seg).astype(np.int64), labels))
    linear = np.asarray(affine, np.float64)[:3, :3]
    distances = np.linalg.norm((fixed - warped) @ linear.T, axis=1)
    return float(np.nanmean(distances))


def evaluator_scores(
    fixed_seg: np.ndarray,
    moving_seg: np.ndarray,
    disp: np.ndarray,
    mask_image: np.ndarray,
    labels: list[int],
    affine: np.ndarray | None = None,
) -> dict:
    """Dice, HD95 (voxels) and NDV % (inside ``mask_image > 0``) of a ``(3, D0, D1, D2)`` voxel displacement,
    scored by :func:`caio.metrics.evaluate.evaluate_pair` (the LUMIR evaluator's rules); with ``affine`` (the
    fixed grid's) also ``tre``, the TRE proxy in mm (:func:`mean_tre_mm`) of the moving labels warped as the
    evaluator warps them for Dice (:func:`caio.spatial.warp_labels_nearest`)."""
    from caio import spatial
    from caio.metrics.evaluate import evaluate_pair

    mask = np.asarray(mask_image, np.float32)
    metrics = evaluate_pair(fixed_seg, moving_seg, disp, fixed_image=mask, labels=labels)
    scores = {"dice": metrics.dice, "hd95": metrics.hd95, "ndv": metrics.ndv}
    if affine is not None:
        warped = spatial.warp_labels_nearest(np.asarray(moving_seg).astype(np.int64), np.asarray(disp, np.float64))
        scores["tre"] = mean_tre_mm(fixed_seg, warped, labels, affine)
    return scores


# ------------------------------------------------------------------ tables and flags


def fmt(x, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals; ``–`` for ``None`` or a non-finite float."""
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def markdown_row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_header(columns: Sequence[str]) -> list[str]:
    """The two first lines of a Markdown table: the column names and ``|---|---|...``."""
    return [markdown_row(columns), "|" + "---|" * len(columns)]


def add_threads_argument(parser: argparse.ArgumentParser, default: int = 2) -> None:
    parser.add_argument("--threads", type=int, default=default, help=f"CPU threads (default {default})")


def add_out_argument(parser: argparse.ArgumentParser, default: Path = OUT) -> None:
    parser.add_argument("--out", type=Path, default=default, help="output folder (default bench/out)")


def add_lumir_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lumir-root", type=Path, default=LUMIR_LIKE, help="folder made by python -m bench.make_lumir_like"
    )
