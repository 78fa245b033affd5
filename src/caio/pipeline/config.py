"""Settings of a pipeline run: :class:`PipelineConfig`, the modes and the per-pair time budget."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from caio.errors import CaioInputError
from caio.io import LUMIR_SHAPE

MODES = ("auto", "vfa", "training-free")
DEFAULT_BUDGET_S = {"cuda": 60.0, "cpu": 300.0}
"""Per-pair budget when none is given: the challenge's minute on a GPU; on a CPU (about 20x slower
per cascade step, see README) five minutes, so that the training-free backbone and some cascade
steps fit."""


def budget_for(cfg: PipelineConfig, device: torch.device) -> float:
    """Seconds per pair: ``cfg.budget_s`` if set, else the default of the device type."""
    return cfg.budget_s if cfg.budget_s is not None else DEFAULT_BUDGET_S["cuda" if device.type == "cuda" else "cpu"]


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of one run (all pairs).

    Attributes:
        device: ``"auto"`` (first CUDA GPU, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        budget_s: wall-clock seconds per pair, reading and writing included (``None``:
            :data:`DEFAULT_BUDGET_S` for the device the pair runs on).
        weights_dir: folder searched by :func:`caio.weights.manifest.resolve` (``None``: its default).
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
