"""Routes of the engine: which similarity each level of an image pyramid optimises.

A route is one pyramid (grid factors and iterations, coarsest first, from :class:`EngineConfig`) and the
similarity of each of its levels:

* ``"lncc"`` -- LNCC on every level (same-contrast pairs).
* ``"lncc2"`` -- squared LNCC on every level (any contrast).
* ``"remap"`` -- squared LNCC on the levels before ``EngineConfig.remap_from``, then LNCC against the moving image
  remapped to the fixed contrast (:mod:`caio.engine.intensity_map`) on the field reached so far.
* ``"mind"`` -- the squared difference of MIND-SSC descriptors, with remapped LNCC levels where
  ``EngineConfig.mind_remapped_levels`` puts them and after the descriptor levels.

The similarities ``"cross"`` and ``"mind"`` of :func:`caio.engine.register` start with a *lead* level, the first
level of the ``"remap"`` route (squared LNCC at low resolution: a coarse field before the descriptors, which cost
seconds at 1 mm), and then choose their route (:func:`route_after_lead`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from caio.engine.settings import EngineConfig

LEAD_SIMILARITIES = ("cross", "mind")
"""Similarities whose registration starts with the ``"remap"`` route's first level."""


@dataclass(frozen=True)
class Route:
    """One pyramid and the similarity of each of its levels.

    Attributes:
        name: ``"lncc"``, ``"lncc2"``, ``"remap"`` or ``"mind"`` (module docstring).
        factors: grid-size divisors, coarsest first (1 = full resolution).
        iterations: configured iterations per level (upper bounds the schedule trims).
        remapped_levels: indices of the levels that register LNCC against the remapped moving image.
    """

    name: str
    factors: tuple[int, ...]
    iterations: tuple[int, ...]
    remapped_levels: frozenset[int] = frozenset()

    def remapped(self, index: int) -> bool:
        """Level ``index`` registers the remapped moving image with LNCC."""
        return index in self.remapped_levels

    def similarity(self, index: int) -> str:
        """What level ``index`` optimises: ``"lncc"`` (also every remapped level), ``"lncc2"`` or ``"mind"``."""
        if self.remapped(index):
            return "lncc"
        return "lncc2" if self.name == "remap" else self.name

    def remapped_from(self, index: int) -> bool:
        """Every level after ``index`` is remapped (the descriptors are no longer needed)."""
        return all(self.remapped(later) for later in range(index + 1, len(self.factors)))


def route_for(name: str, cfg: EngineConfig) -> Route:
    """The route ``name`` (``"lncc"``, ``"lncc2"``, ``"remap"`` or ``"mind"``) with ``cfg``'s pyramid."""
    factors, iterations = cfg.schedule(name)
    if name == "remap":
        remapped = frozenset(range(cfg.remap_from, len(factors)))
    elif name == "mind":
        remapped = frozenset(range(len(cfg.mind_factors), len(factors))) | frozenset(cfg.mind_remapped_levels)
    else:
        remapped = frozenset()
    return Route(name, factors, iterations, remapped)


def with_grid_work(route: Route, voxels: Sequence[int], cfg: EngineConfig) -> Route:
    """``route`` with the ``"lncc"`` route's finest level raised to ``cfg.finest_work / voxels[-1]`` iterations
    (at most ``cfg.finest_max_iterations``, never below the configured ones) on grids of at least
    ``cfg.finest_work_min_voxels``; other routes, smaller grids and levels configured with 0 iterations unchanged."""
    if route.name != "lncc" or cfg.finest_work is None or not voxels or route.iterations[-1] == 0:
        return route
    if int(voxels[-1]) < cfg.finest_work_min_voxels:
        return route
    wanted = min(int(cfg.finest_max_iterations), round(float(cfg.finest_work) / max(int(voxels[-1]), 1)))
    if wanted <= route.iterations[-1]:
        return route
    return dataclasses.replace(route, iterations=(*route.iterations[:-1], wanted))


def first_route(similarity: str, cfg: EngineConfig) -> Route:
    """The route a registration starts on: ``"remap"`` (whose first level is the lead) for ``"cross"`` and
    ``"mind"``, else the route of the similarity itself."""
    return route_for("remap" if similarity in LEAD_SIMILARITIES else similarity, cfg)


def route_after_lead(
    similarity: str, cfg: EngineConfig, explained: float | None, mind_fits: Callable[[], bool], lead: Route
) -> Route:
    """Where ``"cross"`` and ``"mind"`` go after the lead level.

    ``"cross"`` keeps remapping when the intensity map explains at least ``cfg.remap_min_explained`` of the fixed
    image's variance (``explained``); otherwise, and always for ``"mind"``, it switches to the ``"mind"`` route if
    the descriptors and a few iterations fit before the deadline (``mind_fits()``, asked only then: they cannot be
    interrupted), else it goes on along the lead's pyramid with squared LNCC.

    Returns:
        The route to run next: the ``"mind"`` route (from its first level) or ``lead``'s pyramid as ``"remap"``
        or ``"lncc2"`` (from its second level).
    """
    if similarity == "cross" and explained is not None and explained >= cfg.remap_min_explained:
        return lead
    if mind_fits():
        return route_for("mind", cfg)
    return Route("lncc2", lead.factors, lead.iterations)
