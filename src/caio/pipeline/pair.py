"""One pair: load -> gate -> contrast handling -> backbone -> cascade -> validated displacement.

* **Gate** (:mod:`caio.contrast.gate`): decides whether the pair is cross-contrast (forced on/off by
  ``PipelineConfig.gate``); if it fails, the modality codes of the file names decide.
* **Contrast**: a cross-contrast pair is mapped to T1-like images by Brain-ID
  (:mod:`caio.contrast.brainid`) when its weights are present; otherwise MIND-SSC features
  (:mod:`caio.contrast.mind`) are the similarity of the cascade (one log line says which).
* **Backbone**: VFA (:mod:`caio.backbone.vfa`) when its weights are present and ``mode`` allows it,
  else the training-free registration (:mod:`caio.backbone.training_free`), else the identity.
* **Cascade** (:mod:`caio.refine.cascade`): instance optimisation until the pair's deadline.

A failing stage degrades to the next option (:mod:`caio.pipeline.stages`). A CUDA
out-of-memory error retries the pair with autocast (float16) and then on the CPU. A user-input
error (:class:`~caio.errors.CaioInputError`: unreadable file, wrong shape, NaN) skips the pair
with a one-line reason. Images between stages are float32 ``[1, 1, D0, D1, D2]`` in [0, 255];
displacements ``[1, 3, D0, D1, D2]`` in voxels (:mod:`caio.spatial` convention).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from caio.device import autocast, peak_memory_mb
from caio.errors import CaioInputError
from caio.io import Pair, conform_to_shape, read_volume
from caio.pipeline.config import PipelineConfig, budget_for
from caio.pipeline.models import Models
from caio.pipeline.stages import run_backbone, run_cascade, run_gate, similarity_inputs, validate_disp

log = logging.getLogger("caio.pipeline")

WRITE_RESERVE_FRACTION = 0.15
"""Share of the per-pair budget kept for validating and writing the output (gzip of 80 MB)."""
WRITE_RESERVE_MAX_S = 10.0
REGISTRATION_STEPS = frozenset({"vfa_mono", "vfa_multi", "training-free", "cascade"})
"""Path steps that actually register; a path without any of them is reported as degraded."""


@dataclass
class PairResult:
    """Outcome of one pair. ``disp`` is ``(3, D0, D1, D2)`` float32 voxels, or ``None``.

    ``status``: ``ok``, ``degraded`` (identity fallback written), ``skipped`` (user-input
    error), ``failed`` (no output), ``resumed`` (valid output already on disk).
    """

    pair: Pair
    status: str
    disp: np.ndarray | None = None
    gate_score: float | None = None
    cross_contrast: bool | None = None
    gate_forced: bool = False
    path: str = ""
    steps: int | None = None
    seconds: float = 0.0
    peak_mem_mb: float = 0.0
    device: str = ""
    message: str = ""
    outputs: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """Report entry (no arrays)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("pair", "disp")}
        out["pair"] = self.pair.key
        out["fixed"], out["moving"] = str(self.pair.fixed), str(self.pair.moving)
        return out


