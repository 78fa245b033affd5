"""Stages of one pair for :mod:`caio.pipeline.pair`, each recording what it did in a :class:`PairTrace`.

:func:`plan_pair` gives the configured path for the device, the weights present and the pair's
contrast; every ``run_*`` function runs one step on the pair's single deadline and returns
``None`` (after recording ``skipped``/``failed``) when it produced nothing, so that the caller
takes the documented fallback. CUDA out-of-memory errors are re-raised so that
:func:`caio.pipeline.pair.register_pair` can retry on a more frugal setting. Images are float32
``[1, 1, D0, D1, D2]`` in [0, 255]; displacements ``[1, 3, D0, D1, D2]`` in voxels.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from caio.backbone.vfa import predict_displacement
from caio.contrast.brainid import BrainIDDeadlineError, synthesize_t1
from caio.contrast.gate import GateConfig, decide
from caio.device import is_oom
from caio.engine import register as engine_register
from caio.engine.multiresolution import similarity_for_contrast
from caio.io import Pair
from caio.pipeline.config import PipelineConfig, estimated_seconds
from caio.pipeline.models import Models
from caio.pipeline.trace import PairTrace
from caio.refine.cascade import refine
from caio.refine.settings import CascadeConfig
from caio.similarity.mind import mind_ssc

log = logging.getLogger("caio.pipeline")

ENGINE_SHARE_BEFORE_CASCADE = 0.5
"""Share of the time left that the engine gets when the cascade follows it."""


@dataclass(frozen=True)
class Plan:
    """The configured path of one pair.

    Attributes:
        steps: step names that must all run for the pair to be ``ok`` (e.g. ``("gate", "engine")``).
        brainid: map a cross-contrast pair to T1-like images first.
        vfa: ``"vfa_mono"``/``"vfa_multi"`` (the :class:`Models` attribute) or ``None``.
        refine: ``"cascade"``, ``"engine"`` or ``"none"`` after the backbone.
        similarity: engine similarity on the images the backbone sees.
    """

    steps: tuple[str, ...]
    brainid: bool
    vfa: str | None
    refine: str
    similarity: str


def available_models(models: Models) -> frozenset[str]:
    """Names of the networks loaded in ``models`` (``brainid``, ``vfa_mono``, ``vfa_multi``)."""
    return frozenset(k for k in ("brainid", "vfa_mono", "vfa_multi") if getattr(models, k) is not None)


def plan_pair(
    device_type: str,
    cross: bool,
    available: frozenset[str],
    mode: str,
    refine_mode: str,
    contrast: str = "auto",
    ambiguous: bool = False,
) -> Plan:
    """The path a pair must take (:class:`Plan`), by device type, contrast and weights present.

    GPU: gate -> Brain-ID (cross-contrast, weights present) -> VFA -> cascade (MIND-SSC similarity
    for a cross-contrast pair without Brain-ID); without VFA weights: gate -> engine.
    CPU: gate -> engine; with ``mode="vfa"``: gate -> VFA -> engine from VFA's field.
    ``refine_mode`` other than ``auto`` replaces the refinement anywhere; ``contrast="brainid"``
    asks for Brain-ID on any device, ``"none"`` never. A same-contrast pair whose gate score is
    ``ambiguous`` (:class:`caio.contrast.gate.GateDecision`) is registered with the engine's
    cross-contrast similarity (it may be T1 vs FLAIR-like); nothing else changes for it.
    """
    gpu = device_type == "cuda"
    wants_brainid = contrast == "brainid" or (contrast == "auto" and gpu)
    brainid = wants_brainid and cross and "brainid" in available
    raw_cross = cross and not brainid
    vfa = None
    if mode == "vfa" or (gpu and mode == "auto"):
        if raw_cross:
            vfa = "vfa_multi" if "vfa_multi" in available else ("vfa_mono" if mode == "vfa" else None)
            vfa = vfa if vfa in available else None
        else:
            vfa = next((k for k in ("vfa_mono", "vfa_multi") if k in available), None)
    backbone = "vfa" if vfa else "engine"
    refine_to = refine_mode
    if refine_mode == "auto":
        # after the engine the cascade (random initialisation) lowered Dice on a GPU too: docs/measurements.md, "GPU"
        refine_to = ("cascade" if gpu else "engine") if vfa else "none"
    if refine_to == "engine" and backbone == "engine":
        refine_to = "none"
    steps = ["gate"] + (["brainid"] if brainid else []) + [backbone]
    if refine_to == "cascade" and raw_cross:
        steps.append("mind")
    if refine_to != "none":
        steps.append(refine_to)
    return Plan(tuple(steps), brainid, vfa, refine_to, similarity_for_contrast(raw_cross, ambiguous and not cross))


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


def _finite(disp: torch.Tensor) -> bool:
    return bool(torch.isfinite(disp).all())


def _failed(trace: PairTrace, name: str, start: float, err: BaseException) -> None:
    if is_oom(err):
        raise err
    log.error("%s failed: %s", name, err, exc_info=log.isEnabledFor(logging.DEBUG))
    trace.record(name, "failed", time.monotonic() - start, f"{type(err).__name__}: {err}")


def run_gate(fixed: torch.Tensor, moving: torch.Tensor, pair: Pair, cfg: PipelineConfig, trace: PairTrace):
    """(score, cross_contrast, forced, ambiguous); a failing gate leaves the decision to the modality codes.

    ``cfg.gate`` forces the decision. Otherwise a pair whose modality codes differ is
    cross-contrast whatever the score (docs/gate_calibration.md: T1-vs-FLAIR scores overlap
    T1-T1 ones).
    """
    start = time.monotonic()
    force = cfg.gate if cfg.gate is not None else (True if pair.is_cross_contrast else None)
    try:
        decision = decide(fixed, moving, GateConfig(), force=force)
    except Exception as err:
        _failed(trace, "gate", start, err)
        cross = pair.is_cross_contrast if cfg.gate is None else cfg.gate
        return None, cross, cfg.gate is not None, False
    cross = bool(decision.cross_contrast)
    detail = f"{'cross' if cross else 'same'} contrast" + (" (ambiguous score)" if decision.ambiguous else "")
    if not math.isnan(decision.tissue):
        detail += f", tissue score {decision.tissue:.2f}"
    trace.record("gate", "ran", time.monotonic() - start, detail)
    return float(decision.score), cross, bool(decision.forced), bool(decision.ambiguous)


def _fits(name: str, seconds: float, deadline: float, trace: PairTrace) -> bool:
    left = _left(deadline)
    if seconds > left:
        log.warning("%s skipped: estimated %.0f s does not fit the %.1f s left", name, seconds, left)
        trace.record(name, "skipped", 0.0, f"estimated {seconds:.0f} s > {left:.1f} s left")
        return False
    return True


def run_brainid(model: Any, fixed, moving, deadline: float, trace: PairTrace):
    """``(fixed_t1, moving_t1)`` synthesised by Brain-ID, or ``None`` (skipped or failed)."""
    voxels = fixed[0, 0].numel()
    if not _fits("brainid", 2 * estimated_seconds("brainid", fixed.device, voxels), deadline, trace):
        return None
    start = time.monotonic()
    try:
        with torch.no_grad():
            out = synthesize_t1(model, fixed, deadline=deadline), synthesize_t1(model, moving, deadline=deadline)
    except BrainIDDeadlineError:
        log.warning("brainid skipped: the deadline passed between tiles")
        trace.record("brainid", "skipped", time.monotonic() - start, "deadline passed mid-way")
        return None
    except Exception as err:
        _failed(trace, "brainid", start, err)
        return None
    trace.record("brainid", "ran", time.monotonic() - start)
    return out


def run_vfa(model: Any, name: str, fixed, moving, deadline: float, trace: PairTrace) -> torch.Tensor | None:
    """VFA's displacement, or ``None`` (skipped for cost, failed, or non-finite)."""
    if not _fits("vfa", estimated_seconds("vfa", fixed.device, fixed[0, 0].numel()), deadline, trace):
        return None
    start = time.monotonic()
    try:
        with torch.no_grad():
            disp = predict_displacement(model, fixed, moving).float()
        if not _finite(disp):
            raise ValueError("non-finite displacement")
    except Exception as err:
        _failed(trace, "vfa", start, err)
        return None
    trace.record("vfa", "ran", time.monotonic() - start, name)
    return disp


