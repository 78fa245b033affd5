"""The run loop: register a list of pairs, reading the next pair and writing the last one meanwhile.

:func:`run` is re-exported by :mod:`caio.pipeline` as ``caio.pipeline.run``.

Overlap (``overlap=True``, the default): a reader thread loads and checks pair ``i + 1`` (or
decides that ``--resume`` keeps it) while pair ``i`` registers, and a writer thread compresses
and renames pair ``i - 1``'s output; at most one pair is read ahead and one write is pending, so
memory stays bounded to about three pairs. A read error skips only that pair, a write error
fails only that pair (its temporary file removed). Results are reported (``on_result``) in input
order, each once its output is on disk; the run returns after the last write.

Models are loaded once: while the first pair is read, or with ``resume`` when the first pair needs
them (not at all when ``resume`` keeps every pair); that one-off time is
:attr:`RunSummary.model_loading_s`, outside every pair's clock.
A pair's clock starts when it begins waiting for its volumes: ``PairResult.seconds`` counts that
wait, the registration and the hand-off of its output to the writer; ``io_wait_s`` is the
waiting part; ``write_s`` the background write.

The per-pair steps (read, register, write, load the models) are a :class:`RunSteps`; :func:`run`
takes one (``steps=``), so a tool or a test passes its own instead of replacing module attributes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from caio.errors import CaioInputError
from caio.io import Pair, inspect_image, output_names, read_image
from caio.io.atomic import remove_stray_temporaries
from caio.io.memory import DEFAULT_SHARE, default_memory_limit
from caio.io.volumes import volume_shape
from caio.pipeline.config import PipelineConfig
from caio.pipeline.models import Models, load_models
from caio.pipeline.outputs import check_output_folder, resume_decision, write_pair
from caio.pipeline.pair import PairResult, load_pair_volumes, register_pair
from caio.qc import write_qc

log = logging.getLogger(__name__)

GOOD_STATUSES = ("ok", "resumed")
STATUSES = ("ok", "resumed", "skipped", "degraded", "failed")


@dataclass(frozen=True)
class RunSteps:
    """The per-pair steps the run loop calls; tools and tests pass their own (same signatures).

    Attributes:
        read: ``(pair, cfg) -> (fixed, moving)`` float32 numpy (D0,D1,D2) volumes; raises
            :class:`~caio.errors.CaioInputError` for a bad file (the pair is skipped).
        register: ``(pair, cfg, models, *, volumes, clock_start) -> PairResult`` whose ``disp`` is
            the [3,D0,D1,D2] float32 displacement in voxels (or ``None``).
        write: ``(result, disp, out_dir) -> PairResult`` writes the outputs in the writer thread; never raises.
        load_models: ``(cfg) -> Models``, called at most once per run.
    """

    read: Callable[[Pair, PipelineConfig], tuple[np.ndarray, np.ndarray]] = load_pair_volumes
    register: Callable[..., PairResult] = register_pair
    write: Callable[[PairResult, np.ndarray, Path], PairResult] = write_pair
    load_models: Callable[[PipelineConfig], Models] = load_models


@dataclass
class RunSummary:
    """All pair results of a run, in input order, plus totals."""

    results: list[PairResult] = field(default_factory=list)
    seconds: float = 0.0
    model_loading_s: float | None = None
    stray_removed: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 when every pair has a valid output from a real method, else 1."""
        return 0 if all(r.status in GOOD_STATUSES for r in self.results) else 1

    def line(self) -> str:
        """One-line summary, e.g. ``"36 pairs: 35 ok, 0 resumed, 1 skipped, 0 degraded, 0 failed in 812.3 s"``."""
        counts = ", ".join(f"{self.count(s)} {s}" for s in STATUSES)
        return f"{len(self.results)} pairs: {counts} in {self.seconds:.1f} s"

    def to_json(self) -> dict:
        pairs = []
        for r in self.results:
            entry = r.to_json()
            entry["io_wait_s"] = float(getattr(r, "io_wait_s", 0.0) or 0.0)
            entry["write_s"] = float(getattr(r, "write_s", 0.0) or 0.0)
            pairs.append(entry)
        return {
            "pairs": pairs,
            "model_loading": {"seconds": self.model_loading_s},
            "seconds": self.seconds,
            "counts": {s: self.count(s) for s in STATUSES},
            "exit_code": self.exit_code,
            "stray_temporaries_removed": self.stray_removed,
        }


@dataclass
class _Prepared:
    """What the reader hands over for one pair: volumes, a resume decision, or the reason it is skipped."""

    volumes: tuple[np.ndarray, np.ndarray] | None = None
    resumed_path: str | None = None
    error: str = ""
    error_status: str = "skipped"


