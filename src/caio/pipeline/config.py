"""Settings of a pipeline run: :class:`PipelineConfig`, the modes, the per-pair budget and the
measured costs that decide which steps fit in it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from caio.errors import CaioInputError
from caio.io import LUMIR_SHAPE

MODES = ("auto", "vfa", "engine")
"""Backbone: ``auto`` (per device, see :func:`caio.pipeline.stages.plan_pair`), ``vfa`` (VFA
required, also on the CPU) or ``engine`` (:func:`caio.engine.register` only)."""
MODE_ALIASES = {"training-free": "engine"}
REFINES = ("auto", "cascade", "engine", "none")
"""Refinement after the backbone: ``auto`` (after VFA: the cascade on a GPU, the engine on the CPU; after
the engine: nothing), ``cascade``
(the paper's instance optimisation, anywhere), ``engine`` (:func:`caio.engine.register` from the
backbone's field) or ``none``."""

CONTRASTS = ("auto", "brainid", "none")
"""Cross-contrast handling: ``auto`` (Brain-ID on a GPU when its weights are present), ``brainid``
(Brain-ID on any device, weights required to take effect) or ``none`` (never Brain-ID)."""

DEFAULT_BUDGET_S = 60.0
"""Seconds per pair, reading and writing included, on every device: the challenge's minute."""


LUMIR_VOXELS = 160 * 224 * 192
STEP_SECONDS_PER_VOXEL: dict[str, dict[str, float]] = {
    "cpu": {"brainid": 218.0 / LUMIR_VOXELS, "vfa": 58.0 / LUMIR_VOXELS},
    "cuda": {},
}
"""Measured cost (docs/measurements.md, 2-core CPU): Brain-ID 218 s per 160x224x192 volume (it runs on both
images of a pair), VFA 58 s per pair. A step absent here (GPU: not measured) is assumed to fit."""

WRITE_SECONDS_PER_VOXEL = 2.0 / LUMIR_VOXELS
"""Per voxel of the grid: validating and writing the 3-channel field took 0.4-0.8 s on the LUMIR grid (gzip level 0;
~1.5 s at level 1); 2 s kept."""
FINISH_MARGIN_FRACTION = 0.03
"""Share of the budget kept for what follows the last optimiser iteration (resize, copies)."""


def budget_for(cfg: PipelineConfig, device: torch.device) -> float:
    """Seconds per pair: ``cfg.budget_s`` if set, else :data:`DEFAULT_BUDGET_S`."""
    del device  # one default for every device since the engine (issue 12)
    return cfg.budget_s if cfg.budget_s is not None else DEFAULT_BUDGET_S


def write_reserve_s(budget_s: float, grid: Sequence[int]) -> float:
    """Seconds kept at the end of a pair for validating and writing its ``[3, *grid]`` field (at most half the
    budget): 2 s for the LUMIR grid plus :data:`FINISH_MARGIN_FRACTION` of the budget."""
    return min(0.5 * budget_s, WRITE_SECONDS_PER_VOXEL * math.prod(grid) + FINISH_MARGIN_FRACTION * budget_s)


def estimated_seconds(step: str, device: torch.device, voxels: int) -> float:
    """Expected seconds of ``step`` (``"brainid"`` for one volume, ``"vfa"`` for a pair); 0 if unknown."""
    table = STEP_SECONDS_PER_VOXEL.get("cuda" if torch.device(device).type == "cuda" else "cpu", {})
    return table.get(step, 0.0) * voxels


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of one run (all pairs).

    Attributes:
        device: ``"auto"`` (first CUDA GPU, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        budget_s: wall-clock seconds per pair, reading and writing included (``None``:
            :data:`DEFAULT_BUDGET_S`).
        weights_dir: folder searched by :func:`caio.weights.manifest.resolve` (``None``: its default).
        mode: :data:`MODES` (``"training-free"`` is accepted for ``"engine"``).
        refine: :data:`REFINES`.
        contrast: :data:`CONTRASTS`.
        gate: ``None`` lets the gate decide; ``True``/``False`` forces cross-contrast on/off.
        steps: cascade steps per level (``None``: the cascade's default).
        seed: random seed of the cascade.
        resample: accept volumes of another shape by resampling them onto ``expected_shape``.
        expected_shape: grid every volume (and output) must have; ``None`` accepts any shape
            as long as fixed and moving agree.
        identity_fallback: when every method fails on a pair, write a zero displacement
            (the evaluator aborts on a missing file) and report the pair as degraded.
        max_memory: bytes a pair may need (read, resampled, registered; estimated from the headers
            by :func:`caio.io.memory.pipeline_pair_bytes` before any data are read); a pair needing more
            is skipped. ``None``: the memory available at the start of the run (:func:`caio.pipeline.batch.run`).
        max_memory_source: where ``max_memory`` comes from, for the skip message.
    """

    device: str = "auto"
    budget_s: float | None = None
    weights_dir: Path | None = None
    mode: str = "auto"
    refine: str = "auto"
    contrast: str = "auto"
    gate: bool | None = None
    steps: int | None = None
    seed: int = 0
    resample: bool = False
    expected_shape: tuple[int, int, int] | None = LUMIR_SHAPE
    identity_fallback: bool = True
    max_memory: int | None = None
    max_memory_source: str = "--max-memory"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", MODE_ALIASES.get(self.mode, self.mode))
        if self.mode not in MODES:
            raise CaioInputError(f"mode '{self.mode}' is not one of {', '.join(MODES)}")
        if self.refine not in REFINES:
            raise CaioInputError(f"refine '{self.refine}' is not one of {', '.join(REFINES)}")
        if self.contrast not in CONTRASTS:
            raise CaioInputError(f"contrast '{self.contrast}' is not one of {', '.join(CONTRASTS)}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise CaioInputError(f"budget {self.budget_s} s must be positive")
        if self.steps is not None and self.steps < 0:
            raise CaioInputError(f"steps {self.steps} must be >= 0")
        if self.resample and self.expected_shape is None:
            raise CaioInputError("resample needs an expected shape")
        if self.max_memory is not None and not self.max_memory > 0:
            raise CaioInputError(f"max_memory {self.max_memory} bytes must be positive")
