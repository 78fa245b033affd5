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
    only). ``checks``: the safeguard's score after each level (``label``, ``score``, ``kept``);
    ``safeguard``: what it did instead of keeping a level's field, one line each (:mod:`caio.engine.safeguard`);
    ``rerouted``: why an ``"auto"`` registration left the same-contrast route for MIND-SSC.
    """

    similarity: str
    levels: list[LevelTrace] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_deadline: bool = False
    similarity_before: float | None = None
    similarity_after: float | None = None
    explained: float | None = None
    checks: list[dict] = field(default_factory=list)
    safeguard: list[str] = field(default_factory=list)
    rerouted: str = ""

    @property
    def safeguard_notes(self) -> list[str]:
        """What the safeguard did, one line each: the reroute first (when there was one), then every undone level."""
        return ([self.rerouted] if self.rerouted else []) + self.safeguard

    @property
    def distrusted(self) -> bool:
        """The engine distrusts its result: it left the route the gate chose (``rerouted``), or the field it returns
        is one the safeguard fell back to (the last level checked was undone). A level undone and then improved on
        by finer levels that passed the check is a correction, recorded in ``safeguard`` only."""
        return bool(self.rerouted) or bool(self.checks and not self.checks[-1]["kept"])

    @property
    def iterations(self) -> int:
        """Iterations done over all levels."""
        return sum(level.done for level in self.levels)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return dataclasses.asdict(self) | {"iterations": self.iterations}
