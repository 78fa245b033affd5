"""Safe loading of PyTorch checkpoint files, whatever layout they were distributed in.

Checkpoints are opened with ``torch.load(weights_only=True)``: no arbitrary unpickling.
A file that needs extra classes (e.g. Brain-ID pickles an ``argparse.Namespace``) passes
exactly those in ``allowed_globals``. Every failure is a :class:`CaioInputError` whose
one-line message names the file and, for a tensor mismatch, the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from caio.errors import CaioInputError

STATE_DICT_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "model_state")
"""Keys under which the distributed checkpoints keep their weights (VFA 2025, VFA 2024, Brain-ID, caio)."""


def load_checkpoint(path: str | os.PathLike, allowed_globals: Sequence[object] = ()) -> dict:
    """Open a checkpoint file safely on the CPU.

    Raises:
        CaioInputError: missing, truncated or corrupt file, or a pickled object that is not allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise CaioInputError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError/UnpicklingError/EOFError/zipfile errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CaioInputError(f"{path}: cannot load checkpoint ({type(err).__name__}: {reason})") from None
    if not isinstance(obj, Mapping):
        raise CaioInputError(f"{path}: checkpoint is a {type(obj).__name__}, expected a dict")
    return dict(obj)


def extract_state_dict(checkpoint: Mapping, path: str | os.PathLike = "<checkpoint>",
                       keys: Iterable[str] = STATE_DICT_KEYS) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: under the first of ``keys`` present, or the checkpoint itself.

    A ``module.`` prefix (from ``DataParallel``) is removed.
    """
    for key in keys:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            state = checkpoint[key]
            break
    else:
        state = checkpoint
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CaioInputError(f"{path}: no tensors found (looked under {', '.join(keys)} and the top level)")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike = "<checkpoint>") -> None:
    """``module.load_state_dict(state, strict=True)`` with one-line errors naming the offending key."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key '{missing[0]}'" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected key '{unexpected[0]}'" + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
        raise CaioInputError(f"{path}: does not fit {type(module).__name__}: {'; '.join(parts)}")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CaioInputError(
                f"{path}: tensor '{key}' has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}")
        if not torch.isfinite(state[key]).all():
            raise CaioInputError(f"{path}: tensor '{key}' contains NaN or infinite values")
    module.load_state_dict(state, strict=True)
