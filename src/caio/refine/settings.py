"""Settings of the instance-optimisation cascade (:func:`caio.refine.cascade.refine` and ``caio pretrain``)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

COMPOSITIONS = ("compositional", "additive")


@dataclass(frozen=True)
class CascadeConfig:
    """Settings of :func:`refine` (and of ``caio pretrain``).

    Attributes:
        steps: Adam steps (one step = forward through all stages + one update), count.
        lr: Adam learning rate after warm-up (per step, on the network weights).
        warmup_steps: the learning rate rises linearly from ``lr / warmup_steps`` to ``lr``
            over this many steps (0: no warm-up).
        stage_factors: per stage, how many times coarser than the image the stage grid is
            (1 = image grid); the number of entries is the number of stages.
        residual_scales: per stage, factor applied to the network output (stage-grid voxels).
        base_channels: channels of the first U-Net level.
        depth: U-Net resolution levels.
        field_input: give each network the current field (3 extra input channels, in voxels of
            the stage grid times ``field_input_scale``).
        field_input_scale: factor on the field before it enters a network (1/voxels).
        composition: ``"compositional"`` or ``"additive"`` combination of the residuals.
        lncc_sigma: Gaussian LNCC window sigma, in voxels of each stage grid.
        lncc_eps: lower bound of LNCC local variances (normalised intensity^2).
        diffusion_weight: weight of the diffusion penalty of the final cascade field
            (stage-grid voxels^2 per voxel^2) against the LNCC loss (range [0, 2]).
        head_std: std of the output convolutions' initial weights (small: field ~ input field).
        amp: run the networks under bfloat16 autocast on CUDA (losses stay float32).
    """

    steps: int = 50
    lr: float = 5e-4
    warmup_steps: int = 10
    stage_factors: tuple[int, ...] = (4, 2, 2)
    residual_scales: tuple[float, ...] = (1.0, 1.0, 0.05)
    base_channels: int = 32
    depth: int = 3
    field_input: bool = True
    field_input_scale: float = 0.1
    composition: str = "compositional"
    lncc_sigma: float = 1.5
    lncc_eps: float = 1e-4
    diffusion_weight: float = 1.0
    head_std: float = 1e-5
    amp: bool = True

    def __post_init__(self) -> None:
        if self.composition not in COMPOSITIONS:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, got {self.composition!r}")
        if len(self.stage_factors) != len(self.residual_scales) or not self.stage_factors:
            raise ValueError("stage_factors and residual_scales need the same, non-zero length")
        if any(int(f) < 1 for f in self.stage_factors):
            raise ValueError(f"stage_factors must be >= 1, got {self.stage_factors}")

    @classmethod
    def for_cpu(cls, **overrides) -> CascadeConfig:
        """Coarser stages (1/8, 1/4, 1/4) for CPU runs: at 160x224x192 about 4 CPU-s per step and
        1.3 GiB peak RSS instead of about 26 CPU-s and 4.2 GiB with the default 1/4, 1/2, 1/2."""
        return dataclasses.replace(cls(stage_factors=(8, 4, 4)), **overrides)

    @property
    def arch(self) -> dict:
        """What the weights depend on (stored in and checked against weights files)."""
        return {
            "n_stages": len(self.stage_factors),
            "in_channels": 2 + 3 * int(self.field_input),
            "base_channels": self.base_channels,
            "depth": self.depth,
        }


def config_to_dict(cfg: CascadeConfig) -> dict:
    """Plain dict of a config (tuples as lists) for weights files and JSON."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
