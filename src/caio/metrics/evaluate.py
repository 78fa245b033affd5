"""Evaluation as the official LUMIR 2025 evaluator does it: Dice, HD95, TRE and NDV.

Per pair (``shared/specs/lumir_spec.md`` section 5, ``shared/fixtures/README.md`` section 3):

* The moving label map (and landmark image) is warped by the evaluator's nearest-neighbour
  pull-back (:func:`caio.spatial.warp_labels_nearest`).
* Dice and HD95 per label of the label list (133 LUMIR labels including 0 by default). A label
  missing from the fixed or from the *unwarped* moving map gives NaN; a label that vanishes
  after warping gives Dice 0 and HD95 ``inf``. The pair value is the ``nanmean`` over labels.
* TRE: mean distance (voxels) between the centroids of each landmark id (non-zero values of
  the fixed landmark image) in the fixed and in the warped moving landmark image; NaN when a
  landmark vanishes.
* NDV: :func:`caio.metrics.ndv.ndv_percent` with the mask ``fixed image > 0``.

Aggregates follow the official ``to_json``: mean, std (ddof 0) and a robustness percentile
(30th; 70th for TRE, stored under the same key ``"30"`` as in the official ``metrics.json``)
over the pairs that have the metric, with ``np.quantile`` linear interpolation; ``inf`` and
NaN propagate. ``ID_dice``, ``OOD_dice`` and ``MM_dice`` cover the pairs of each subset.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from caio import io, spatial
from caio.errors import CaioInputError
from caio.metrics import ndv
from caio.metrics.landmarks import label_landmarks, landmark_tre
from caio.metrics.surface_distance import hd95 as surface_hd95

log = logging.getLogger(__name__)

LUMIR_LABELS: tuple[int, ...] = (
    0,
    4,
    11,
    23,
    30,
    31,
    32,
    *range(35, 42),
    44,
    45,
    *range(47, 53),
    *range(55, 63),
    71,
    72,
    73,
    75,
    76,
    *range(100, 110),
    *range(112, 126),
    128,
    129,
    *range(132, 158),
    *range(160, 188),
    *range(190, 208),
)
"""The 133 labels of every LUMIR 2025 segmentation config (includes background 0)."""

DSC, HD95, TRE, NDV = "DSC", "HD95", "TRE_lm", "Non-diffeomorphic Volumes"
"""Metric names as in the official ``metrics.json``."""

ROBUSTNESS_QUANTILE = {DSC: 0.3, HD95: 0.3, NDV: 0.3, TRE: 0.7}
"""Quantile reported under the key ``"30"`` per metric (the official choice)."""

SUBSET_RANGES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "ID": ((3454, 3493), (3454, 3493)),
    "OOD": ((4014, 4023), (4014, 4023)),
    "MM": ((4024, 4032), (4033, 4041)),
}
"""Subset -> (fixed ID range, moving ID range), inclusive (spec section 2)."""


@dataclass(frozen=True)
class PairMetrics:
    """Metrics of one pair; ``None`` where the inputs for a metric were not given.

    Attributes:
        dice, hd95: ``nanmean`` over labels (HD95 in voxels, ``inf`` if a label vanished).
        tre: mean landmark centroid distance in voxels (NaN if a landmark vanished).
        ndv: non-diffeomorphic volume in percent.
        labels, dice_per_label, hd95_per_label: per-label values (NaN = label excluded).
        landmark_ids, tre_per_landmark: per-landmark distances.
    """

    ndv: float
    dice: float | None = None
    hd95: float | None = None
    tre: float | None = None
    labels: tuple[int, ...] = ()
    dice_per_label: tuple[float, ...] = ()
    hd95_per_label: tuple[float, ...] = ()
    landmark_ids: tuple[int, ...] = ()
    tre_per_landmark: tuple[float, ...] = ()


def _as_label_map(array: np.ndarray, what: str) -> np.ndarray:
    """Integer copy of a label map given as any numeric array."""
    array = np.asarray(array)
    if array.dtype.kind in "iub":
        return array.astype(np.int64, copy=False)
    if not np.array_equal(array, np.round(array)):
        raise CaioInputError(f"{what}: label map has non-integer values")
    return array.astype(np.int64)


def _boxes(label_map: np.ndarray) -> dict[int, tuple[slice, ...]] | None:
    """Bounding box of every positive label value (``None`` when values are unsuitable)."""
    if label_map.size == 0 or label_map.min() < 0 or label_map.max() > 1_000_000:
        return None
    return {i + 1: box for i, box in enumerate(ndimage.find_objects(label_map)) if box is not None}


def _label_box(label: int, shape: Sequence[int], *all_boxes: dict | None) -> tuple[slice, ...]:
    """Union of the label's boxes in all maps; the whole grid for label 0 or without boxes."""
    present = [boxes.get(label) for boxes in all_boxes if boxes is not None]
    if label <= 0 or None in all_boxes or not any(present):
        return tuple(slice(0, n) for n in shape)
    present = [b for b in present if b is not None]
    return tuple(slice(min(b[a].start for b in present), max(b[a].stop for b in present)) for a in range(3))


