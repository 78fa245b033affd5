"""Per-pair registration pipeline and the run loop that writes every output file.

One pair: load -> gate -> contrast handling -> backbone -> cascade -> validated displacement.

* **Gate** (:mod:`caio.gate`): decides whether the pair is cross-contrast (forced on/off by
  ``PipelineConfig.gate``). Without the module the modality codes of the file names decide.
* **Contrast**: a cross-contrast pair is mapped to T1-like images by Brain-ID
  (:mod:`caio.brainid`) when its weights are present; otherwise MIND-SSC features
  (:mod:`caio.features`) are the similarity of the cascade (one log line says which).
* **Backbone**: VFA (:mod:`caio.vfa`) when its weights are present and ``mode`` allows it,
  else the training-free registration (:mod:`caio.convex`), else the identity.
* **Cascade** (:mod:`caio.cascade`): instance optimisation until the pair's deadline.

Every optional module is imported inside a function, so a missing or broken one degrades to
the next option instead of breaking the import of this module. A CUDA out-of-memory error
retries the pair with autocast (float16) and then on the CPU. A user-input error
(:class:`~caio.errors.CaioInputError`: unreadable file, wrong shape, NaN) skips the pair with
a one-line reason. Images between stages are float32 ``[1, 1, D0, D1, D2]`` in [0, 255];
displacements ``[1, 3, D0, D1, D2]`` in voxels (:mod:`caio.spatial` convention).
The stages live in :mod:`caio.pipeline_stages`, the run loop (:func:`run`, re-exported here)
in :mod:`caio.pipeline_run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caio.errors import CaioInputError
from caio.io import LUMIR_SHAPE, Pair, conform_to_shape, read_volume
from caio.pipeline_stages import _backbone, _cascade, _gate, _similarity_inputs, _warn_once, validate_disp

log = logging.getLogger(__name__)

MODES = ("auto", "vfa", "training-free")
CASCADE_INIT_NAME = "cascade_init.pt"
"""File in the weights folder with the cascade's pretrained initial weights (``caio pretrain``)."""
WRITE_RESERVE_FRACTION = 0.15
"""Share of the per-pair budget kept for validating and writing the output (gzip of 80 MB)."""
WRITE_RESERVE_MAX_S = 10.0
REGISTRATION_STEPS = frozenset({"vfa_mono", "vfa_multi", "training-free", "cascade"})
"""Path steps that actually register; a path without any of them is reported as degraded."""


DEFAULT_BUDGET_S = {"cuda": 60.0, "cpu": 300.0}
"""Per-pair budget when none is given: the challenge's minute on a GPU; on a CPU (about 20x slower
per cascade step, see README) five minutes, so that the training-free backbone and some cascade
steps fit."""