def run_engine(
    fixed,
    moving,
    similarity: str,
    deadline: float,
    trace: PairTrace,
    init=None,
    outcome: str = "ran",
    reroute: bool = False,
) -> torch.Tensor | None:
    """:func:`caio.engine.register` until ``deadline``; ``None`` when it failed or did no iteration.

    ``outcome`` is what a successful run is recorded as (``"fallback"`` when it replaces a step); ``reroute``: the
    contrast gate's score chose ``similarity`` (the engine may overrule a same-contrast call). When the engine
    distrusts its field (:attr:`caio.engine.trace.EngineTrace.distrusted`), a ``safeguard`` record (outcome
    ``fallback``) says why, and the pair is degraded; a level the safeguard undid and finer levels then bettered
    is only noted in the engine step's detail.
    """
    start = time.monotonic()
    try:
        disp, etrace = engine_register(
            fixed, moving, similarity=similarity, init=init, deadline=deadline, reroute=reroute
        )
        if not _finite(disp):
            raise ValueError("non-finite displacement")
    except Exception as err:
        _failed(trace, "engine", start, err)
        return None
    seconds, info = time.monotonic() - start, etrace.to_dict()
    if etrace.iterations == 0:
        log.warning("engine ran 0 iterations before the deadline (budget too short?)")
        trace.record("engine", "skipped", seconds, "engine ran 0 iterations (budget too short)", engine=info)
        return None
    before, after = etrace.similarity_before, etrace.similarity_after
    # e.g. "lncc2 instead of mind": the MIND-SSC descriptors did not fit the budget, squared LNCC ran instead
    ran = similarity if etrace.similarity == similarity else f"{etrace.similarity} instead of {similarity}"
    detail = f"{ran}, {etrace.iterations} iterations" + (
        f", similarity {before:.4f} -> {after:.4f}" if before is not None and after is not None else ""
    )
    if etrace.safeguard and not etrace.distrusted:  # a level undone, then bettered by finer ones: a correction
        detail += f"; safeguard: {'; '.join(etrace.safeguard)}"
    trace.record("engine", outcome, seconds, detail, iterations=etrace.iterations, engine=info)
    if etrace.distrusted:  # the engine distrusts the field it returns: the pair is degraded, with why
        trace.record("safeguard", "fallback", 0.0, "; ".join(etrace.safeguard_notes))
    return disp.float()