def load_pair_volumes(pair: Pair, cfg: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Read both volumes as float32 ``(D0, D1, D2)`` on the output grid.

    Raises:
        CaioInputError: unreadable file, wrong shape (without ``resample``), NaN, or
            fixed and moving grids that differ.
    """
    shape = None if cfg.resample else cfg.expected_shape
    fixed, moving = read_volume(pair.fixed, shape), read_volume(pair.moving, shape)
    if cfg.resample:
        fixed, moving = (
            conform_to_shape(v, cfg.expected_shape) if v.shape != cfg.expected_shape else v for v in (fixed, moving)
        )
    if fixed.shape != moving.shape:
        raise CaioInputError(f"{pair.moving}: shape {moving.shape} differs from fixed {pair.fixed} {fixed.shape}")
    return fixed, moving


def _register_once(
    fixed_np,
    moving_np,
    pair: Pair,
    cfg: PipelineConfig,
    models: Models,
    deadline: float,
    low_memory: bool,
    result: PairResult,
) -> np.ndarray:
    device = models.device
    fixed = torch.from_numpy(fixed_np)[None, None].to(device)
    moving = torch.from_numpy(moving_np)[None, None].to(device)
    amp = autocast(device, "fp16" if low_memory else "fp32")
    steps: list[str] = []
    with amp:
        score, cross, forced = run_gate(fixed, moving, pair, cfg)
        result.gate_score, result.cross_contrast, result.gate_forced = score, cross, forced
        fimg, mimg, fsim, msim = similarity_inputs(fixed, moving, cross, models, steps)
        init = run_backbone(fimg, mimg, cross, cfg, models, deadline, low_memory, steps)
        disp, n_steps = run_cascade(fimg, mimg, init, fsim, msim, cfg, deadline, steps, models.cascade_init)
    try:
        out = validate_disp(disp, fixed_np.shape)
    except ValueError as err:
        if disp is init:
            raise
        log.error("%s: cascade output rejected (%s): keeping the backbone's displacement", pair.key, err)
        steps[:] = [s for s in steps if not s.startswith("cascade")]
        out, n_steps = validate_disp(init, fixed_np.shape), None
    result.path, result.steps = "+".join(steps), n_steps
    return out


def _attempts(device: torch.device) -> list[tuple[torch.device, bool]]:
    """(device, low_memory) in the order tried after CUDA out-of-memory errors."""
    if device.type != "cuda":
        return [(device, False)]
    return [(device, False), (device, True), (torch.device("cpu"), False)]


def register_pair(pair: Pair, cfg: PipelineConfig, models: Models) -> PairResult:
    """Register one pair within :func:`budget_for` seconds (reading included, writing reserved).

    Never raises for a pair-level problem: the result's ``status`` and ``message`` say what
    happened (see :class:`PairResult`).
    """
    start = time.monotonic()
    result = PairResult(pair=pair, status="failed", device=str(models.device))
    budget = budget_for(cfg, models.device)
    reserve = min(WRITE_RESERVE_MAX_S, WRITE_RESERVE_FRACTION * budget)
    try:
        fixed_np, moving_np = load_pair_volumes(pair, cfg)
    except CaioInputError as err:
        result.status, result.message = "skipped", str(err)
        result.seconds = time.monotonic() - start
        return result
    deadline = start + budget - reserve
    errors: list[str] = []
    for device, low_memory in _attempts(models.device):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            result.disp = _register_once(
                fixed_np, moving_np, pair, cfg, models.on(device), deadline, low_memory, result
            )
            result.status, result.device = "ok", str(device) + (" (autocast fp16)" if low_memory else "")
            result.peak_mem_mb = peak_memory_mb(device)
            if not REGISTRATION_STEPS & set(result.path.split("+")):
                result.status = "degraded"
                result.message = (
                    "no registration step completed (module missing or failed, or budget too short): "
                    "identity displacement"
                )
            break
        except CaioInputError as err:
            result.status, result.message = "skipped", str(err)
            break
        except Exception as err:  # OOM or a bug: try the next, more frugal setting
            errors.append(f"{device}{' fp16' if low_memory else ''}: {type(err).__name__}: {err}")
            log.error(
                "%s on %s%s failed: %s",
                pair.key,
                device,
                " (fp16)" if low_memory else "",
                err,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()
            # a retry after a failure gets at least half a budget of its own
            deadline = max(deadline, time.monotonic() + 0.5 * (budget - reserve))
    if result.status == "failed":
        result.message = "; ".join(errors)
        if cfg.identity_fallback:
            result.status, result.path = "degraded", "identity-fallback"
            result.disp = np.zeros((3, *fixed_np.shape), np.float32)
    result.seconds = time.monotonic() - start
    return result
