"""One pair: read -> gate -> (Brain-ID) -> VFA or engine -> refinement -> validated displacement.

The configured path depends on the device, the weights present and the pair's contrast
(:func:`caio.pipeline.stages.plan_pair`): on the CPU gate -> engine; on a GPU gate -> Brain-ID
(cross-contrast) -> VFA (else the engine) -> cascade. Every step runs on ONE deadline, set when the
pair's clock starts (reading included) minus a reserve for writing; a step that does not fit is
skipped with its fallback (Brain-ID -> MIND-SSC / raw images, VFA -> engine, engine -> identity),
and a CUDA out-of-memory error retries on autocast float16 and then on the CPU, still on the same
deadline. What ran is recorded in :class:`~caio.pipeline.trace.PairTrace`; the status comes from it:
``ok`` only when every configured step ran and nothing was skipped, failed or replaced.
Images are float32 ``[1, 1, D0, D1, D2]`` in [0, 255]; displacements ``[1, 3, D0, D1, D2]`` in voxels.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from caio.device import autocast, peak_memory_mb
from caio.errors import CaioInputError
from caio.io import ImageHeader, Pair, check_shape, conform_to_shape, inspect_image, read_image
from caio.io.memory import MemoryLimit, memory_limit, pipeline_pair_bytes
from caio.pipeline.config import PipelineConfig, budget_for, write_reserve_s
from caio.pipeline.models import Models
from caio.pipeline.stages import (
    ENGINE_SHARE_BEFORE_CASCADE,
    available_models,
    plan_pair,
    run_brainid,
    run_cascade,
    run_engine,
    run_gate,
    run_mind,
    run_vfa,
    validate_disp,
)
from caio.pipeline.trace import PairTrace

log = logging.getLogger("caio.pipeline")
T = TypeVar("T")


@dataclass
class PairResult:
    """Outcome of one pair. ``disp`` is ``(3, D0, D1, D2)`` float32 voxels, or ``None``.

    ``status``: ``ok`` (every configured step ran), ``degraded`` (something was skipped, failed
    or replaced: ``message`` says what), ``skipped`` (user-input error), ``failed`` (nothing
    written), ``resumed`` (valid output already on disk). ``io_wait_s``: seconds the pair waited
    for its volumes (filled by the run loop).
    """

    pair: Pair
    status: str
    disp: np.ndarray | None = None
    gate_score: float | None = None
    cross_contrast: bool | None = None
    gate_forced: bool = False
    seconds: float = 0.0
    peak_mem_mb: float = 0.0
    device: str = ""
    message: str = ""
    outputs: list[str] = field(default_factory=list)
    trace: PairTrace = field(default_factory=PairTrace)
    io_wait_s: float = 0.0

    @property
    def path(self) -> str:
        """Display only: the steps that ran, ``"+"``-joined (e.g. ``"gate+engine"``)."""
        return self.trace.path

    @property
    def steps(self) -> int | None:
        """Optimiser iterations done (engine and cascade), ``None`` when neither ran. Display only."""
        return self.trace.iterations()

    @classmethod
    def resumed(cls, pair: Pair, outputs: Sequence[str], recorded_path: str = "") -> PairResult:
        """A pair whose valid outputs were already on disk (``--resume``); ``recorded_path`` is
        the path their earlier run recorded, if known."""
        trace = PairTrace()
        trace.record("resume", "ran", 0.0, recorded_path or "existing output")
        return cls(pair=pair, status="resumed", outputs=[str(o) for o in outputs], trace=trace)

    def to_json(self) -> dict:
        """Report entry (no arrays), with the trace."""
        skip = ("pair", "disp", "trace")
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        out.update(pair=self.pair.key, fixed=str(self.pair.fixed), moving=str(self.pair.moving))
        out.update(path=self.path, steps=self.steps, trace=self.trace.to_json())
        return out


class PairVolumes(tuple):
    """``(fixed, moving)`` float32 ``(D0, D1, D2)`` volumes (unpack it as a tuple), plus ``notes``: what was
    ignored while reading them, e.g. ``"LUMIRMRI_3454_0000.nii.gz: affine ignored (singular sform ...)"``."""

    notes: tuple[str, ...]

    def __new__(cls, fixed: np.ndarray, moving: np.ndarray, notes: Sequence[str] = ()) -> PairVolumes:
        volumes = super().__new__(cls, (fixed, moving))
        volumes.notes = tuple(notes)
        return volumes


def pair_memory_limit(cfg: PipelineConfig) -> MemoryLimit:
    """The bytes a pair may need: ``cfg.max_memory`` (from ``--max-memory`` or the start of the run), else now."""
    if cfg.max_memory is None or cfg.max_memory_source == "--max-memory":
        return memory_limit(cfg.max_memory)
    return MemoryLimit(cfg.max_memory, cfg.max_memory_source)


def check_pair_headers(pair: Pair, cfg: PipelineConfig) -> tuple[ImageHeader, ImageHeader]:
    """Both headers checked, shapes compared and the pair's memory estimated, before any voxel is read.

    Raises:
        CaioInputError: an unusable file or header, a wrong shape (without ``resample``), fixed and
            moving shapes that differ, or a working set beyond :func:`pair_memory_limit`.
    """
    expected = None if cfg.resample else cfg.expected_shape
    fixed, moving = inspect_image(pair.fixed, use_affine=False), inspect_image(pair.moving, use_affine=False)
    fixed_shape, moving_shape = check_shape(fixed, expected), check_shape(moving, expected)
    if not cfg.resample and fixed_shape != moving_shape:
        raise CaioInputError(f"{pair.moving}: shape {moving_shape} differs from fixed {pair.fixed} {fixed_shape}")
    grid = cfg.expected_shape or fixed_shape
    need = pipeline_pair_bytes(fixed_shape, moving_shape, grid)
    larger = max((fixed, moving), key=lambda h: h.voxels)
    shapes = f"fixed {'x'.join(map(str, fixed_shape))}, moving {'x'.join(map(str, moving_shape))}"
    pair_memory_limit(cfg).check(need, larger.path, f"registering the pair ({shapes})")
    return fixed, moving


def load_pair_volumes(pair: Pair, cfg: PipelineConfig) -> PairVolumes:
    """Read both volumes as float32 ``(D0, D1, D2)`` on the output grid, headers first
    (:func:`check_pair_headers`); an unusable affine is ignored (array indices, as the evaluator) and noted.

    Raises:
        CaioInputError: see :func:`check_pair_headers`; unreadable, truncated or non-finite data.
    """
    headers = check_pair_headers(pair, cfg)
    limit = pair_memory_limit(cfg).bytes
    fixed, moving = (read_image(h, max_memory=limit) for h in headers)
    if cfg.resample:
        fixed, moving = (
            conform_to_shape(v, cfg.expected_shape) if v.shape != cfg.expected_shape else v for v in (fixed, moving)
        )
    notes = [f"{h.path.name}: affine ignored ({h.geometry_problem})" for h in headers if h.geometry_problem]
    return PairVolumes(fixed, moving, notes)


def register_tensors(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    pair: Pair,
    cfg: PipelineConfig,
    models: Models,
    deadline: float,
    trace: PairTrace,
    result: PairResult,
    low_memory: bool = False,
) -> torch.Tensor:
    """The configured path on ``models.device`` until ``deadline``; the field ``[1, 3, D0, D1, D2]``.

    Never raises for a failing component (it is recorded in ``trace`` and the fallback taken),
    except CUDA out-of-memory errors, which the caller retries.
    """
    score, cross, forced, ambiguous = run_gate(fixed, moving, pair, cfg, trace)
    result.gate_score, result.cross_contrast, result.gate_forced = score, cross, forced
    available = available_models(models)
    plan = plan_pair(models.device.type, cross, available, cfg.mode, cfg.refine, cfg.contrast, ambiguous)
    trace.configured = plan.steps
    active, fimg, mimg = plan, fixed, moving
    reroute = not forced  # the gate's score chose the contrast: the engine may overrule a same-contrast call
    amp = autocast(models.device, "fp16" if low_memory else "fp32")
    if plan.brainid:
        with amp:
            t1 = run_brainid(models.brainid, fixed, moving, deadline, trace)
        if t1 is None:  # raw cross-contrast images from here on
            active = plan_pair(models.device.type, True, available - {"brainid"}, cfg.mode, cfg.refine)
        else:
            fimg, mimg = (x.float() for x in t1)

    def outcome(name: str) -> str:
        return "ran" if name in plan.steps else "fallback"

    disp = None
    if active.vfa is not None:
        with amp:
            disp = run_vfa(getattr(models, active.vfa), active.vfa, fimg, mimg, deadline, trace)
        if disp is not None and active.refine == "engine":
            refined = run_engine(fimg, mimg, active.similarity, deadline, trace, init=disp, reroute=reroute)
            disp = refined if refined is not None else disp
    if disp is None:
        engine_deadline = deadline
        if active.refine == "cascade":
            engine_deadline = time.monotonic() + ENGINE_SHARE_BEFORE_CASCADE * max(deadline - time.monotonic(), 0.0)
        replaces_vfa = active.vfa is not None  # VFA was configured but produced nothing
        engine_outcome = "fallback" if replaces_vfa else outcome("engine")
        disp = run_engine(
            fimg, mimg, active.similarity, engine_deadline, trace, outcome=engine_outcome, reroute=reroute
        )
    if active.refine == "cascade":
        fsim = msim = None
        if "mind" in active.steps:
            fsim, msim = run_mind(fixed, moving, trace, outcome("mind"))
        start = disp if disp is not None else torch.zeros((1, 3, *fixed.shape[2:]), device=fixed.device)
        with amp:
            refined = run_cascade(fimg, mimg, start, fsim, msim, cfg, deadline, trace, models.cascade_init)
        disp = refined if refined is not None else disp
    if disp is None:
        trace.record("identity", "fallback", 0.0, "no step produced a field: zero displacement")
        disp = torch.zeros((1, 3, *fixed.shape[2:]), device=fixed.device)
    return disp


def attempts_for(device: torch.device) -> list[tuple[torch.device, bool]]:
    """(device, low_memory) in the order tried after CUDA out-of-memory errors."""
    if device.type != "cuda":
        return [(device, False)]
    return [(device, False), (device, True), (torch.device("cpu"), False)]


class AllAttemptsFailedError(RuntimeError):
    """Every (device, precision) attempt of a pair raised; ``args[0]`` lists the errors."""


def run_with_retries(
    attempt: Callable[[torch.device, bool, float], T],
    attempts: Sequence[tuple[torch.device, bool]],
    deadline: float,
    trace: PairTrace,
) -> tuple[T, torch.device, bool]:
    """``attempt(device, low_memory, deadline)`` on each setting in turn until one returns.

    Every attempt gets the SAME ``deadline`` (a retry is not given extra time); a retry whose
    deadline has passed is not started. Each failure is recorded as a ``retry`` step.

    Raises:
        CaioInputError: from ``attempt`` (a user-input problem is not retried).
        AllAttemptsFailedError: no attempt returned.
    """
    errors: list[str] = []
    for index, (device, low_memory) in enumerate(attempts):
        label = f"{device}{' fp16' if low_memory else ''}"
        if index > 0 and time.monotonic() >= deadline:
            trace.record("retry", "skipped", 0.0, f"{label}: deadline passed")
            errors.append(f"{label}: not tried, deadline passed")
            break
        start = time.monotonic()
        try:
            return attempt(device, low_memory, deadline), device, low_memory
        except CaioInputError:
            raise
        except Exception as err:  # OOM or a bug: try the next, more frugal setting
            errors.append(f"{label}: {type(err).__name__}: {err}")
            log.error("attempt on %s failed: %s", label, err, exc_info=log.isEnabledFor(logging.DEBUG))
            more = index + 1 < len(attempts)
            trace.record("retry", "fallback" if more else "failed", time.monotonic() - start, errors[-1])
            if device.type == "cuda":
                torch.cuda.empty_cache()
    raise AllAttemptsFailedError("; ".join(errors))


def register_pair(
    pair: Pair,
    cfg: PipelineConfig,
    models: Models,
    *,
    volumes: tuple[np.ndarray, np.ndarray] | None = None,
    clock_start: float | None = None,
) -> PairResult:
    """Register one pair within :func:`~caio.pipeline.config.budget_for` seconds, writing reserved.

    Args:
        volumes: ``(fixed, moving)`` float32 ``(D0, D1, D2)`` already read (e.g. by a reader
            thread, checked like :func:`load_pair_volumes`); ``None``: read here.
        clock_start: ``time.monotonic()`` at which the pair's clock started (when it began
            waiting for its volumes); ``None``: now.
    Never raises for a pair-level problem: ``status``, ``message`` and ``trace`` say what happened.
    """
    start = time.monotonic() if clock_start is None else clock_start
    trace = PairTrace()
    result = PairResult(pair=pair, status="failed", device=str(models.device), trace=trace)
    budget = budget_for(cfg, models.device)
    if volumes is None:
        try:
            volumes = load_pair_volumes(pair, cfg)
        except CaioInputError as err:
            result.status, result.message, result.seconds = "skipped", str(err), time.monotonic() - start
            return result
        trace.record("read", "ran", time.monotonic() - start)
    else:
        trace.record("read", "ran", time.monotonic() - start, "read ahead")
    fixed_np, moving_np = volumes
    deadline = start + budget - write_reserve_s(budget, fixed_np.shape)

    def attempt(device: torch.device, low_memory: bool, deadline: float) -> np.ndarray:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        on = models.on(device)
        fixed = torch.from_numpy(fixed_np)[None, None].to(device)
        moving = torch.from_numpy(moving_np)[None, None].to(device)
        disp = register_tensors(fixed, moving, pair, cfg, on, deadline, trace, result, low_memory)
        return validate_disp(disp, fixed_np.shape)

    try:
        result.disp, device, low_memory = run_with_retries(attempt, attempts_for(models.device), deadline, trace)
        result.device = str(device) + (" (autocast fp16)" if low_memory else "")
        result.peak_mem_mb = peak_memory_mb(device)
        reasons = trace.degraded_reasons()
        result.status = "degraded" if reasons else "ok"
        result.message = "; ".join(reasons)
    except CaioInputError as err:
        result.status, result.message = "skipped", str(err)
    except AllAttemptsFailedError as err:
        result.message = str(err)
        if cfg.identity_fallback:
            trace.record("identity", "fallback", 0.0, "every attempt failed: zero displacement")
            result.status, result.disp = "degraded", np.zeros((3, *fixed_np.shape), np.float32)
            result.message = "; ".join(trace.degraded_reasons())
    if result.status not in ("ok", "skipped"):
        log.warning("%s %s: %s", pair.key, result.status, result.message)
    result.seconds = time.monotonic() - start
    return result
