"""Stages of one pair for :mod:`caio.pipeline.pair`: gate, contrast handling, backbone, cascade.

A failing stage degrades to the next option (logged once per process). CUDA out-of-memory
errors are re-raised so that :func:`caio.pipeline.pair.register_pair` can retry the pair with less
memory. Images are float32
``[1, 1, D0, D1, D2]`` in [0, 255]; displacements ``[1, 3, D0, D1, D2]`` in voxels.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import torch

from caio.backbone.training_free import TrainingFreeConfig, register_training_free
from caio.backbone.vfa import predict_displacement
from caio.contrast.brainid import synthesize_t1
from caio.contrast.gate import GateConfig, decide
from caio.contrast.mind import mind_ssc
from caio.device import is_oom
from caio.io import Pair
from caio.pipeline.config import PipelineConfig
from caio.pipeline.models import Models
from caio.refine.cascade import CascadeConfig, refine

log = logging.getLogger("caio.pipeline")

BACKBONE_FRACTION = 0.4
"""Share of the remaining budget the training-free backbone may use; the cascade gets the rest."""

_WARNED: set[str] = set()


def _warn_once(key: str, message: str, *args: object, level: int = logging.WARNING) -> None:
    """Log a degradation (missing module, absent weights) once per process, not once per pair."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.log(level, message, *args)


def run_gate(
    fixed: torch.Tensor, moving: torch.Tensor, pair: Pair, cfg: PipelineConfig
) -> tuple[float | None, bool, bool]:
    """(score, cross_contrast, forced).

    ``cfg.gate`` (``--gate on/off``) forces the decision. Otherwise a pair whose modality codes
    differ (e.g. ``0000`` <- ``0001``) is cross-contrast whatever the score: the calibration
    (notes/gate_calibration.md) shows T1-vs-FLAIR scores overlapping T1-T1 ones, so the score
    alone decides only same-code pairs.
    """
    force = cfg.gate if cfg.gate is not None else (True if pair.is_cross_contrast else None)
    try:
        decision = decide(fixed, moving, GateConfig(), force=force)
    except Exception as err:
        if is_oom(err):
            raise
        cross = pair.is_cross_contrast if cfg.gate is None else cfg.gate
        log.error("gate failed on %s (%s): cross-contrast=%s from the modality codes", pair.key, err, cross)
        return None, cross, cfg.gate is not None
    return float(decision.score), bool(decision.cross_contrast), bool(decision.forced)


