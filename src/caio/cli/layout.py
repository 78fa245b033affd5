"""Where ``predict`` finds its data and which pairs it takes: the organizers' folder layouts,
``--shard K/N``, and cache folders for a container user without a home.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from caio.errors import CaioInputError

T = TypeVar("T")

LAYOUTS: tuple[tuple[str, str, str, str], ...] = (
    ("2025", "app/LUMIR25_dataset.json", "app/input", "app/output"),
    ("2024", "LUMIR_dataset.json", "input", "output"),
)
"""(name, dataset JSON, data root, output folder) relative to the file-system root, in the order tried."""

CACHE_VARIABLES = ("MPLCONFIGDIR", "TORCH_HOME", "XDG_CACHE_HOME")


@dataclass(frozen=True)
class Layout:
    """Where the dataset JSON, the data root and the output folder are."""

    json: Path
    input: Path
    output: Path
    source: str


def detect_layout(
    root: Path = Path("/"), json: Path | None = None, input: Path | None = None, output: Path | None = None
) -> Layout:
    """Find the dataset: the 2025 layout, then the 2024 one, each part replaceable by a flag.

    A layout is taken when its JSON is a file and its data root a folder (after overrides).
    Besides ``/app/LUMIR25_dataset.json``, the 2025 layout accepts a single ``*.json`` in
    ``/app/json_dir`` (the organizers' example image creates that folder).

    Raises:
        CaioInputError: no layout fits; the message lists what was tried.
    """
    overridden = any(x is not None for x in (json, input, output))
    tried = []
    for name, rel_json, rel_in, rel_out in LAYOUTS:
        candidates = [Path(json)] if json is not None else [root / rel_json]
        if json is None and name == "2025":
            json_dir = root / "app" / "json_dir"
            found = sorted(json_dir.glob("*.json")) if json_dir.is_dir() else []
            candidates += found[:1] if len(found) == 1 else []
        data_root = Path(input) if input is not None else root / rel_in
        out = Path(output) if output is not None else root / rel_out
        for cand in candidates:
            tried.append(f"{cand} + {data_root}")
            if cand.is_file() and data_root.is_dir():
                return Layout(cand, data_root, out, f"{name}+flags" if overridden else name)
    if json is not None and not Path(json).is_file():
        raise CaioInputError(f"{json}: dataset JSON not found")
    if input is not None and not Path(input).is_dir():
        raise CaioInputError(f"{input}: data root folder not found")
    raise CaioInputError(
        "no dataset found; tried " + "; ".join(dict.fromkeys(tried)) + " (pass --json, --input and --output)"
    )


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N`` (0-based shard index)."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise CaioInputError(f"--shard '{text}': expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise CaioInputError(f"--shard '{text}': need N >= 1 and 0 <= K < N (K is 0-based)")
    return k, n


def select_shard(items: Sequence[T], shard: int, n_shards: int) -> list[T]:
    """Item ``i`` (0-based, input order) belongs to shard ``i mod n_shards``."""
    return [item for i, item in enumerate(items) if i % n_shards == shard]


def prepare_cache_env(environ: MutableMapping[str, str] | None = None, uid: int | None = None) -> dict[str, str]:
    """Point matplotlib/torch/XDG caches at a writable temp folder when HOME is not writable.

    ``docker run --user UID:GID`` gives a user without a home. Variables that are already
    set are kept. Call before importing torch or matplotlib. Returns what was set.
    """
    environ = os.environ if environ is None else environ
    home = environ.get("HOME", "")
    if home and os.path.isdir(home) and os.access(home, os.W_OK):
        return {}
    base = Path(tempfile.gettempdir()) / f"caio-cache-{os.getuid() if uid is None else uid}"
    values = {"MPLCONFIGDIR": str(base / "matplotlib"), "TORCH_HOME": str(base / "torch"), "XDG_CACHE_HOME": str(base)}
    set_now = {k: v for k, v in values.items() if not environ.get(k)}
    for key, value in set_now.items():
        Path(value).mkdir(parents=True, exist_ok=True)
        environ[key] = value
    return set_now