def dice_and_hd95(
    fixed_labels: np.ndarray, moving_labels: np.ndarray, warped_labels: np.ndarray, labels: Sequence[int]
) -> tuple[list[float], list[float]]:
    """Per-label Dice and HD95 (voxels) with the evaluator's NaN / inf rules.

    Args:
        fixed_labels, warped_labels: ``(D0, D1, D2)`` integer maps on the fixed grid.
        moving_labels: unwarped moving map (only label presence is used).
    Returns:
        two lists aligned with ``labels``.
    """
    in_moving = set(np.unique(moving_labels).tolist())
    in_fixed = set(np.unique(fixed_labels).tolist())
    fixed_boxes, warped_boxes = _boxes(fixed_labels), _boxes(warped_labels)
    dice, hd = [], []
    for label in labels:
        if label not in in_fixed or label not in in_moving:
            dice.append(float("nan"))
            hd.append(float("nan"))
            continue
        box = _label_box(label, fixed_labels.shape, fixed_boxes, warped_boxes)
        f, w = fixed_labels[box] == label, warped_labels[box] == label
        total = int(f.sum()) + int(w.sum())
        dice.append(2.0 * int((f & w).sum()) / total if total else 0.0)
        hd.append(surface_hd95(f, w))
    return dice, hd


def _nanmean(values: Sequence[float]) -> float:
    """``np.nanmean`` (as the evaluator) without the all-NaN warning."""
    array = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(array)) if (~np.isnan(array)).any() else float("nan")


def evaluate_pair(
    fixed_labels: np.ndarray | None,
    moving_labels: np.ndarray | None,
    disp: np.ndarray,
    fixed_image: np.ndarray | None = None,
    fixed_landmarks: np.ndarray | None = None,
    moving_landmarks: np.ndarray | None = None,
    labels: Sequence[int] = LUMIR_LABELS,
) -> PairMetrics:
    """All metrics of one pair.

    Args:
        fixed_labels, moving_labels: ``(D0, D1, D2)`` label maps (or ``None``: no Dice/HD95).
        disp: ``(3, D0, D1, D2)`` displacement in voxels on the fixed grid (evaluator convention).
        fixed_image: fixed intensities; NDV uses the mask ``fixed_image > 0`` (``None``: whole volume).
        fixed_landmarks, moving_landmarks: landmark label images (or ``None``: no TRE).
        labels: label values for Dice and HD95.
    """
    disp = np.asarray(disp, dtype=np.float64)
    for name, array in (
        ("fixed_labels", fixed_labels),
        ("fixed_image", fixed_image),
        ("fixed_landmarks", fixed_landmarks),
    ):
        if array is not None and np.shape(array) != disp.shape[1:]:
            raise ValueError(f"{name} {np.shape(array)} is not on the displacement grid {disp.shape[1:]}")
    mask = None if fixed_image is None else np.asarray(fixed_image) > 0
    result: dict = {"ndv": ndv.ndv_percent(disp, mask)}
    if fixed_labels is not None and moving_labels is not None:
        fixed_map = _as_label_map(fixed_labels, "fixed labels")
        moving_map = _as_label_map(moving_labels, "moving labels")
        warped = spatial.warp_labels_nearest(moving_map, disp)
        dice, hd = dice_and_hd95(fixed_map, moving_map, warped, labels)
        result.update(
            dice=_nanmean(dice),
            hd95=_nanmean(hd),
            labels=tuple(int(x) for x in labels),
            dice_per_label=tuple(dice),
            hd95_per_label=tuple(hd),
        )
    if fixed_landmarks is not None and moving_landmarks is not None:
        fixed_lm = _as_label_map(fixed_landmarks, "fixed landmarks")
        warped_lm = spatial.warp_labels_nearest(_as_label_map(moving_landmarks, "moving landmarks"), disp)
        ids, distances = landmark_tre(fixed_lm, warped_lm)
        tre = float(np.mean(distances)) if distances else float("nan")
        result.update(tre=tre, landmark_ids=tuple(ids), tre_per_landmark=tuple(distances))
    return PairMetrics(**result)


