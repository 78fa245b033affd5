"""Test doubles of the modules the pipeline calls, and a tiny LUMIR-style data set.

The doubles return known displacements so that tests can check what the orchestration
does with them (which stage ran, what was written, what happens on errors); the real
modules are exercised by their own tests and by tests marked as needing them.
"""

from __future__ import annotations

import importlib
import json
import types
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

SHAPE = (32, 32, 32)


@dataclass
class Calls:
    """What the doubles saw."""

    gate: list = field(default_factory=list)
    training_free: list = field(default_factory=list)
    cascade: list = field(default_factory=list)
    mind: int = 0


def install(
    monkeypatch,
    shift: float = 0.5,
    cascade_add: float = 0.25,
    cross: bool = False,
    training_free_error: Exception | None = None,
    cascade_error: Exception | None = None,
    oom_unless_low_memory: bool = False,
    disp_value: float | None = None,
    keep: tuple[str, ...] = (),
) -> Calls:
    """Replace the gate/training-free/cascade/MIND functions the pipeline stages call by doubles,
    make the weights lookup find nothing and QC pictures fail.

    Parts named in ``keep`` (``"caio.weights"``, ``"caio.qc"``) are left alone: the real ones are used.
    """
    calls = Calls()

    gate = types.ModuleType("caio.contrast.gate")

    @dataclass(frozen=True)
    class GateConfig:
        threshold: float = 0.5

    @dataclass(frozen=True)
    class GateDecision:
        score: float
        cross_contrast: bool
        forced: bool

    def decide(fixed, moving, cfg, force=None):
        calls.gate.append(force)
        return GateDecision(0.25 if cross else 0.9, cross if force is None else force, force is not None)

    gate.GateConfig, gate.GateDecision, gate.decide = GateConfig, GateDecision, decide

    convex = types.ModuleType("caio.backbone.training_free")

    @dataclass(frozen=True)
    class TrainingFreeConfig:
        low_memory: bool = False

    def register_training_free(fixed, moving, cfg, device, deadline):
        calls.training_free.append(cfg)
        if training_free_error is not None:
            raise training_free_error
        if oom_unless_low_memory and not cfg.low_memory:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        value = shift if disp_value is None else disp_value
        return torch.full((1, 3, *fixed.shape[2:]), value, device=fixed.device)

    convex.TrainingFreeConfig, convex.register_training_free = TrainingFreeConfig, register_training_free

    cascade = types.ModuleType("caio.refine.cascade")

    @dataclass(frozen=True)
    class CascadeConfig:
        steps: int = 50

        @classmethod
        def for_cpu(cls):
            return cls()

    @dataclass(frozen=True)
    class RefineReport:
        steps: int

    def refine(fixed, moving, init_disp, cfg, fixed_sim=None, moving_sim=None, init_state=None, deadline=None, seed=0):
        calls.cascade.append(
            {"steps": cfg.steps, "fixed_sim": fixed_sim, "seed": seed, "deadline": deadline, "init_state": init_state}
        )
        if init_state is not None and Path(init_state).read_bytes() == b"broken":
            raise RuntimeError(f"{init_state}: not a cascade checkpoint")
        if cascade_error is not None:
            raise cascade_error
        return init_disp + cascade_add, RefineReport(steps=cfg.steps * 3)

    cascade.CascadeConfig, cascade.RefineReport, cascade.refine = CascadeConfig, RefineReport, refine

    features = types.ModuleType("caio.contrast.mind")

    def mind_ssc(image):
        calls.mind += 1
        return image.repeat(1, 12, 1, 1, 1)

    features.mind_ssc = mind_ssc

    from caio.pipeline import models, stages

    run = importlib.import_module("caio.pipeline.run")  # the attribute caio.pipeline.run is the function

    for name, value in (
        ("GateConfig", GateConfig),
        ("decide", decide),
        ("TrainingFreeConfig", TrainingFreeConfig),
        ("register_training_free", register_training_free),
        ("CascadeConfig", CascadeConfig),
        ("refine", refine),
        ("mind_ssc", features.mind_ssc),
    ):
        monkeypatch.setattr(stages, name, value)
    if "caio.weights" not in keep:
        monkeypatch.setattr(models, "resolve", lambda role, weights_dir=None: None)
    if "caio.qc" not in keep:

        def no_qc(*args, **kwargs):
            raise ImportError("caio.qc replaced by a test double")

        monkeypatch.setattr(run, "write_qc", no_qc)
    return calls


def write_volume(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def make_dataset(root: Path, pairs: list[tuple[str, str]], shape=SHAPE, seed: int = 0) -> Path:
    """Write ``imagesVal/LUMIRMRI_<id>.nii.gz`` for every id in ``pairs`` and a dataset JSON.

    ``pairs`` holds ``("SSSS_MMMM", "SSSS_MMMM")`` (fixed, moving). Returns the JSON path.
    """
    rng = np.random.default_rng(seed)
    for name in {n for pair in pairs for n in pair}:
        write_volume(root / "imagesVal" / f"LUMIRMRI_{name}.nii.gz", (rng.random(shape) * 255).astype(np.float32))
    entries = [
        {"fixed": f"./imagesVal/LUMIRMRI_{f}.nii.gz", "moving": f"./imagesVal/LUMIRMRI_{m}.nii.gz"} for f, m in pairs
    ]
    json_path = root / "LUMIR25_dataset.json"
    json_path.write_text(json.dumps({"name": "LUMIR", "validation": entries}))
    return json_path