def _prepare(read: Callable, pair: Pair, cfg: PipelineConfig, out_dir: Path, resume: bool) -> _Prepared:
    """Reader job: keep the pair (``resume``) or read and check its two volumes with ``read``. Never raises."""
    try:
        if resume:
            decision = resume_decision(pair, out_dir, cfg)
            if decision.keep:
                return _Prepared(resumed_path=decision.path)
            if decision.reason:
                log.info("resume: redo %s (%s)", pair.key, decision.reason)
        return _Prepared(volumes=read(pair, cfg))
    except CaioInputError as err:
        return _Prepared(error=str(err))
    except Exception as err:  # a bug, not the user's file: this pair fails, the others go on
        log.error("reading %s failed", pair.key, exc_info=True)
        return _Prepared(error=f"reading failed: {type(err).__name__}: {err}", error_status="failed")


class _Inline:
    """Executor stand-in that runs each job at once (``overlap=False``)."""

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as err:
            fut.set_exception(err)
        return fut

    def shutdown(self, wait: bool = True) -> None:
        pass


def _write_job(
    write: Callable[[PairResult, np.ndarray, Path], PairResult],
    result: PairResult,
    disp: np.ndarray,
    out_dir: Path,
    qc_dir: Path | None,
    volumes: tuple[np.ndarray, np.ndarray] | None,
) -> PairResult:
    """Writer job: the outputs (``write``, a :attr:`RunSteps.write`), then the QC pictures. Never raises."""
    write(result, disp, out_dir)
    if qc_dir is not None and result.status != "failed" and volumes is not None:
        _write_qc(result, disp, volumes, qc_dir)
    return result


def _write_qc(result: PairResult, disp: np.ndarray, volumes: tuple[np.ndarray, np.ndarray], qc_dir: Path) -> None:
    """Quality-control pictures of a written pair; a failure here is only a warning."""
    try:
        fixed, moving = volumes
        labels = None
        label_path = Path(str(result.pair.fixed).replace("imagesVal", "labelsVal").replace("imagesTs", "labelsTs"))
        if label_path != result.pair.fixed and label_path.is_file():  # outlines of the fixed labels, if any
            header = inspect_image(label_path, "label map", use_affine=False)  # header first, as every read
            labels = read_image(header, keep_dtype=True) if volume_shape(header) == fixed.shape else None
        qc_dir.mkdir(parents=True, exist_ok=True)
        write_qc(
            torch.from_numpy(fixed)[None, None],
            torch.from_numpy(moving)[None, None],
            torch.from_numpy(disp)[None],
            qc_dir,
            output_names(result.pair)[0][: -len(".nii.gz")],
            fixed_labels=labels,
        )
    except Exception as err:
        log.warning("QC of %s not written: %s", result.pair.key, err)


class _RunLoop:
    """State of one :func:`run`: the two executors, the pending write, the models (loaded once) and the summary.

    The loop (:meth:`run_pairs`) reads pair ``i + 1`` while pair ``i`` registers and pair ``i - 1`` is written;
    results are finished in input order.
    """

    def __init__(self, pairs, out_dir, cfg, steps, models, resume, qc_path, on_result, on_models_loaded, overlap):
        self.pairs, self.out_dir, self.cfg, self.steps = pairs, out_dir, cfg, steps
        self.models, self.resume, self.qc_path, self.overlap = models, resume, qc_path, overlap
        self.on_result, self.on_models_loaded = on_result, on_models_loaded
        self.summary = RunSummary()
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="caio-read") if overlap else _Inline()
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="caio-write") if overlap else _Inline()
        self.pending: Future | None = None

    def finish(self, result: PairResult) -> None:
        """Record a result (in input order) and report it."""
        if result.status not in GOOD_STATUSES:
            log.error("%s %s: %s", result.pair.key, result.status, result.message)
        self.summary.results.append(result)
        if self.on_result is not None:
            self.on_result(result)

    def ensure_models(self) -> Models:
        """The models, loaded on first use; the loading time goes to the summary, outside every pair's clock."""
        if self.models is None:
            load_start = time.monotonic()
            self.models = self.steps.load_models(self.cfg)
            self.summary.model_loading_s = time.monotonic() - load_start
            if self.on_models_loaded is not None:
                self.on_models_loaded(self.summary.model_loading_s)
        return self.models

    def collect_write(self) -> None:
        """Wait for the pending write (if any) and finish its pair."""
        if self.pending is not None:
            done, self.pending = self.pending.result(), None
            self.finish(done)

    def submit_read(self, pair: Pair) -> Future:
        return self.reader.submit(_prepare, self.steps.read, pair, self.cfg, self.out_dir, self.resume)

    def finish_unregistered(self, pair: Pair, prepared: _Prepared, read_wait: float) -> None:
        """A pair that is not registered: kept by ``--resume``, or skipped/failed while reading."""
        self.collect_write()  # keep the input order
        if prepared.resumed_path is None:
            result = PairResult(pair=pair, status=prepared.error_status, message=prepared.error)
        else:
            outputs = [self.out_dir / n for n in output_names(pair)]
            result = PairResult.resumed(pair, outputs, prepared.resumed_path)
        result.seconds = result.io_wait_s = read_wait
        self.finish(result)

    def register_and_hand_over(self, pair: Pair, prepared: _Prepared, read_wait: float) -> None:
        """Register a read pair, then hand its field to the writer (after the previous write is done)."""
        self.ensure_models()
        clock_start = time.monotonic() - read_wait  # model loading is outside the pair's clock
        volumes, prepared.volumes = prepared.volumes, None
        result = self.steps.register(pair, self.cfg, self.ensure_models(), volumes=volumes, clock_start=clock_start)
        notes = getattr(volumes, "notes", ())
        if notes:  # what reading ignored (e.g. an unusable affine), shown on the pair's line
            result.message = "; ".join(m for m in (result.message, *notes) if m)
        qc_volumes = volumes if self.qc_path is not None else None
        volumes = None  # freed before waiting for the previous write (unless QC needs them)
        hand_start = time.monotonic()
        self.collect_write()  # the previous write must be done before this one is handed over
        disp, result.disp = result.disp, None  # do not keep 80 MB per pair alive in the report
        if disp is not None:
            args = (self.steps.write, result, disp, self.out_dir, self.qc_path, qc_volumes)
            self.pending = self.writer.submit(_write_job, *args)
        now = time.monotonic()
        result.io_wait_s = read_wait + (now - hand_start)
        result.seconds = now - clock_start
        if disp is None:
            self.finish(result)

    def run_pairs(self, items: Iterable[Pair]) -> None:
        """The loop over ``items`` (the pairs, possibly wrapped by a progress bar); returns after the last write."""
        try:
            next_read: Future | None = None
            for index, pair in enumerate(items):
                if next_read is None:  # the first pair, or no overlap: read it now
                    next_read = self.submit_read(pair)
                if index == 0 and self.overlap and not self.resume:
                    self.ensure_models()  # while the first pair is read (with resume: only once a pair needs them)
                wait_start = time.monotonic()
                prepared, next_read = next_read.result(), None
                read_wait = time.monotonic() - wait_start
                if self.overlap and index + 1 < len(self.pairs):
                    next_read = self.submit_read(self.pairs[index + 1])
                if prepared.resumed_path is not None or prepared.volumes is None:
                    self.finish_unregistered(pair, prepared, read_wait)
                else:
                    self.register_and_hand_over(pair, prepared, read_wait)
            self.collect_write()
        finally:
            self.reader.shutdown(wait=True)
            self.writer.shutdown(wait=True)


