"""Safe loading of PyTorch checkpoint files, whatever layout they were distributed in.

Checkpoints are opened with ``torch.load(weights_only=True)``: no arbitrary unpickling.
A file that needs extra classes (e.g. Brain-ID pickles an ``argparse.Namespace``) passes
exactly those in ``allowed_globals``. Every failure is a :class:`CaioInputError` whose
one-line message names the file and, for a tensor mismatch, the key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from caio.errors import CaioInputError

log = logging.getLogger(__name__)

TORCH_MIN_VERSION: tuple[int, int] = (2, 5)
"""Oldest torch the loaders work with: ``torch.serialization.safe_globals`` (the context manager
:func:`load_checkpoint` allow-lists pickled classes with) first appeared in torch 2.5. The lower
bound of ``torch`` in ``pyproject.toml`` must not be below it (``tests/weights/test_weights.py`` checks)."""

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


def extract_state_dict(
    checkpoint: Mapping, path: str | os.PathLike = "<checkpoint>", keys: Iterable[str] = STATE_DICT_KEYS
) -> dict[str, torch.Tensor]:
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
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _first_keys(keys: Sequence[str], what: str, count: int = 3) -> str:
    """``"missing keys 'a', 'b', 'c' (+4 more)"``: the first ``count`` keys of a list, quoted."""
    shown = ", ".join(f"'{k}'" for k in keys[:count])
    more = f" (+{len(keys) - count} more)" if len(keys) > count else ""
    return f"{what} key{'s' if len(keys) > 1 else ''} {shown}{more}"


def load_into(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike = "<checkpoint>",
    ignore_unexpected: bool = False,
) -> None:
    """``module.load_state_dict(state, strict=True)`` with one-line errors naming the offending keys.

    Every key of ``module`` must be in ``state`` with the same shape and finite values. Keys of
    ``state`` that ``module`` does not have are an error, or, with ``ignore_unexpected`` (e.g. an
    unused head of a released checkpoint), logged in one line and left out.

    Raises:
        CaioInputError: missing keys (the first ones are named), unexpected keys (unless
            ignored), a wrong shape or a non-finite tensor; the message names ``path``.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or (unexpected and not ignore_unexpected):
        parts = []
        if missing:
            parts.append(_first_keys(missing, "missing"))
        if unexpected and not ignore_unexpected:
            parts.append(_first_keys(unexpected, "unexpected"))
        raise CaioInputError(f"{path}: does not fit {type(module).__name__}: {'; '.join(parts)}")
    if unexpected:
        log.info(
            "%s: %s not used by %s: ignored", path, _first_keys(unexpected, "unexpected", 10), type(module).__name__
        )
        state = {k: v for k, v in state.items() if k in expected}
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CaioInputError(
                f"{path}: tensor '{key}' has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}"
            )
        if not torch.isfinite(state[key]).all():
            raise CaioInputError(f"{path}: tensor '{key}' contains NaN or infinite values")
    module.load_state_dict(state, strict=True)