def similarity_inputs(fixed, moving, cross: bool, models: Models, steps: list[str]):
    """(fixed_img, moving_img, fixed_sim, moving_sim) for the backbone and the cascade."""
    if not cross:
        return fixed, moving, None, None
    if models.brainid is not None:
        try:
            with torch.no_grad():
                ft1, mt1 = synthesize_t1(models.brainid, fixed), synthesize_t1(models.brainid, moving)
            steps.append("brainid")
            return ft1, mt1, None, None
        except Exception as err:
            if is_oom(err):
                raise
            log.error(
                "Brain-ID failed (%s): falling back to MIND-SSC similarity",
                err,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
    try:
        _warn_once(
            "mind",
            "cross-contrast pairs without Brain-ID weights: MIND-SSC features are the cascade similarity",
            level=logging.INFO,
        )
        with torch.no_grad():
            fsim, msim = mind_ssc(fixed), mind_ssc(moving)
        steps.append("mind")
        return fixed, moving, fsim, msim
    except Exception as err:
        if is_oom(err):
            raise
        _warn_once(
            f"mind-failed:{type(err).__name__}",
            "MIND-SSC features unavailable (%s): raw intensities as similarity",
            err,
            level=logging.ERROR,
        )
        steps.append("raw")
        return fixed, moving, None, None


def _pick_vfa(models: Models, raw_cross_contrast: bool, mode: str) -> Any:
    """Mono-modal VFA for same-contrast (or Brain-ID-synthesised) inputs; for raw cross-contrast
    inputs only the multi-modal VFA (the mono one as well when ``mode="vfa"`` demands VFA)."""
    if raw_cross_contrast:
        if models.vfa_multi is not None or mode != "vfa":
            return models.vfa_multi
        return models.vfa_mono
    return models.vfa_mono if models.vfa_mono is not None else models.vfa_multi


def run_backbone(
    fixed, moving, cross: bool, cfg: PipelineConfig, models: Models, deadline: float, low_memory: bool, steps: list[str]
) -> torch.Tensor:
    """Initial displacement ``[1, 3, D0, D1, D2]``: VFA, else training-free, else zero."""
    vfa = _pick_vfa(models, cross and "brainid" not in steps, cfg.mode)
    if cfg.mode != "training-free" and vfa is not None:
        try:
            with torch.no_grad():
                disp = predict_displacement(vfa, fixed, moving)
            steps.append("vfa_multi" if vfa is models.vfa_multi else "vfa_mono")
            return disp.float()
        except Exception as err:
            if is_oom(err) or cfg.mode == "vfa":
                raise
            log.error("VFA failed (%s): training-free backbone instead", err, exc_info=log.isEnabledFor(logging.DEBUG))
    try:
        tf_cfg = TrainingFreeConfig(low_memory=True) if low_memory else TrainingFreeConfig()
        start = time.monotonic()
        share = BACKBONE_FRACTION if cfg.cascade else 1.0
        disp = register_training_free(fixed, moving, tf_cfg, fixed.device, start + share * max(deadline - start, 0.0))
        if torch.count_nonzero(disp) == 0:  # the deadline came before the search could run
            _warn_once("tf-zero", "training-free backbone returned the identity (deadline too short?)")
            steps.append("training-free:zero")
        else:
            steps.append("training-free")
        return disp.float()
    except Exception as err:
        if is_oom(err):
            raise
        _warn_once(
            f"tf-failed:{err}",
            "training-free backbone failed (%s): starting the cascade from the identity",
            err,
            level=logging.ERROR,
        )
    steps.append("identity")
    return torch.zeros((1, 3, *fixed.shape[2:]), device=fixed.device)


def cascade_config_for(device: torch.device, steps: int | None = None) -> CascadeConfig:
    """The cascade settings the pipeline uses on ``device``.

    CUDA: :class:`caio.refine.cascade.CascadeConfig` defaults (stages 1/4, 1/2, 1/2). CPU:
    ``CascadeConfig.for_cpu()`` (stages 1/8, 1/4, 1/4), about 6x cheaper per step, so that a
    CPU run completes steps within its budget. ``steps`` overrides the step count.
    """
    base = CascadeConfig() if torch.device(device).type == "cuda" else CascadeConfig.for_cpu()
    return base if steps is None else dataclasses.replace(base, steps=steps)


def run_cascade(
    fixed, moving, init, fsim, msim, cfg: PipelineConfig, deadline: float, steps: list[str], init_state=None
) -> tuple[torch.Tensor, int | None]:
    if not cfg.cascade:
        return init, None
    try:
        c_cfg = cascade_config_for(fixed.device, cfg.steps)
        try:
            disp, report = refine(
                fixed,
                moving,
                init,
                c_cfg,
                fixed_sim=fsim,
                moving_sim=msim,
                init_state=init_state,
                deadline=deadline,
                seed=cfg.seed,
            )
        except Exception as err:
            if init_state is None or is_oom(err):
                raise
            _warn_once(
                "cascade-init",
                "cascade initial weights %s unusable (%s): random initialisation",
                init_state,
                err,
                level=logging.ERROR,
            )
            disp, report = refine(
                fixed, moving, init, c_cfg, fixed_sim=fsim, moving_sim=msim, deadline=deadline, seed=cfg.seed
            )
        done = report.steps
        if done == 0:  # the deadline came first: the field is the backbone's
            _warn_once("cascade-zero", "cascade ran no step before the deadline (budget too short?)")
        steps.append("cascade" if done != 0 else "cascade:0")
        return disp.float(), done
    except Exception as err:
        if is_oom(err):
            raise
        _warn_once(
            f"cascade-failed:{err}",
            "cascade failed (%s): keeping the backbone's displacement",
            err,
            level=logging.ERROR,
        )
        return init, None


def validate_disp(disp: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """``[1, 3, *shape]`` finite tensor -> ``(3, *shape)`` float32 array; ValueError otherwise."""
    if tuple(disp.shape) != (1, 3, *shape):
        raise ValueError(f"displacement has shape {tuple(disp.shape)}, expected {(1, 3, *shape)}")
    out = disp.detach()[0].to("cpu", torch.float32).numpy()
    if not np.isfinite(out).all():
        raise ValueError("displacement contains NaN or infinite values")
    return np.ascontiguousarray(out)
