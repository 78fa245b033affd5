"""Memory bounds: what reading and registering a pair will need, what the machine allows, and the refusal.

Every estimate is made from image headers alone (:class:`caio.io.header.ImageHeader`), before a byte of
voxel data is read, so an oversized or hostile file (a 12 MB ``.nii.gz`` declaring 1400^3 voxels) is
refused in milliseconds instead of after minutes of decompression and gigabytes of memory.

The limit is ``--max-memory`` when given (:func:`parse_size`: ``8G``, ``512M`` ...), else
:data:`DEFAULT_SHARE` of :func:`available_memory`: ``MemAvailable`` of ``/proc/meminfo``, lowered to the
free part of the cgroup's ``memory.max`` (containers, ``docker run --memory``) when there is one.

Working-set factors (bytes per voxel of the output grid) were measured on the LUMIR grid
(160 x 224 x 192, 6.9 M voxels) with ``/usr/bin/time -v`` (README "Bad input"; the numbers and
commands are in the constants' docstrings).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from caio.errors import CaioInputError

MIB = 1 << 20
GIB = 1 << 30

READ_CHUNK_BYTES = 8 * MIB
"""Voxel data are decompressed and converted in slabs of this many file bytes (:mod:`caio.io.header`)."""

READ_OVERHEAD_BYTES = 10 * READ_CHUNK_BYTES
"""Per file read: the slab buffer and its float64 scaled copy (8 B per file byte at most)."""

PIPELINE_BYTES_PER_VOXEL = 270
"""``predict`` on the CPU, per voxel of the output grid, beyond the two float32 input volumes: gate, engine
pyramid and workspace (MIND features for a cross-contrast pair), the float32 field, its channel-last copy
and gzip buffers while it is written, the next pair read ahead (overlap). Measured on 7 December 2026
(2-core VM): ``/usr/bin/time -v python predict.py --json test_data/LUMIR25_dataset.json --input test_data
-o out --device cpu`` peaks at 2.20 GB RSS (the cross-contrast pair; 60 s budget); the process after
``load_models`` holds 0.38 GB: (2.20 - 0.38) GB / 6.88 M voxels = 272 B/voxel, less 8 B for the inputs."""

ENGINE_BYTES_PER_VOXEL = 180
"""``caio register``: the engine's working set per voxel of the fixed grid (pyramid, workspace, field and
its written copy). Measured: ``/usr/bin/time -v caio register LUMIRMRI_3455_0000.nii.gz
LUMIRMRI_3454_0000.nii.gz -o d.nii.gz --device cpu --budget-s 30`` (test_data) peaks at 1.45 GB RSS, the
imports 0.29 GB: 172 B/voxel; 180 kept."""

RESAMPLE_BYTES_PER_VOXEL = 64
"""``caio register`` when the moving image is on another grid: float64 coordinates (identity grid and
the mapped one, 3 x 8 B each), their float32 copy and the resampled image, per fixed voxel."""


def parse_size(text: str) -> int:
    """``"8G"``, ``"8GB"``, ``"8GiB"``, ``"512M"``, ``"1.5g"``, ``"1000000"`` (bytes) -> bytes (binary units).

    Raises:
        CaioInputError: anything else, or a size of zero.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise CaioInputError(f"--max-memory {text}: expected a size such as 8G, 512M or 2.5G")
    power = " kmgt".index(match.group(2).lower() or " ")
    value = int(float(match.group(1)) * 1024**power)
    if value <= 0:
        raise CaioInputError(f"--max-memory {text}: must be more than 0 bytes")
    return value


def format_size(nbytes: float) -> str:
    """Human-readable binary size: ``"2.5 GiB"``, ``"310 MiB"``, ``"200 KiB"``."""
    if nbytes >= 0.95 * GIB:
        return f"{nbytes / GIB:.1f} GiB"
    if nbytes >= MIB:
        return f"{nbytes / MIB:.0f} MiB"
    return f"{max(nbytes, 0) / 1024:.0f} KiB"


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux: free physical pages
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_free() -> int | None:
    """Free part of the cgroup's limit: v2 ``memory.max - memory.current``, else v1's limit - usage."""
    for limit_path, usage_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit = _read_int(limit_path)  # "max" (no limit) reads as None
        if limit is not None and limit < 1 << 60:
            return max(limit - (_read_int(usage_path) or 0), 0)
    return None


