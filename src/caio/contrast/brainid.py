"""Brain-ID contrast adapter: any-contrast brain MRI -> synthetic T1 (clean-room, from the spec).

Network (``specs/brainid_spec.md`` §1, :mod:`caio.contrast.brainid_net`): a 5-level 3-D U-Net
(feature maps 64..1024, two
GroupNorm(8) -> Conv3d 3x3x3 (no bias) -> LeakyReLU(0.01) units per level, max-pool 2,
nearest upsampling to the skip's size, concatenation ``[skip, upsampled]``) plus a 1x1x1
conv head ``final_conv_image`` whose output is a skull-stripped T1-like image with white
matter ~ 1. Module names reproduce the official state dict (56 tensors, 65,870,051 values).

Public API:

* :class:`BrainID`: the network; ``model(x)`` -> image ``[B, 1, X, Y, Z]``,
  ``model(x, return_features=True)`` -> ``(image, [feat0 .. feat4])``.
* :func:`load_brainid`: strict load of the official checkpoint layout (weights under
  ``'model'``; the file also pickles an ``argparse.Namespace``, the only allowed class).
* :func:`synthesize_t1`: caio's image interface, ``[1, 1, D0, D1, D2]`` in [0, 255] in and
  out, on exactly the input grid, masked by ``input > 0``.
* :func:`run_network` / :func:`tiled_image`: the network on an already normalised input.

Normalisation happens in one place, :func:`synthesize_t1` (spec §2.1, demo variant):
min-max to [0, 1]; reorientation to RAS by axis permutation/flips (``BrainIDConfig``;
LUMIR arrays are already RAS, so the default is the identity); centre crop of axes longer
than 220 (LUMIR: axis 1, 224 -> 220) and zero padding of axes shorter than 16 (the
coarsest level needs one voxel); no resampling (LUMIR is 1 mm). The output is put back by
the exact inverse (zero outside the crop), negative values are clamped to 0, the brain
(``input > 0``) is scaled so that its ``output_quantile`` maps to 255, clipped to
[0, 255], and the background set to 0 (as the organisers mask SynthSR outputs).

Memory: the untiled fp32 forward of a 160x224x192 volume peaks at ~15 GB. With ``tile``
the network runs layer by layer over tiles (:func:`tiled_image`): every 3x3x3 conv reads
its tile plus a one-voxel halo, and every GroupNorm uses statistics of the *whole* volume
(accumulated over tiles), so the tiled output equals the untiled one up to float rounding.
(Independent overlapping windows with blending cannot do that: GroupNorm statistics are
global, so per-window statistics change the result everywhere, spec §1.5.) On CUDA the
convolutions run under autocast (fp16 by default, ``BrainIDConfig.precision``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from caio.contrast.brainid_net import BrainID, SingleConv, load_brainid
from caio.device import autocast

__all__ = [
    "BrainID",
    "BrainIDConfig",
    "BrainIDDeadlineError",
    "load_brainid",
    "run_network",
    "synthesize_t1",
    "tiled_image",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Exact tiled execution (GroupNorm statistics of the whole volume, 1-voxel conv halos)
# ----------------------------------------------------------------------------------------


class BrainIDDeadlineError(TimeoutError):
    """The deadline passed between two tiles of :func:`tiled_image`; no image was produced."""


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise BrainIDDeadlineError("Brain-ID stopped at its deadline, between tiles")


def _tiles(shape: Sequence[int], tile: Sequence[int]) -> Iterator[tuple[tuple[int, int], ...]]:
    """``((lo0, hi0), (lo1, hi1), (lo2, hi2))`` blocks covering ``shape``."""
    for a in range(0, shape[0], tile[0]):
        for b in range(0, shape[1], tile[1]):
            for c in range(0, shape[2], tile[2]):
                yield tuple((lo, min(lo + t, n)) for lo, t, n in zip((a, b, c), tile, shape))


class _Stored:
    """A stored activation ``[1, C, X, Y, Z]`` read by region."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.shape = tuple(tensor.shape[2:])
        self.channels = tensor.shape[1]

    def read(self, box, device, dtype) -> torch.Tensor:
        (a0, a1), (b0, b1), (c0, c1) = box
        return self.tensor[:, :, a0:a1, b0:b1, c0:c1].to(device, dtype)


