"""What happened to one pair: a list of :class:`StepRecord` in :class:`PairTrace`.

The trace is what the status and the report are built from (never a joined string). A step's
``outcome`` is one of :data:`OUTCOMES`:

* ``ran``: the step ran as configured;
* ``skipped``: a configured step did not run (deadline, cost estimate, 0 iterations);
* ``failed``: the step raised; its result was discarded;
* ``fallback``: a step that ran in place of a configured one (or a retry on a frugal setting).

A pair is ``ok`` only when every configured step has a ``ran`` record and nothing else was
recorded; :meth:`PairTrace.degraded_reasons` lists why not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

OUTCOMES = ("ran", "skipped", "failed", "fallback")
STEP_NAMES = (
    "read",
    "gate",
    "brainid",
    "vfa",
    "engine",
    "safeguard",
    "cascade",
    "mind",
    "retry",
    "identity",
    "resume",
    "write",
)
"""Names used by the pipeline (``read`` and ``write`` are bookkeeping: never part of a configured path)."""


@dataclass
class StepRecord:
    """One step: its name, outcome (:data:`OUTCOMES`), wall seconds and a human-readable detail.

    ``info`` holds JSON-ready extras (e.g. the engine's trace).
    """

    name: str
    outcome: str
    seconds: float = 0.0
    detail: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome '{self.outcome}' is not one of {', '.join(OUTCOMES)}")


@dataclass
class PairTrace:
    """The steps of one pair in the order they happened, and the path that was configured."""

    steps: list[StepRecord] = field(default_factory=list)
    configured: tuple[str, ...] = ()

    def record(self, name: str, outcome: str, seconds: float = 0.0, detail: str = "", **info) -> StepRecord:
        """Append and return a :class:`StepRecord`."""
        step = StepRecord(name, outcome, float(seconds), detail, dict(info))
        self.steps.append(step)
        return step

    def ran(self, name: str) -> bool:
        """Whether ``name`` ran as configured (outcome ``ran``)."""
        return any(s.name == name and s.outcome == "ran" for s in self.steps)

    def executed(self) -> list[str]:
        """Names of the steps that produced something (``ran`` or ``fallback``), in order."""
        return [s.name for s in self.steps if s.outcome in ("ran", "fallback")]

    @property
    def path(self) -> str:
        """Display only: ``"+"``-joined names of the steps that ran (fallbacks included)."""
        return "+".join(n for n in self.executed() if n not in ("read", "write"))

    def degraded_reasons(self) -> list[str]:
        """Why the pair is not ``ok``: every non-``ran`` record, then configured steps that never ran."""
        reasons = [
            f"{s.name} {s.outcome}" + (f": {s.detail}" if s.detail else "") for s in self.steps if s.outcome != "ran"
        ]
        recorded = {s.name for s in self.steps}
        reasons += [f"{name} did not run" for name in self.configured if name not in recorded]
        return reasons

    def iterations(self) -> int | None:
        """Optimiser iterations of the engine and cascade steps that ran (``None``: neither ran)."""
        counts = [s.info["iterations"] for s in self.steps if "iterations" in s.info and s.outcome != "failed"]
        return sum(counts) if counts else None

    def to_json(self) -> dict:
        """JSON-ready: ``{"configured": [...], "path": str, "steps": [{name, outcome, seconds, detail, info}]}``."""
        return {
            "configured": list(self.configured),
            "path": self.path,
            "steps": [dataclasses.asdict(s) for s in self.steps],
        }