def available_memory() -> int | None:
    """Bytes this process may still allocate: ``MemAvailable``, lowered to the cgroup's free part; ``None``
    when neither can be read (then nothing is refused for memory)."""
    values = [v for v in (_meminfo_available(), _cgroup_free()) if v is not None]
    return min(values) if values else None


@dataclass(frozen=True)
class MemoryLimit:
    """Bytes allowed for one pair's working set, and where the number comes from (for the message)."""

    bytes: int | None
    source: str

    def check(self, need: int, path: str | os.PathLike, what: str) -> None:
        """Refuse ``need`` bytes for ``what`` (one line naming ``path``) when more than allowed.

        Raises:
            CaioInputError: ``"<path>: <what> needs 13.7 GiB, more than the 9.8 GiB allowed (available memory;
                --max-memory sets the limit)"``.
        """
        if self.bytes is not None and need > self.bytes:
            raise CaioInputError(
                f"{path}: {what} needs {format_size(need)}, more than the {format_size(self.bytes)} allowed "
                f"({self.source})"
            )


DEFAULT_SHARE = 0.8
"""Share of the available memory allowed by default: the estimates are good to about 10 %, and the rest of
the machine (page cache, other processes) keeps the remainder."""


def default_memory_limit() -> int | None:
    """:data:`DEFAULT_SHARE` of :func:`available_memory` (``None`` when it cannot be read)."""
    available = available_memory()
    return None if available is None else int(DEFAULT_SHARE * available)


def memory_limit(max_memory: int | None) -> MemoryLimit:
    """``max_memory`` bytes when given (``--max-memory``), else :func:`default_memory_limit` now."""
    if max_memory is not None:
        return MemoryLimit(int(max_memory), f"--max-memory {format_size(max_memory)}")
    share = f"{DEFAULT_SHARE:.0%}"
    return MemoryLimit(default_memory_limit(), f"{share} of the memory available now; --max-memory sets the limit")


def read_bytes(shape: Sequence[int], itemsize: int = 4) -> int:
    """Peak bytes to read one image of ``shape`` into an array of ``itemsize`` bytes per voxel (plus the
    slab buffers: at most :data:`READ_OVERHEAD_BYTES`, 16 B per voxel for a small image)."""
    voxels = math.prod(shape)
    return voxels * itemsize + min(READ_OVERHEAD_BYTES, 16 * voxels)


def pipeline_pair_bytes(fixed_shape: Sequence[int], moving_shape: Sequence[int], grid: Sequence[int]) -> int:
    """``predict``: both volumes read as float32, resampled onto ``grid`` when their shape differs
    (``--resample``), and the pipeline's working set (:data:`PIPELINE_BYTES_PER_VOXEL`) on ``grid``."""
    voxels = math.prod(grid)
    resampled = sum(4 * voxels for shape in (fixed_shape, moving_shape) if tuple(shape) != tuple(grid))
    return read_bytes(fixed_shape) + read_bytes(moving_shape) + resampled + PIPELINE_BYTES_PER_VOXEL * voxels


def register_pair_bytes(fixed_shape: Sequence[int], moving_shape: Sequence[int], same_grid: bool) -> int:
    """``caio register``: both volumes read (float32), the moving resampled onto the fixed grid (its
    contiguous copy and the coordinate grids) unless it is already there, and the engine on the fixed grid."""
    voxels = math.prod(fixed_shape)
    resample = 0 if same_grid else 4 * math.prod(moving_shape) + RESAMPLE_BYTES_PER_VOXEL * voxels
    return read_bytes(fixed_shape) + read_bytes(moving_shape) + resample + ENGINE_BYTES_PER_VOXEL * voxels


def warp_bytes(grid: Sequence[int], moving_shape: Sequence[int]) -> int:
    """``caio warp``: the displacement read as float64, the moving image (float32) and its contiguous copy,
    the coordinate grids and the warped output on ``grid``."""
    voxels = math.prod(grid)
    return read_bytes((*grid, 3), 8) + 2 * read_bytes(moving_shape) + (RESAMPLE_BYTES_PER_VOXEL + 8) * voxels
