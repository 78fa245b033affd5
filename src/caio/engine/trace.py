"""What the registration engine did: per-level iterations, similarity values and seconds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class LevelTrace:
    """One pyramid level: grid, iterations planned and done, similarity (its kind and values), seconds."""

    factor: int
    shape: tuple[int, ...]
    planned: int
    done: int
    similarity_start: float | None
    similarity_end: float | None
    seconds: float
    similarity: str = ""


@dataclass
class EngineTrace:
    """What :func:`register` did.

    ``similarity_before``/``similarity_after``: similarity of the initial field (zero or
    ``init``) and of the returned field, both on the grid of the finest level that ran
    (``None`` when no level ran). ``similarity`` is the one that ran (``"cross"`` reports ``"remap"`` or
    ``"mind"``); ``explained``: the intensity map's share of the fixed variance that chose it (``"cross"``
    only).
    """

    similarity: str
    levels: list[LevelTrace] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_deadline: bool = False
    similarity_before: float | None = None
    similarity_after: float | None = None
    explained: float | None = None

    @property
    def iterations(self) -> int:
        """Iterations done over all levels."""
        return sum(level.done for level in self.levels)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return dataclasses.asdict(self) | {"iterations": self.iterations}