def _with_memory_limit(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with ``max_memory`` set: ``--max-memory``, else the memory available now (the start of the run)."""
    if cfg.max_memory is not None:
        return cfg
    allowed = default_memory_limit()
    if allowed is None:
        return cfg
    source = f"{DEFAULT_SHARE:.0%} of the memory available at the start of the run; --max-memory sets the limit"
    return dataclasses.replace(cfg, max_memory=allowed, max_memory_source=source)


def _remove_strays(out_dir: Path, summary: RunSummary) -> None:
    removed = remove_stray_temporaries(out_dir)
    if removed:
        summary.stray_removed = [p.name for p in removed]
        log.warning(
            "removed %d stray temporary file(s) of dead runs in %s: %s",
            len(removed),
            out_dir,
            ", ".join(summary.stray_removed),
        )


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
    overlap: bool = True,
    on_models_loaded: Callable[[float], None] | None = None,
    steps: RunSteps | None = None,
) -> RunSummary:
    """Register every pair and write its outputs into ``out_dir``.

    Args:
        pairs: from :func:`caio.io.load_pairs` (possibly one shard of them).
        out_dir: created if missing; must be writable (checked before any computation).
        cfg: the run's settings; ``cfg.max_memory`` ``None`` becomes the memory available now.
        models: preloaded networks; loaded here (once) when ``None`` and a pair needs them.
        resume: keep pairs whose outputs exist, are valid and record status ``ok``.
        qc_dir: where :func:`caio.qc.write_qc` puts pictures of each pair (``None``: none).
        on_result: called with each :class:`PairResult`, in input order, once its output is written.
        progress: wraps the pair iterable (e.g. ``tqdm``).
        overlap: read the next pair and write the last one in background threads.
        on_models_loaded: called with the one-off model loading seconds.
        steps: the per-pair steps (``None``: the real ones, ``RunSteps()``).
    Returns:
        The :class:`RunSummary`; the outputs of ``ok``/``degraded`` pairs are on disk.
    Raises:
        CaioInputError: the output path is a file, or the folder cannot be created or written.
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    loop = _RunLoop(
        pairs,
        out_dir,
        _with_memory_limit(cfg),
        RunSteps() if steps is None else steps,
        models,
        resume,
        None if qc_dir is None else Path(qc_dir),
        on_result,
        on_models_loaded,
        overlap,
    )
    _remove_strays(out_dir, loop.summary)
    loop.run_pairs(progress(pairs) if progress else pairs)
    loop.summary.seconds = time.monotonic() - start
    return loop.summary
