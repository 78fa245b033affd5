"""The one device and precision policy: which device a run uses, autocast, OOM detection, peak memory.

Nothing here runs at import time; every choice is made by a call.
"""

from __future__ import annotations

import contextlib
import resource

import torch

from caio.errors import CaioInputError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
"""``auto``: fp16 on CUDA, fp32 elsewhere; ``fp32``: no autocast; ``fp16`` / ``bf16``: that dtype."""

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda:0`` when available, else ``cpu``; a CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CaioInputError(f"device '{name}' requested but CUDA is not available")
    return device


def autocast(
    device: torch.device | str, precision: str = "auto", on_cpu: bool = False
) -> contextlib.AbstractContextManager:
    """Autocast context of ``precision`` (see :data:`PRECISIONS`) on ``device``.

    On CUDA ``fp16``/``bf16``/``auto`` (= fp16) autocast; ``fp32`` is a no-op. Off CUDA the
    context is a no-op unless ``on_cpu`` asks for CPU autocast (``auto`` then means bf16).

    Raises:
        ValueError: unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=_DTYPES.get(precision, torch.float16))
    if on_cpu:
        return torch.autocast("cpu", dtype=_DTYPES.get(precision, torch.bfloat16))
    return contextlib.nullcontext()


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error (CUDA or a CPU allocation failure)."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA allocator peak on a GPU, else the process's maximum resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB -> MiB


def set_cpu_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in PyTorch and in the engine's Numba kernels alike."""
    import numba  # a hard dependency; imported here so that this module stays light

    # numba first: with its OpenMP threading layer, setting numba's count can change the OpenMP count torch reads
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)
