"""VFA (Vector Field Attention) registration backbone, LUMIR configuration (clean-room, from the spec).

Public API:

* :class:`VFAConfig`: hyper-parameters (LUMIR defaults) and the input scaling the weights expect.
* :class:`VFA`: the network; ``model(fixed, moving) -> grid`` (absolute voxel coordinates).
* :func:`load_vfa`: build a model from a checkpoint (2024 ``model_state_dict``, 2025
  ``state_dict`` or a bare state dict), strict key/shape matching.
* :func:`predict_displacement`: the project-convention entry point, ``[0, 255]`` images in,
  ``disp`` ``[1, 3, D0, D1, D2]`` in voxels out (``warped(x) = moving(x + disp(x))``).

Input normalisation happens in exactly one place, :func:`predict_displacement`, which
multiplies the ``[0, 255]`` images by ``config.input_scale``:

* ``VFA-LUMIR24-MonoModal`` (official 2024 release): ``1.0``. The official LUMIR driver feeds the
  raw stored intensities (spec §2.2; the fixture was made this way).
* ``VFA-LUMIR25-MultiModal`` (organisers' MIR pipeline): ``1/255``. It was fine-tuned in MIR,
  whose LUMIR loaders divide by 255 (spec §5).

The first layer is an instance norm, so the scale only acts through its eps (~0.02 voxel).
The value comes from the weights manifest entry whose file name matches the checkpoint
(:func:`caio.weights.manifest.entry_for_file`), else ``1.0``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from caio import spatial
from caio.backbone.vfa_blocks import FeatureNet, NeighbourhoodAttention, conv3
from caio.device import autocast
from caio.weights.checkpoints import extract_state_dict, load_checkpoint, load_into
from caio.weights.manifest import entry_for_file

log = logging.getLogger(__name__)

CHECKPOINT_KEYS: tuple[str, ...] = ("model_state_dict", "state_dict")
"""Where the 2024 (official) and 2025 (MIR) VFA checkpoints keep the weights; else a bare state dict."""


@dataclass(frozen=True)
class VFAConfig:
    """VFA hyper-parameters; the defaults are the LUMIR release (spec §1.2).

    Attributes:
        input_scale: factor applied to ``[0, 255]`` intensities before the network
            (1.0 for the official 2024 weights, 1/255 for the LUMIR25 multi-modal ones).
        int_steps: scaling-and-squaring steps per level (0 for LUMIR).
    """

    in_channels: int = 1
    downsamples: int = 4
    start_channels: int = 8
    matching_channels: int = 8
    max_channels: int = 64
    int_steps: int = 0
    initialize: float = 0.1
    input_scale: float = 1.0

    @property
    def multiple(self) -> int:
        """Spatial sizes must be divisible by this (and be >= 2 at the coarsest level)."""
        return 2**self.downsamples


class MatchingDecoder(nn.Module):
    """Coarse-to-fine matching: per level one projection conv, a shared scalar ``beta``."""

    def __init__(self, feature_channels: list[int], cfg: VFAConfig) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.tensor([float(cfg.initialize)]))
        self.project = nn.ModuleList(
            conv3(c, min(cfg.max_channels, cfg.matching_channels * 2**i)) for i, c in enumerate(feature_channels)
        )
        self.attention = NeighbourhoodAttention()
        self.int_steps = cfg.int_steps

    def level_step(
        self,
        level: int,
        fixed_feat: torch.Tensor,
        moving_feat: torch.Tensor,
        grid: torch.Tensor | None,
        record: dict | None = None,
    ) -> torch.Tensor:
        """One level: match, then compose with the (already upsampled) coarser grid.

        Args:
            fixed_feat, moving_feat: ``[B, C_i, d, h, w]`` features of this level.
            grid: ``[B, 3, d, h, w]`` upsampled coarser grid (voxels of this level) or None.
        Returns:
            ``[B, 3, d, h, w]`` composed grid in voxels of this level (float32 or float64).
        """
        work = self.beta.dtype  # grids, warping and softmax stay in the parameter dtype under autocast
        full_precision = torch.autocast(fixed_feat.device.type, enabled=False)
        if grid is not None:
            with full_precision:
                moving_feat = spatial.sample(moving_feat.to(work), grid)
        padded = F.pad(moving_feat, (1, 1, 1, 1, 1, 1), mode="replicate")
        del moving_feat
        keys = self.project[level](padded)  # the convolutions follow the ambient autocast
        del padded
        query = self.project[level](fixed_feat)
        with full_precision:
            u = self.attention(query.to(work), keys.to(work))
            del query, keys
            if record is not None:
                record[f"attn_disp_level{level}"] = u
            identity = spatial.identity_grid(u.shape[2:], u.device, work)
            local = identity + self.beta.to(work) * u / 2**self.int_steps
            for _ in range(self.int_steps):
                local = spatial.sample(local, local)
            return local if grid is None else spatial.sample(grid, local)


def upsample_grid(grid: torch.Tensor) -> torch.Tensor:
    """x2 upsampling of an absolute voxel grid (corner-aligned: 0 -> 0, n-1 -> 2n-1).

    Equals identity + :func:`caio.spatial.resize_displacement` of ``grid - identity``.
    ``[B, 3, d, h, w] -> [B, 3, 2d, 2h, 2w]``.
    """
    old = grid.shape[2:]
    new = [2 * n for n in old]
    disp = grid - spatial.identity_grid(old, grid.device, grid.dtype)
    disp = spatial.resize_displacement(disp, new)
    return disp.add_(spatial.identity_grid(new, grid.device, grid.dtype))


class VFA(nn.Module):
    """VFA with a shared feature network and the parameter-light matching decoder.

    State-dict keys equal the official checkpoint's (``encoder.*``, ``decoder.*``; 103 tensors
    and 2,014,827 parameters for the LUMIR config).
    """

    def __init__(self, config: VFAConfig = VFAConfig()) -> None:
        super().__init__()
        self.config = config
        self.encoder = FeatureNet(config.in_channels, config.downsamples, config.start_channels, config.max_channels)
        self.decoder = MatchingDecoder(self.encoder.feature_channels, config)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        """Register ``moving`` to ``fixed`` (inputs already scaled as the weights expect).

        Args:
            fixed, moving: ``[B, in_channels, D0, D1, D2]``, sizes divisible by ``config.multiple``.
            record: optional dict receiving intermediates: ``feat_{fixed,moving}_level{i}``,
                ``attn_disp_level{i}`` and ``grid_level{i}`` (composed, before upsampling).
        Returns:
            ``[B, 3, D0, D1, D2]`` grid: absolute voxel coordinates in ``moving`` sampled by each
            fixed voxel (dtype of the parameters).
        """
        for name, image in (("fixed", fixed), ("moving", moving)):
            bad = [n for n in image.shape[2:] if n % self.config.multiple or n < 2 * self.config.multiple]
            if image.dim() != 5 or bad:
                raise ValueError(
                    f"{name} {tuple(image.shape)}: need [B, C, D0, D1, D2], each size a multiple "
                    f"of {self.config.multiple} and >= {2 * self.config.multiple}"
                )
        fixed_feats = self.encoder(fixed)
        moving_feats = self.encoder(moving)
        if record is not None:
            for i, (a, b) in enumerate(zip(fixed_feats, moving_feats)):
                record[f"feat_fixed_level{i}"], record[f"feat_moving_level{i}"] = a, b
        grid = None
        for level in reversed(range(len(fixed_feats))):
            if grid is not None:
                if record is not None:
                    record[f"grid_level{level + 1}"] = grid
                with torch.autocast(grid.device.type, enabled=False):
                    grid = upsample_grid(grid)
            fixed_feat, fixed_feats[level] = fixed_feats[level], None
            moving_feat, moving_feats[level] = moving_feats[level], None
            grid = self.decoder.level_step(level, fixed_feat, moving_feat, grid, record)
            del fixed_feat, moving_feat
        return grid


def load_vfa(path: str | os.PathLike, device: torch.device | str = "cpu", config: VFAConfig | None = None) -> VFA:
    """Build a frozen, eval-mode VFA from a checkpoint file.

    Accepts ``{'model_state_dict': ...}`` (official 2024), ``{'state_dict': ...}`` (LUMIR25 / MIR)
    and a bare state dict; opened with ``weights_only=True``, loaded with ``strict=True``.

    Args:
        config: hyper-parameters and input scale; ``None`` = LUMIR defaults with the
            ``input_scale`` of the weights-manifest entry of the same file name (manifest
            beside the file, else the repository's; 1.0 if none).
    Raises:
        CaioInputError: unreadable file, missing/unexpected key or wrong shape (message names it).
    """
    path = Path(path)
    if config is None:
        config = VFAConfig(input_scale=_manifest_input_scale(path))
    state = extract_state_dict(load_checkpoint(path), path, CHECKPOINT_KEYS)
    model = VFA(config)
    load_into(model, {k: v.float() for k, v in state.items()}, path)
    model.requires_grad_(False)
    return model.eval().to(device)


def _manifest_input_scale(path: Path) -> float:
    try:
        entry = entry_for_file(path.name, path.parent)  # the manifest beside the file, else the repo's
    except Exception as err:  # a broken manifest must not stop loading
        log.warning("weights manifest unreadable (%s): assuming input_scale 1.0 for %s", err, path)
        return 1.0
    if entry is None or entry.input_scale is None:
        log.info("%s is not in the weights manifest: input_scale 1.0 (raw [0, 255])", path.name)
        return 1.0
    return float(entry.input_scale)


def predict_displacement(
    model: VFA, fixed: torch.Tensor, moving: torch.Tensor, precision: str = "auto"
) -> torch.Tensor:
    """Displacement from ``moving`` to ``fixed`` in the project convention.

    The images are multiplied by ``model.config.input_scale`` (the only normalisation step),
    zero-padded at the high end of each axis up to a multiple of ``config.multiple`` (no-op
    for LUMIR's 160x224x192) and the field is cropped back.

    Args:
        fixed, moving: float ``[1, 1, D0, D1, D2]`` intensities in [0, 255] as read from disk,
            on the model's device.
        precision: ``"auto"`` (fp16 autocast on CUDA, as VFA was trained; fp32 elsewhere),
            ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast of the convolutions; matching,
            softmax, warping and grids stay in the parameter dtype).
    Returns:
        ``[1, 3, D0, D1, D2]`` float32 displacement in voxels (grid - identity),
        ``warped(x) = moving(x + disp(x))``; an ordinary (non-inference) tensor.
    """
    if fixed.dim() != 5 or fixed.shape[:2] != (1, 1) or fixed.shape != moving.shape:
        raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} must both be [1, 1, D0, D1, D2]")
    shape = tuple(fixed.shape[2:])
    m = model.config.multiple
    padded = [max(-(-n // m) * m, 2 * m) for n in shape]
    pad = []
    for n, p in zip(reversed(shape), reversed(padded)):
        pad += [0, p - n]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        images = [F.pad(x.to(device=device, dtype=dtype) * model.config.input_scale, pad) for x in (fixed, moving)]
        with autocast(device, precision, on_cpu=precision != "auto"):  # auto: fp16 on CUDA, as VFA was trained
            grid = model(*images)
        del images
        grid = grid.float()
        grid = grid[:, :, : shape[0], : shape[1], : shape[2]]
        disp = grid - spatial.identity_grid(shape, grid.device, grid.dtype)
    return disp.clone()