def run_mind(fixed, moving, trace: PairTrace, outcome: str = "ran"):
    """MIND-SSC features ``[1, 12, D0, D1, D2]`` of both images (the cascade's cross-contrast
    similarity), or ``(None, None)`` when they cannot be computed (raw intensities then)."""
    start = time.monotonic()
    try:
        with torch.no_grad():
            out = mind_ssc(fixed), mind_ssc(moving)
    except Exception as err:
        _failed(trace, "mind", start, err)
        return None, None
    trace.record("mind", outcome, time.monotonic() - start)
    return out


def cascade_config_for(device: torch.device, steps: int | None = None) -> CascadeConfig:
    """The cascade settings on ``device``: :class:`CascadeConfig` defaults on CUDA (stages 1/4, 1/2,
    1/2), ``CascadeConfig.for_cpu()`` on the CPU (1/8, 1/4, 1/4); ``steps`` overrides the step count."""
    base = CascadeConfig() if torch.device(device).type == "cuda" else CascadeConfig.for_cpu()
    return base if steps is None else dataclasses.replace(base, steps=steps)


def run_cascade(
    fixed, moving, init, fsim, msim, cfg: PipelineConfig, deadline: float, trace: PairTrace, init_state=None
) -> torch.Tensor | None:
    """The cascade's refinement of ``init``, or ``None`` (failed, non-finite or no step done)."""
    start = time.monotonic()
    c_cfg = cascade_config_for(fixed.device, cfg.steps)
    kwargs = dict(fixed_sim=fsim, moving_sim=msim, deadline=deadline, seed=cfg.seed)
    try:
        try:
            disp, report = refine(fixed, moving, init, c_cfg, init_state=init_state, **kwargs)
        except Exception as err:
            if init_state is None or is_oom(err):
                raise
            log.error("cascade initial weights %s unusable (%s): random initialisation", init_state, err)
            trace.record("cascade", "failed", time.monotonic() - start, f"initial weights {init_state}: {err}")
            disp, report = refine(fixed, moving, init, c_cfg, **kwargs)
        if not _finite(disp):
            raise ValueError("non-finite displacement")
    except Exception as err:
        _failed(trace, "cascade", start, err)
        return None
    seconds = time.monotonic() - start
    if report.steps == 0:
        log.warning("cascade ran no step before the deadline (budget too short?)")
        trace.record("cascade", "skipped", seconds, "cascade ran 0 steps (budget too short)")
        return None
    losses = dict(loss_start=report.losses[0], loss_best=min(report.losses), best_step=report.best_step)
    trace.record("cascade", "ran", seconds, f"{report.steps} steps", iterations=report.steps, **losses)
    return disp.float()


def validate_disp(disp: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """``[1, 3, *shape]`` finite tensor -> ``(3, *shape)`` float32 array; ValueError otherwise."""
    if tuple(disp.shape) != (1, 3, *shape):
        raise ValueError(f"displacement has shape {tuple(disp.shape)}, expected {(1, 3, *shape)}")
    out = disp.detach()[0].to("cpu", torch.float32).numpy()
    if not np.isfinite(out).all():
        raise ValueError("displacement contains NaN or infinite values")
    return np.ascontiguousarray(out)
