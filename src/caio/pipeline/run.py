"""The run loop: register a list of pairs and write each output atomically under every name.

:func:`run` is re-exported by :mod:`caio.pipeline` (so the attribute ``caio.pipeline.run`` is the
function; reach this module with ``importlib.import_module("caio.pipeline.run")``). Models are loaded
once per run (and not at all when ``resume`` finds every output already valid). A pair that fails
never stops the others; :attr:`RunSummary.exit_code` is non-zero when any pair was skipped, failed or degraded.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from caio.device import resolve_device
from caio.errors import CaioInputError
from caio.io import Pair, output_names, validate_displacement_file, write_displacement
from caio.io.atomic import replace_atomically
from caio.pipeline.config import PipelineConfig
from caio.pipeline.models import Models, load_models
from caio.pipeline.pair import PairResult, load_pair_volumes, register_pair
from caio.qc import write_qc

log = logging.getLogger(__name__)

GOOD_STATUSES = ("ok", "resumed")


@dataclass
class RunSummary:
    """All pair results of a run, in input order, plus totals."""

    results: list[PairResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 when every pair has a valid output from a real method, else 1."""
        return 0 if all(r.status in GOOD_STATUSES for r in self.results) else 1

    def line(self) -> str:
        """One-line summary, e.g. ``"36 pairs: 35 ok, 0 resumed, 1 skipped, 0 degraded, 0 failed in 812.3 s"``."""
        counts = ", ".join(f"{self.count(s)} {s}" for s in ("ok", "resumed", "skipped", "degraded", "failed"))
        return f"{len(self.results)} pairs: {counts} in {self.seconds:.1f} s"

    def to_json(self) -> dict:
        return {
            "pairs": [r.to_json() for r in self.results],
            "seconds": self.seconds,
            "counts": {s: self.count(s) for s in ("ok", "resumed", "skipped", "degraded", "failed")},
            "exit_code": self.exit_code,
        }


def expected_output_shape(pair: Pair, cfg: PipelineConfig) -> tuple[int, ...]:
    """Grid of the output for ``pair``: ``cfg.expected_shape``, or the fixed image's own shape."""
    if cfg.expected_shape is not None:
        return tuple(cfg.expected_shape)
    try:
        return tuple(nib.load(str(pair.fixed)).shape[:3])
    except Exception as err:
        raise CaioInputError(f"{pair.fixed}: cannot read the image header ({err})") from None


def outputs_valid(pair: Pair, out_dir: Path, cfg: PipelineConfig) -> bool:
    """True when every output name of ``pair`` exists and is a valid displacement file."""
    try:
        shape = expected_output_shape(pair, cfg)
    except CaioInputError:
        return False
    for name in output_names(pair):
        reason = validate_displacement_file(out_dir / name, shape)
        if reason is not None:
            log.debug("resume: redo %s (%s)", pair.key, reason)
            return False
    return True


def write_outputs(result: PairResult, out_dir: Path) -> list[Path]:
    """Write ``result.disp`` under every output name of its pair, each atomically."""
    names = output_names(result.pair)
    first = write_displacement(out_dir / names[0], result.disp)
    written = [first]
    for name in names[1:]:  # same bytes: copy to a temporary name, then rename
        written.append(replace_atomically(out_dir / name, lambda tmp: shutil.copyfile(first, tmp)))
    return written


def _check_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CaioInputError(f"{out_dir}: cannot create output folder ({err.strerror or err})") from None
    if not os.access(out_dir, os.W_OK):
        raise CaioInputError(f"{out_dir}: output folder is not writable (uid {os.getuid()})")


def _write_qc(result: PairResult, cfg: PipelineConfig, qc_dir: Path) -> None:
    """Quality-control pictures of a written pair; a failure here is only a warning."""
    try:
        fixed, moving = load_pair_volumes(result.pair, cfg)
        labels = None
        label_path = Path(str(result.pair.fixed).replace("imagesVal", "labelsVal").replace("imagesTs", "labelsTs"))
        if label_path != result.pair.fixed and label_path.is_file():  # outlines of the fixed labels, if any
            labels = np.asarray(nib.load(str(label_path)).dataobj)
            labels = labels if labels.shape == fixed.shape else None
        qc_dir.mkdir(parents=True, exist_ok=True)
        write_qc(
            torch.from_numpy(fixed)[None, None],
            torch.from_numpy(moving)[None, None],
            torch.from_numpy(result.disp)[None],
            qc_dir,
            output_names(result.pair)[0][: -len(".nii.gz")],
            fixed_labels=labels,
        )
    except Exception as err:
        log.warning("QC of %s not written: %s", result.pair.key, err)


def run(
    pairs: Sequence[Pair],
    out_dir: str | os.PathLike,
    cfg: PipelineConfig,
    *,
    models: Models | None = None,
    resume: bool = False,
    qc_dir: str | os.PathLike | None = None,
    on_result: Callable[[PairResult], None] | None = None,
    progress: Callable[[Iterable[Pair]], Iterable[Pair]] | None = None,
) -> RunSummary:
    """Register every pair and write its outputs into ``out_dir``.

    Args:
        pairs: from :func:`caio.io.load_pairs` (possibly one shard of them).
        out_dir: created if missing; must be writable.
        models: preloaded networks; loaded here (once) when ``None`` and a pair needs them.
        resume: keep pairs whose outputs already exist and are valid.
        qc_dir: where :func:`caio.qc.write_qc` puts pictures of each pair (``None``: none).
        on_result: called with each :class:`PairResult` as soon as the pair is done.
        progress: wraps the pair iterable (e.g. ``tqdm``).
    Returns:
        The :class:`RunSummary`; the outputs of ``ok``/``degraded`` pairs are on disk.
    Raises:
        CaioInputError: the output folder cannot be created or written.
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    summary = RunSummary()
    for pair in progress(pairs) if progress else pairs:
        if resume and outputs_valid(pair, out_dir, cfg):
            result = PairResult(
                pair=pair,
                status="resumed",
                path="existing output",
                outputs=[str(out_dir / n) for n in output_names(pair)],
            )
        else:
            pair_start = time.monotonic()
            if models is None:
                models = load_models(cfg, resolve_device(cfg.device))
            result = register_pair(pair, cfg, models)
            if result.disp is not None:
                try:
                    result.outputs = [str(p) for p in write_outputs(result, out_dir)]
                except (CaioInputError, ValueError, OSError) as err:
                    result.status, result.message = "failed", f"cannot write output: {err}"
                if qc_dir is not None and result.status != "failed":
                    _write_qc(result, cfg, Path(qc_dir))
            result.disp = None  # do not keep 80 MB per pair alive
            result.seconds = time.monotonic() - pair_start  # writing included
        if result.status not in GOOD_STATUSES:
            log.error("%s %s: %s", result.pair.key, result.status, result.message)
        summary.results.append(result)
        if on_result is not None:
            on_result(result)
    summary.seconds = time.monotonic() - start
    return summary