def budget_for(cfg: "PipelineConfig", device: torch.device) -> float:
    """Seconds per pair: ``cfg.budget_s`` if set, else the default of the device type."""
    return cfg.budget_s if cfg.budget_s is not None else DEFAULT_BUDGET_S["cuda" if device.type == "cuda" else "cpu"]


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of one run (all pairs).

    Attributes:
        device: ``"auto"`` (first CUDA GPU, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        budget_s: wall-clock seconds per pair, reading and writing included (``None``:
            :data:`DEFAULT_BUDGET_S` for the device the pair runs on).
        weights_dir: folder searched by :func:`caio.weights.resolve` (``None``: its default).
        mode: ``"auto"`` (VFA when its weights exist, else training-free), ``"vfa"`` (VFA
            required: missing weights are an error) or ``"training-free"``.
        gate: ``None`` lets the gate decide; ``True``/``False`` forces cross-contrast on/off.
        cascade: run the instance-optimisation cascade after the backbone.
        steps: cascade steps per level (``None``: the cascade's default).
        seed: random seed of the cascade.
        resample: accept volumes of another shape by resampling them onto ``expected_shape``.
        expected_shape: grid every volume (and output) must have; ``None`` accepts any shape
            as long as fixed and moving agree.
        identity_fallback: when every method fails on a pair, write a zero displacement
            (the evaluator aborts on a missing file) and report the pair as degraded.
    """

    device: str = "auto"
    budget_s: float | None = None
    weights_dir: Path | None = None
    mode: str = "auto"
    gate: bool | None = None
    cascade: bool = True
    steps: int | None = None
    seed: int = 0
    resample: bool = False
    expected_shape: tuple[int, int, int] | None = LUMIR_SHAPE
    identity_fallback: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CaioInputError(f"mode '{self.mode}' is not one of {', '.join(MODES)}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise CaioInputError(f"budget {self.budget_s} s must be positive")
        if self.steps is not None and self.steps < 0:
            raise CaioInputError(f"steps {self.steps} must be >= 0")
        if self.resample and self.expected_shape is None:
            raise CaioInputError("resample needs an expected shape")


@dataclass
class Models:
    """Networks loaded once per run. ``None`` where weights (or the module) are absent."""

    device: torch.device
    brainid: Any = None
    vfa_mono: Any = None
    vfa_multi: Any = None
    cascade_init: Path | None = None
    _moved: dict = field(default_factory=dict, repr=False)

    def on(self, device: torch.device) -> "Models":
        """The same models on ``device`` (copies are cached, the originals are untouched)."""
        if device == self.device:
            return self
        if device not in self._moved:
            import copy

            moved = {k: (copy.deepcopy(v).to(device) if isinstance(v, torch.nn.Module) else v)
                     for k, v in (("brainid", self.brainid), ("vfa_mono", self.vfa_mono), ("vfa_multi", self.vfa_multi))}
            self._moved[device] = Models(device=device, cascade_init=self.cascade_init, **moved)
        return self._moved[device]


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


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda:0`` when available, else ``cpu``; a CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CaioInputError(f"device '{name}' requested but CUDA is not available")
    return device


# ------------------------------------------------------------------------------ models
def _weights_path(role: str, weights_dir: Path | None) -> Path | None:
    try:
        from caio.weights import resolve
    except ImportError as err:
        _warn_once("weights", "caio.weights unavailable (%s): running without any weights", err)
        return None
    return resolve(role, weights_dir)


def _cascade_init_path(weights_dir: Path | None) -> Path | None:
    """``cascade_init.pt`` (written by ``caio pretrain``) in the weights folder, if present."""
    if weights_dir is None:
        try:
            from caio.weights import default_weights_dir
        except ImportError:
            return None
        weights_dir = default_weights_dir()
    path = Path(weights_dir) / CASCADE_INIT_NAME
    return path if path.is_file() else None


def load_models(cfg: PipelineConfig, device: torch.device | None = None) -> Models:
    """Load every network whose weights are present, once per run.

    Raises:
        CaioInputError: ``mode="vfa"`` and the VFA weights are missing or unusable.
    """
    device = device or resolve_device(cfg.device)
    models = Models(device=device)
    wanted = [("contrast_adapter", "brainid", "caio.brainid", "load_brainid")]
    if cfg.mode != "training-free":
        wanted += [("backbone_mono", "vfa_mono", "caio.vfa", "load_vfa"),
                   ("backbone_multi", "vfa_multi", "caio.vfa", "load_vfa")]
    for role, attr, module_name, loader in wanted:
        path = _weights_path(role, cfg.weights_dir)
        if path is None:
            log.info("weights for %s: absent", role)
            continue
        try:
            import importlib

            model = getattr(importlib.import_module(module_name), loader)(path, device)
        except Exception as err:  # a broken weights file must not stop the other pairs
            if cfg.mode == "vfa" and attr.startswith("vfa"):
                raise CaioInputError(f"{path}: cannot load {role} ({err})") from None
            log.error("weights for %s at %s unusable, ignored: %s", role, path, err)
            continue
        setattr(models, attr, model)
        log.info("weights for %s: %s", role, path)
    models.cascade_init = _cascade_init_path(cfg.weights_dir)
    if models.cascade_init is not None:
        log.info("cascade initial weights: %s", models.cascade_init)
    if cfg.mode == "vfa" and models.vfa_mono is None and models.vfa_multi is None:
        raise CaioInputError("mode 'vfa' needs VFA weights (backbone_mono or backbone_multi); none found"
                             f" in {cfg.weights_dir or 'the default weights folder'}")
    return models


def load_pair_volumes(pair: Pair, cfg: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Read both volumes as float32 ``(D0, D1, D2)`` on the output grid.

    Raises:
        CaioInputError: unreadable file, wrong shape (without ``resample``), NaN, or
            fixed and moving grids that differ.
    """
    shape = None if cfg.resample else cfg.expected_shape
    fixed, moving = read_volume(pair.fixed, shape), read_volume(pair.moving, shape)
    if cfg.resample:
        fixed, moving = (conform_to_shape(v, cfg.expected_shape) if v.shape != cfg.expected_shape else v
                         for v in (fixed, moving))
    if fixed.shape != moving.shape:
        raise CaioInputError(f"{pair.moving}: shape {moving.shape} differs from fixed {pair.fixed} {fixed.shape}")
    return fixed, moving


def _register_once(fixed_np, moving_np, pair: Pair, cfg: PipelineConfig, models: Models,
                   deadline: float, low_memory: bool, result: PairResult) -> np.ndarray:
    device = models.device
    fixed = torch.from_numpy(fixed_np)[None, None].to(device)
    moving = torch.from_numpy(moving_np)[None, None].to(device)
    amp = torch.autocast("cuda", dtype=torch.float16) if low_memory and device.type == "cuda" else contextlib.nullcontext()
    steps: list[str] = []
    with amp:
        score, cross, forced = _gate(fixed, moving, pair, cfg)
        result.gate_score, result.cross_contrast, result.gate_forced = score, cross, forced
        fimg, mimg, fsim, msim = _similarity_inputs(fixed, moving, cross, models, steps)
        init = _backbone(fimg, mimg, cross, cfg, models, deadline, low_memory, steps)
        disp, n_steps = _cascade(fimg, mimg, init, fsim, msim, cfg, deadline, steps, models.cascade_init)
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


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB -> MiB


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
            result.disp = _register_once(fixed_np, moving_np, pair, cfg, models.on(device), deadline,
                                         low_memory, result)
            result.status, result.device = "ok", str(device) + (" (autocast fp16)" if low_memory else "")
            result.peak_mem_mb = _peak_mem_mb(device)
            if not REGISTRATION_STEPS & set(result.path.split("+")):
                result.status = "degraded"
                result.message = "no registration step completed (module missing or failed, or budget too short): identity displacement"
            break
        except CaioInputError as err:
            result.status, result.message = "skipped", str(err)
            break
        except Exception as err:  # OOM or a bug: try the next, more frugal setting
            errors.append(f"{device}{' fp16' if low_memory else ''}: {type(err).__name__}: {err}")
            log.error("%s on %s%s failed: %s", pair.key, device, " (fp16)" if low_memory else "", err,
                      exc_info=log.isEnabledFor(logging.DEBUG))
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


# The run loop is in its own module; re-exported here so callers need one import.
from caio.pipeline_run import RunSummary, run  # noqa: E402

__all__ = ["PipelineConfig", "Models", "PairResult", "RunSummary", "load_models", "load_pair_volumes",
           "register_pair", "resolve_device", "run"]