def summarize(values: Sequence[float], quantile: float = 0.3) -> dict[str, float]:
    """``{"mean", "std", "30"}`` as the official ``to_json`` (std ddof 0; inf/NaN propagate)."""
    array = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return {"mean": float(np.mean(array)), "std": float(np.std(array)), "30": float(np.quantile(array, quantile))}


def pair_subset(fixed_id: str, moving_id: str) -> str | None:
    """``"ID"``, ``"OOD"`` or ``"MM"`` from the subject IDs (spec section 2), else ``None``."""
    f, m = int(fixed_id), int(moving_id)
    for name, ((f0, f1), (m0, m1)) in SUBSET_RANGES.items():
        if f0 <= f <= f1 and m0 <= m <= m1:
            return name
    return None


def aggregate(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Official-style aggregates over the evaluated pairs of :func:`evaluate_folder`."""
    columns = {DSC: "dice", HD95: "hd95", NDV: "ndv", TRE: "tre"}
    out: dict[str, dict[str, float]] = {}
    for name, column in columns.items():
        values = [r[column] for r in rows if r.get(column) is not None]
        if values:
            out[name] = summarize(values, ROBUSTNESS_QUANTILE[name])
    for subset in SUBSET_RANGES:
        values = [r["dice"] for r in rows if r.get("dice") is not None and r.get("subset") == subset]
        if values:
            out[f"{subset}_dice"] = summarize(values, 0.3)
    return out


# ----------------------------------------------------------------------------------------
# Folder evaluation (dataset JSON + ground-truth root + displacement folder)
# ----------------------------------------------------------------------------------------


def _config_shape(config: dict, json_path: Path) -> tuple[int, int, int] | None:
    shape = config.get("expected_shape")
    if shape is None:
        return None
    if not (isinstance(shape, list) and len(shape) in (3, 4) and all(isinstance(n, int) for n in shape)):
        raise CaioInputError(f"{json_path}: 'expected_shape' must be a list of 3 or 4 integers, got {shape!r}")
    return tuple(shape[:3])


def _config_labels(config: dict, json_path: Path) -> list[int] | None:
    lists = {m.get("metric"): m.get("labels") for m in config.get("evaluation_methods", []) if isinstance(m, dict)}
    dice, hd = lists.get("dice"), lists.get("hd95")
    if dice is not None and hd is not None and list(dice) != list(hd):
        raise CaioInputError(f"{json_path}: different label lists for dice and hd95 are not supported; pass --labels")
    return None if dice is None and hd is None else [int(x) for x in (dice if dice is not None else hd)]


def _companion(rel: str, kind: str, root: Path, folder: str | os.PathLike | None) -> Path:
    """Label/landmark file of an image: ``images`` -> ``kind`` in its path, or ``folder/<name>``."""
    if folder is not None:
        return Path(folder) / Path(rel).name
    return io.resolve_data_path(root, rel.replace("images", kind))


def _read_optional_pair(pair: io.Pair, kind: str, root: Path, folder, shape) -> tuple | tuple[None, None]:
    paths = [_companion(pair.fixed_rel, kind, root, folder), _companion(pair.moving_rel, kind, root, folder)]
    missing = [p for p in paths if not p.is_file()]
    if missing and (folder is not None or len(missing) == 1):
        raise CaioInputError(f"{missing[0]}: {kind} file not found")
    if missing:
        log.debug("%s: no %s files, skipping those metrics", pair.key, kind)
        return None, None
    fixed = io.read_volume(paths[0], expected_shape=shape)
    return fixed, io.read_volume(paths[1], expected_shape=None)


def _pair_metrics(pair, disp, root, shape, labels, labels_dir, landmarks_dir, labels_as_landmarks) -> PairMetrics:
    """:func:`evaluate_pair` of one pair of :func:`evaluate_folder`, its ground truth read from the data root."""
    fixed_image = io.read_volume(pair.fixed, expected_shape=shape)
    fixed_labels, moving_labels = _read_optional_pair(pair, "labels", root, labels_dir, shape)
    fixed_lm, moving_lm = _read_optional_pair(pair, "landmarks", root, landmarks_dir, shape)
    if labels_as_landmarks and fixed_lm is None and fixed_labels is not None and moving_labels is not None:
        fixed_lm, moving_lm = (label_landmarks(m, labels) for m in (fixed_labels, moving_labels))
    return evaluate_pair(fixed_labels, moving_labels, disp, fixed_image, fixed_lm, moving_lm, labels)


def evaluate_folder(
    json_path: str | os.PathLike,
    data_root: str | os.PathLike,
    disp_dir: str | os.PathLike,
    labels_dir: str | os.PathLike | None = None,
    landmarks_dir: str | os.PathLike | None = None,
    labels: Sequence[int] | None = None,
    expected_shape: Sequence[int] | None = None,
    pairs_keys: Sequence[str] | None = None,
    labels_as_landmarks: bool = False,
) -> tuple[list[dict], dict]:
    """Evaluate every pair of a dataset JSON against the displacement files in ``disp_dir``.

    Label maps are found by replacing ``images`` with ``labels`` in the JSON image path (as the
    evaluator does), landmarks with ``landmarks``; ``labels_dir``/``landmarks_dir`` override that.
    ``labels_as_landmarks``: where a pair has no landmark files, its label maps' regions (``labels``) are the
    landmarks, so TRE is the mean distance between each region's centroid in the fixed and the warped map
    (:func:`label_landmarks`; voxels, i.e. mm on LUMIR's 1 mm grid).
    A pair without both files skips those metrics. ``labels`` and ``expected_shape`` default to
    the JSON's ``evaluation_methods``/``expected_shape`` (official config format), else to
    :data:`LUMIR_LABELS` / :data:`caio.io.LUMIR_SHAPE`.

    Returns:
        ``(rows, aggregates)``: one dict per pair (``pair``, ``fixed``, ``moving``, ``disp_file``,
        ``status`` = ok/missing/invalid, ``error``, ``subset``, ``dice``, ``hd95``, ``tre``, ``ndv``
        and the per-label lists), and :func:`aggregate` of the evaluated pairs.
    Raises:
        CaioInputError: bad JSON or a missing/invalid ground-truth file. A missing or invalid
            displacement file is reported in its row instead.
    """
    json_path, root = Path(json_path), Path(data_root)
    if not Path(disp_dir).is_dir():
        raise CaioInputError(f"{disp_dir}: displacement folder not found")
    pairs = io.load_pairs(json_path, root, keys=pairs_keys, check_files=False)
    config = json.loads(json_path.read_text())  # valid: load_pairs has read it
    shape = (
        tuple(expected_shape) if expected_shape is not None else (_config_shape(config, json_path) or io.LUMIR_SHAPE)
    )
    labels = list(labels) if labels is not None else (_config_labels(config, json_path) or list(LUMIR_LABELS))
    rows = []
    for pair in pairs:
        name = io.evaluated_output_name(pair)
        row: dict = {
            "pair": pair.key,
            "fixed": pair.fixed_rel,
            "moving": pair.moving_rel,
            "disp_file": name,
            "status": "ok",
            "error": "",
            "subset": pair_subset(pair.fixed_id, pair.moving_id),
            "dice": None,
            "hd95": None,
            "tre": None,
            "ndv": None,
        }
        disp_path = Path(disp_dir) / name
        try:
            disp = io.read_displacement(disp_path, expected_shape=shape)
        except CaioInputError as err:
            row.update(status="missing" if not disp_path.is_file() else "invalid", error=str(err))
            log.debug("%s: %s", pair.key, err)  # in its row, and in the command's one error line
            rows.append(row)
            continue
        metrics = _pair_metrics(pair, disp, root, shape, labels, labels_dir, landmarks_dir, labels_as_landmarks)
        row.update(
            dice=metrics.dice,
            hd95=metrics.hd95,
            tre=metrics.tre,
            ndv=metrics.ndv,
            labels=list(metrics.labels),
            dice_per_label=list(metrics.dice_per_label),
            hd95_per_label=list(metrics.hd95_per_label),
            landmark_ids=list(metrics.landmark_ids),
            tre_per_landmark=list(metrics.tre_per_landmark),
        )
        log.debug("%s: dice %s hd95 %s tre %s ndv %s", pair.key, metrics.dice, metrics.hd95, metrics.tre, metrics.ndv)
        rows.append(row)
    evaluated = [r for r in rows if r["status"] == "ok"]
    return rows, aggregate(evaluated)


def official_cases(rows: Sequence[dict]) -> dict[str, dict]:
    """Per-pair results in the official ``metrics.json`` ``cases`` layout."""
    cases = {}
    for r in (r for r in rows if r["status"] == "ok"):
        case = {NDV: {"mean": r["ndv"], "detailed": r["ndv"]}}
        if r["dice"] is not None:
            case[DSC] = {"mean": r["dice"], "detailed": r["dice_per_label"]}
            case[HD95] = {"mean": r["hd95"], "detailed": r["hd95_per_label"]}
        if r["tre"] is not None:
            case[TRE] = {"mean": r["tre"], "detailed": r["tre"]}
        cases[r["pair"]] = case
    return cases