class _SkipAndUpsampled(_Stored):
    """The decoder input ``cat([skip, nearest_upsample(low, size=skip size)])``, never materialised."""

    def __init__(self, skip: torch.Tensor, low: torch.Tensor) -> None:
        super().__init__(skip)
        self.low = low
        self.channels = skip.shape[1] + low.shape[1]
        # source index of every target index, from PyTorch's own nearest rule (legacy 'nearest')
        self.index = [
            F.interpolate(torch.arange(m, dtype=torch.float32).view(1, 1, m, 1, 1), size=(n, 1, 1), mode="nearest")
            .view(n)
            .long()
            for m, n in zip(low.shape[2:], self.shape)
        ]

    def read(self, box, device, dtype) -> torch.Tensor:
        idx = [self.index[k][lo:hi] for k, (lo, hi) in enumerate(box)]
        first = [int(i[0]) for i in idx]
        low = self.low[
            :, :, first[0] : int(idx[0][-1]) + 1, first[1] : int(idx[1][-1]) + 1, first[2] : int(idx[2][-1]) + 1
        ]
        low = low.to(device, dtype)
        i0, i1, i2 = [(i - f).to(device) for i, f in zip(idx, first)]
        low = low[:, :, i0[:, None, None], i1[None, :, None], i2[None, None, :]]  # (index_select is slow)
        return torch.cat([super().read(box, device, dtype), low], dim=1)


