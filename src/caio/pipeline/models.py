"""The networks of a run, loaded once: Brain-ID, the VFA backbones and the cascade's initial weights.

Weights are looked up through :mod:`caio.weights.manifest`; absent weights leave the model
``None`` and the pipeline uses the next option.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from caio.backbone.vfa import load_vfa
from caio.contrast.brainid import load_brainid
from caio.device import resolve_device
from caio.errors import CaioInputError
from caio.pipeline.config import PipelineConfig
from caio.weights.manifest import cascade_init_path, resolve

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
            self._moved[device] = Models(device=device, cascade_init=self.cascade_init, **moved)
        return self._moved[device]


def load_models(cfg: PipelineConfig, device: torch.device | None = None) -> Models:
    """Load every network whose weights are present, once per run.

    Raises:
        CaioInputError: ``mode="vfa"`` and the VFA weights are missing or unusable.
    """
    device = device or resolve_device(cfg.device)
    models = Models(device=device)
    wanted = [("contrast_adapter", "brainid")]
    if cfg.mode != "training-free":
        wanted += [("backbone_mono", "vfa_mono"), ("backbone_multi", "vfa_multi")]
    for role, attr in wanted:
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
    models.cascade_init = cascade_init_path(cfg.weights_dir)
    if models.cascade_init is not None:
        log.info("cascade initial weights: %s", models.cascade_init)
    if cfg.mode == "vfa" and models.vfa_mono is None and models.vfa_multi is None:
        raise CaioInputError(
            "mode 'vfa' needs VFA weights (backbone_mono or backbone_multi); none found"
            f" in {cfg.weights_dir or 'the default weights folder'}"
        )
    return models
