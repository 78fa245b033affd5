"""The networks of a run, loaded once: Brain-ID, the VFA backbones and the cascade's initial weights.

Weights are looked up through :mod:`caio.weights.manifest`; absent weights leave the model
``None`` and the pipeline uses the next option. Only the networks the device's path can use are
loaded (:func:`wanted_models`): on the CPU, by default none (Brain-ID and VFA do not fit the
minute there, see :data:`caio.pipeline.config.STEP_SECONDS_PER_VOXEL`). Loading, including the
engine's one-off kernel load (:func:`caio.engine.warm_up`), happens before the first pair's clock
starts; :attr:`Models.load_seconds` says how long it took.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from caio.backbone.vfa import load_vfa
from caio.contrast.brainid import load_brainid
from caio.device import resolve_device
from caio.engine import warm_up
from caio.errors import CaioInputError
from caio.pipeline.config import PipelineConfig
from caio.weights.manifest import WeightEntry, cascade_init_path, resolve

log = logging.getLogger("caio.pipeline")

LOADERS = {"brainid": load_brainid, "vfa_mono": load_vfa, "vfa_multi": load_vfa}
"""Model attribute -> ``loader(path, device)``."""


@dataclass
class Models:
    """Networks loaded once per run. ``None`` where weights (or the module) are absent."""

    device: torch.device
    brainid: Any = None
    vfa_mono: Any = None
    vfa_multi: Any = None
    cascade_init: Path | None = None
    load_seconds: float = 0.0
    _moved: dict = field(default_factory=dict, repr=False)

    def on(self, device: torch.device) -> Models:
        """The same models on ``device`` (copies are cached, the originals are untouched)."""
        if device == self.device:
            return self
        if device not in self._moved:
            moved = {
                k: (copy.deepcopy(v).to(device) if isinstance(v, torch.nn.Module) else v)
                for k, v in (("brainid", self.brainid), ("vfa_mono", self.vfa_mono), ("vfa_multi", self.vfa_multi))
            }
            self._moved[device] = Models(
                device=device, cascade_init=self.cascade_init, load_seconds=self.load_seconds, **moved
            )
        return self._moved[device]


def wanted_models(cfg: PipelineConfig, device: torch.device) -> list[tuple[str, str]]:
    """(weights role, :class:`Models` attribute) the configured path can use on ``device``.

    GPU: Brain-ID (unless ``contrast="none"``) and both VFAs unless ``mode="engine"``. CPU: the
    VFAs only when ``mode="vfa"`` forces them, Brain-ID only when ``contrast="brainid"`` does
    (218 s per volume there).
    """
    vfa = [("backbone_mono", "vfa_mono"), ("backbone_multi", "vfa_multi")]
    brainid = [("contrast_adapter", "brainid")]
    if device.type == "cuda":
        return (brainid if cfg.contrast != "none" else []) + (vfa if cfg.mode != "engine" else [])
    return (brainid if cfg.contrast == "brainid" else []) + (vfa if cfg.mode == "vfa" else [])


def load_models(cfg: PipelineConfig, device: torch.device | None = None) -> Models:
    """Load every network the path can use whose weights are present, once per run, and warm up the engine.

    Raises:
        CaioInputError: ``mode="vfa"`` and the VFA weights are missing or unusable.
    """
    start = time.monotonic()
    device = device or resolve_device(cfg.device)
    models = Models(device=device)
    for role, attr in wanted_models(cfg, device):
        path = resolve(role, cfg.weights_dir)
        if path is None:
            log.info("weights for %s: absent", role)
            continue
        try:
            model = LOADERS[attr](path, device)
        except Exception as err:  # a broken weights file must not stop the other pairs
            if cfg.mode == "vfa" and attr.startswith("vfa"):
                raise CaioInputError(f"{path}: cannot load {role} ({err})") from None
            log.error("weights for %s at %s unusable, ignored: %s", role, path, err)
            continue
        setattr(models, attr, model)
        log.info("weights for %s: %s", role, path)
    if cfg.refine == "cascade" or (device.type == "cuda" and cfg.refine == "auto"):
        models.cascade_init = cascade_init_path(cfg.weights_dir)
        if models.cascade_init is not None:
            log.info("cascade initial weights: %s", models.cascade_init)
    if cfg.mode == "vfa" and models.vfa_mono is None and models.vfa_multi is None:
        raise CaioInputError(
            "mode 'vfa' needs VFA weights (backbone_mono or backbone_multi); none found"
            f" in {cfg.weights_dir or 'the default weights folder'}"
        )
    warm = warm_up()  # Numba kernels: compiled once per machine, loaded once per process
    models.load_seconds = time.monotonic() - start
    log.info("models loaded in %.1f s (engine kernels %.1f s)", models.load_seconds, warm)
    return models


ARCHITECTURE_LOADERS: dict[str, Callable[[Path, str], object]] = {"vfa": load_vfa, "brainid": load_brainid}
"""A manifest entry's ``architecture`` -> ``loader(path, device)``, used by :func:`check_loadable`."""


def check_loadable(entry: WeightEntry, path: Path) -> str | None:
    """Load ``path`` with its architecture's loader on the CPU (strict keys and shapes).

    Returns:
        None when it loads (or no loader is known/importable), else the one-line reason.
    """
    if entry.architecture not in ARCHITECTURE_LOADERS:
        return None
    load = ARCHITECTURE_LOADERS[entry.architecture]
    try:
        load(path, "cpu")
    except Exception as err:  # any failure makes the file unusable for the pipeline
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None