def _groupnorm_affine(
    gn: nn.GroupNorm, source: _Stored, tile, device, deadline: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``gn(x) == scale * x + shift`` for the whole volume."""
    total = torch.zeros(source.channels, dtype=torch.float64, device=device)
    total_sq = torch.zeros_like(total)
    for box in _tiles(source.shape, tile):
        _check_deadline(deadline)
        x = source.read(box, device, gn.weight.dtype).flatten(2)[0]  # per-tile sums, fp64 totals
        total += x.sum(1).double()
        total_sq += (x * x).sum(1).double()
    count = float(torch.tensor(source.shape).prod())
    mean = (total / count).view(gn.num_groups, -1).mean(1)
    var = ((total_sq / count).view(gn.num_groups, -1).mean(1) - mean * mean).clamp_min(0.0)
    per_group = source.channels // gn.num_groups
    rstd = torch.rsqrt(var + gn.eps).repeat_interleave(per_group)
    scale = gn.weight.double().to(device) * rstd
    shift = gn.bias.double().to(device) - mean.repeat_interleave(per_group) * scale
    dtype = gn.weight.dtype
    return scale.to(dtype).view(1, -1, 1, 1, 1), shift.to(dtype).view(1, -1, 1, 1, 1)


def _tiled_single_conv(
    unit: SingleConv,
    source: _Stored,
    tile,
    device,
    store,
    head: nn.Module | None = None,
    precision: str = "fp32",
    deadline: float | None = None,
) -> torch.Tensor:
    """``unit`` (then ``head``) over the whole volume of ``source``, tile by tile."""
    scale, shift = _groupnorm_affine(unit.groupnorm, source, tile, device, deadline)
    weight = unit.conv.weight.to(device)
    out_channels = 1 if head is not None else weight.shape[0]
    out = torch.empty((1, out_channels, *source.shape), device=store[0], dtype=store[1])
    for box in _tiles(source.shape, tile):
        _check_deadline(deadline)
        halo = tuple((max(lo - 1, 0), min(hi + 1, n)) for (lo, hi), n in zip(box, source.shape))
        x = source.read(halo, device, weight.dtype) * scale + shift  # GroupNorm, then zero padding at the volume border
        pad = []
        for (lo, hi), (hlo, hhi) in zip(reversed(box), reversed(halo)):
            pad += [1 - (lo - hlo), 1 - (hhi - hi)]
        with autocast(torch.device(device), precision):
            y = F.leaky_relu(F.conv3d(F.pad(x, pad), weight), 0.01)
            if head is not None:
                y = head(y)
        (a0, a1), (b0, b1), (c0, c1) = box
        out[:, :, a0:a1, b0:b1, c0:c1] = y.to(store[1])
    return out


@torch.no_grad()
def tiled_image(
    model: BrainID,
    x: torch.Tensor,
    tile: int | Sequence[int],
    precision: str = "fp32",
    storage: torch.dtype = torch.float32,
    deadline: float | None = None,
) -> torch.Tensor:
    """The T1 head output of ``model(x)``, computed layer by layer over tiles.

    Args:
        x: ``[1, 1, X, Y, Z]`` normalised input.
        tile: tile edge in voxels (one value or one per axis), used at every level.
        precision: autocast mode of the convolutions (CUDA only; ``fp32`` = none).
        storage: dtype of the stored intermediate activations (``float16`` halves host/GPU
            memory at ~1e-3 relative error).
        deadline: absolute ``time.monotonic()``; checked before every tile.
    Returns:
        ``[1, 1, X, Y, Z]`` in the model's dtype, equal to ``model(x)`` up to float rounding.
    Raises:
        BrainIDDeadlineError: the deadline passed before the last tile.
    """
    device = x.device
    tile = [int(tile)] * 3 if isinstance(tile, int) else [int(t) for t in tile]
    store = (device, storage)
    skips: list[torch.Tensor] = []
    current = x.to(storage)
    for level, encoder in enumerate(model.backbone.encoders):
        if level > 0:
            current = F.max_pool3d(skips[-1], 2)
        unit = encoder.basic_module
        current = _tiled_single_conv(unit.SingleConv1, _Stored(current), tile, device, store, None, precision, deadline)
        current = _tiled_single_conv(unit.SingleConv2, _Stored(current), tile, device, store, None, precision, deadline)
        skips.append(current)
    current = skips.pop()
    last = len(model.backbone.decoders) - 1
    for j, decoder in enumerate(model.backbone.decoders):
        unit = decoder.basic_module
        source = _SkipAndUpsampled(skips.pop(), current)
        current = _tiled_single_conv(unit.SingleConv1, source, tile, device, store, None, precision, deadline)
        del source
        head = model.head if j == last else None
        out_store = (device, model.head.final_conv_image.weight.dtype) if head is not None else store
        current = _tiled_single_conv(
            unit.SingleConv2, _Stored(current), tile, device, out_store, head, precision, deadline
        )
    return current


# ----------------------------------------------------------------------------------------
# Pre/post-processing and the caio image interface
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrainIDConfig:
    """How :func:`synthesize_t1` prepares the input and maps the output back.

    Attributes:
        axis_order: input array axis that becomes axis R, A, S (LUMIR: already RAS).
        flip: flip those (already permuted) axes to point to R, A, S.
        max_size: centre-crop axes longer than this (official demo: 220).
        min_size: zero-pad axes shorter than this (5 levels need >= 16).
        output_quantile: brain-intensity quantile mapped to 255.
        precision: ``auto`` (fp16 autocast on CUDA, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``.
        storage: dtype of stored activations in tiled mode.
        cpu_untiled_max_voxels: on CPU, larger inputs are tiled even when no tile is given
            (the result is the same; the untiled 160x224x192 forward needs ~15 GB).
        cpu_tile: the tile edge used then.
        gpu_untiled_max_voxels, gpu_tile, gpu_storage: the same on a GPU (the untiled 160x224x192
            fp16 forward peaked at 21 GB on an H200, over the method's 10 GB; tiles of 128 with float16
            storage peaked at 6.2 GB above the baseline on the CPU in fp32).
    """

    axis_order: tuple[int, int, int] = (0, 1, 2)
    flip: tuple[bool, bool, bool] = (False, False, False)
    max_size: int = 220
    min_size: int = 16
    output_quantile: float = 0.999
    precision: str = "auto"
    storage: torch.dtype = torch.float32
    cpu_untiled_max_voxels: int = 96**3
    cpu_tile: int = 64
    gpu_untiled_max_voxels: int = 128**3
    gpu_tile: int = 128
    gpu_storage: torch.dtype = torch.float16


def tiling(device: torch.device, voxels: int, config: BrainIDConfig) -> tuple[int | None, torch.dtype]:
    """Tile edge (``None``: one whole-volume pass) and activation storage for an input of ``voxels`` on
    ``device`` when the caller gives no tile."""
    if device.type == "cpu":
        return (config.cpu_tile if voxels > config.cpu_untiled_max_voxels else None), config.storage
    return (config.gpu_tile if voxels > config.gpu_untiled_max_voxels else None), config.gpu_storage


def _crop_pad_boxes(shape: Sequence[int], cfg: BrainIDConfig) -> list[tuple[int, int, int, int]]:
    """Per axis ``(crop_start, crop_stop, pad_before, pad_after)``."""
    boxes = []
    for n in shape:
        start = (n - cfg.max_size) // 2 if n > cfg.max_size else 0
        stop = start + min(n, cfg.max_size)
        missing = max(cfg.min_size - (stop - start), 0)
        boxes.append((start, stop, missing // 2, missing - missing // 2))
    return boxes


def run_network(
    model: BrainID,
    x: torch.Tensor,
    tile: int | Sequence[int] | None = None,
    config: BrainIDConfig = BrainIDConfig(),
    deadline: float | None = None,
) -> torch.Tensor:
    """T1 head output ``[1, 1, X, Y, Z]`` float32 of a normalised input, whole or tiled.

    ``deadline`` is checked before the pass (untiled) or before every tile (tiled); see
    :class:`BrainIDDeadlineError`.
    """
    _check_deadline(deadline)
    device = x.device
    precision = ("fp16" if device.type == "cuda" else "fp32") if config.precision == "auto" else config.precision
    storage = config.storage
    if tile is None:
        tile, storage = tiling(device, x[0, 0].numel(), config)
        if tile is not None:
            log.debug("Brain-ID on %s: %s voxels, tiled with edge %d", device, tuple(x.shape[2:]), tile)
    with torch.no_grad():
        if tile is not None:
            return tiled_image(model, x, tile, precision, storage, deadline).float()
        with autocast(device, precision):
            return model(x).float()


def synthesize_t1(
    model: BrainID,
    volume: torch.Tensor,
    tile: int | Sequence[int] | None = None,
    config: BrainIDConfig = BrainIDConfig(),
    deadline: float | None = None,
) -> torch.Tensor:
    """Synthetic T1 of any-contrast ``volume`` on exactly its grid.

    Args:
        model: a :class:`BrainID` (e.g. from :func:`load_brainid`); runs on its device.
        volume: ``[1, 1, D0, D1, D2]`` intensities in [0, 255], 0 = background.
        tile: ``None`` for one whole-volume pass (up to ``config.cpu_untiled_max_voxels`` on a CPU,
            ``config.gpu_untiled_max_voxels`` on a GPU; :func:`tiling`), else the tile edge (see :func:`tiled_image`).
        deadline: absolute ``time.monotonic()`` checked between tiles (:class:`BrainIDDeadlineError`).
    Returns:
        ``[1, 1, D0, D1, D2]`` float32 in [0, 255] on ``volume``'s device, 0 where ``volume <= 0``.
    """
    if volume.dim() != 5 or volume.shape[:2] != (1, 1):
        raise ValueError(f"volume must be [1, 1, D0, D1, D2], got {tuple(volume.shape)}")
    device = next(model.parameters()).device
    vol = volume.to(device, torch.float32)
    mask = vol > 0
    lo, hi = vol.min(), vol.max()
    if not bool(mask.any()) or float(hi - lo) <= 0:
        return torch.zeros_like(volume, dtype=torch.float32)
    x = (vol - lo) / (hi - lo)
    order = [0, 1] + [2 + a for a in config.axis_order]
    x = x.permute(order)
    flips = [2 + k for k, f in enumerate(config.flip) if f]
    x = x.flip(flips) if flips else x
    boxes = _crop_pad_boxes(x.shape[2:], config)
    x = x[:, :, boxes[0][0] : boxes[0][1], boxes[1][0] : boxes[1][1], boxes[2][0] : boxes[2][1]]
    x = F.pad(x, [p for b in reversed(boxes) for p in b[2:]])

    image = run_network(model, x.contiguous(), tile, config, deadline)

    n = image.shape[2:]
    image = image[
        :, :, boxes[0][2] : n[0] - boxes[0][3], boxes[1][2] : n[1] - boxes[1][3], boxes[2][2] : n[2] - boxes[2][3]
    ]
    full = [vol.shape[2 + a] for a in config.axis_order]  # oriented, uncropped size
    image = F.pad(image, [p for b, m in zip(reversed(boxes), reversed(full)) for p in (b[0], m - b[1])])
    image = image.flip(flips) if flips else image
    image = image.permute([order.index(k) for k in range(5)])
    return _to_intensity_range(image, mask, config.output_quantile).to(volume.device)


def _to_intensity_range(image: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """Clamp at 0, map the brain's ``quantile`` to 255, clip, zero the background."""
    image = image.clamp_min(0.0)
    values = image[mask]
    k = max(1, min(values.numel(), int(round(quantile * values.numel()))))
    top = float(values.float().kthvalue(k).values) if values.numel() else 0.0
    if top <= 0:
        top = float(values.max()) if values.numel() and float(values.max()) > 0 else 1.0
    out = (image * (255.0 / top)).clamp(0.0, 255.0)
    return torch.where(mask, out, torch.zeros((), device=out.device))
