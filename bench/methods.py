"""The methods of ``python -m bench.registration``, run inside its worker subprocess: each ``run_*`` registers one
case folder (:mod:`bench.sets`) and returns ``(seconds, displacement)``, the displacement ``(3, D0, D1, D2)`` in
voxels on the fixed grid (``warped(x) = moving(x + u(x))``); :func:`score` applies the LUMIR evaluator to it and
measures the TRE proxy (label-centroid distance, mm) on the same warped label map. FireANTs' registration
(:func:`fireants_register`) is shared with :mod:`bench.unaligned_methods`.
"""

from __future__ import annotations

import importlib
import json
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bench.common import (
    REPO,
    common_labels,
    evaluator_scores,
    mean_dice,
    mean_tre_mm,
    predict_command,
    save_nifti,
    write_dataset,
)

# ------------------------------------------------------------------ methods (run inside a worker)


def _coordinate_images(tmp: Path, shape, affine) -> list[Path]:
    """Files holding ``index along axis c + 1`` (so that a tool's out-of-volume fill value 0 maps outside)."""
    paths = []
    for c in range(3):
        idx = np.broadcast_to(
            np.arange(1, shape[c] + 1, dtype=np.float32).reshape([-1 if a == c else 1 for a in range(3)]), shape
        )
        paths.append(tmp / f"coord{c}.nii.gz")
        save_nifti(paths[-1], np.ascontiguousarray(idx), affine)
    return paths


def _disp_from_coords(warped: list[np.ndarray]) -> np.ndarray:
    from caio.spatial import identity_grid_np

    return np.stack(warped).astype(np.float64) - 1.0 - identity_grid_np(warped[0].shape)


def load_pair_tensors(case: Path, threads: int):
    import torch

    torch.set_num_threads(threads)
    f = torch.from_numpy(nib.load(str(case / "fixed.nii.gz")).get_fdata(dtype=np.float32))[None, None]
    m = torch.from_numpy(nib.load(str(case / "moving.nii.gz")).get_fdata(dtype=np.float32))[None, None]
    return f, m


def run_caio_engine(case: Path, cross: bool, threads: int, extra: dict) -> tuple[float, np.ndarray]:
    """:func:`caio.engine.register` with its defaults (similarity "auto"), CPU; time = the call only."""
    from caio.engine import register

    f, m = load_pair_tensors(case, threads)
    t0 = time.perf_counter()
    disp, trace = register(f, m, similarity="auto")
    elapsed = time.perf_counter() - t0
    extra["trace"] = trace.to_dict()
    return elapsed, disp[0].detach().double().numpy()


def run_caio_pipeline(case: Path, cross: bool, threads: int, extra: dict) -> tuple[float, np.ndarray]:
    """``python predict.py`` on a one-pair LUMIR-style folder of links; time = subprocess wall clock (I/O included)."""
    from caio.io import read_displacement

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "in" / "imagesVal").mkdir(parents=True)
        for sid, role in (("0001", "fixed"), ("0002", "moving")):
            (tmp / "in" / "imagesVal" / f"LUMIRMRI_{sid}_0000.nii.gz").symlink_to((case / f"{role}.nii.gz").resolve())
        pair = {"fixed": "./imagesVal/LUMIRMRI_0001_0000.nii.gz", "moving": "./imagesVal/LUMIRMRI_0002_0000.nii.gz"}
        write_dataset(tmp / "pairs.json", [pair])
        shape = nib.load(str(case / "fixed.nii.gz")).shape
        any_shape = [] if tuple(shape) == (160, 224, 192) else ["--shape", "any"]
        cmd = predict_command(tmp / "pairs.json", tmp / "in", tmp / "out", tmp / "report.json", *any_shape)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        elapsed = time.perf_counter() - t0
        out_file = tmp / "out" / "disp_0001_0002.nii.gz"
        if proc.returncode != 0:  # predict.py exits 1 when a pair is degraded but still writes its field: score it
            message = f"predict.py exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}"
            if not out_file.exists():
                raise RuntimeError(message)
            extra["predict_warning"] = message
        if (tmp / "report.json").exists():
            extra["report"] = json.loads((tmp / "report.json").read_text())
        extra["rss_children_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        return elapsed, read_displacement(out_file, expected_shape=shape)


def run_caio(case: Path, cross: bool, threads: int, cascade: bool) -> tuple[float, np.ndarray]:
    import torch

    from caio.backbone.training_free import TrainingFreeConfig, register_training_free

    f, m = load_pair_tensors(case, threads)
    t0 = time.perf_counter()
    disp = register_training_free(f, m, TrainingFreeConfig())
    if cascade:
        from caio.pipeline.stages import cascade_config_for
        from caio.refine.cascade import refine

        fsim = msim = None
        if cross:
            from caio.similarity.mind import mind_ssc

            fsim, msim = mind_ssc(f), mind_ssc(m)
        disp, _ = refine(f, m, disp, cascade_config_for(torch.device("cpu")), fixed_sim=fsim, moving_sim=msim)
    return time.perf_counter() - t0, disp[0].detach().double().numpy()


def run_greedy(case: Path, cross: bool, threads: int) -> tuple[float, np.ndarray]:
    from picsl_greedy import Greedy3D

    metric = "NMI" if cross else "NCC 2x2x2"
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        g = Greedy3D()
        t0 = time.perf_counter()
        g.execute(
            f"-d 3 -threads {threads} -i {case / 'fixed.nii.gz'} {case / 'moving.nii.gz'} -n 100x50x20 "
            f"-m {metric} -s 1.5vox 0.5vox -o {tmp / 'warp.nii.gz'}"
        )
        elapsed = time.perf_counter() - t0
        img = nib.load(str(case / "fixed.nii.gz"))
        coords = _coordinate_images(tmp, img.shape, img.affine)
        outs = [tmp / f"w{c}.nii.gz" for c in range(3)]
        rm = " ".join(f"-rm {a} {b}" for a, b in zip(coords, outs))
        Greedy3D().execute(f"-d 3 -rf {case / 'fixed.nii.gz'} -ri LINEAR {rm} -r {tmp / 'warp.nii.gz'}")
        return elapsed, _disp_from_coords([nib.load(str(o)).get_fdata() for o in outs])


def run_ants(case: Path, cross: bool, threads: int) -> tuple[float, np.ndarray]:
    import ants

    f = ants.image_read(str(case / "fixed.nii.gz"))
    m = ants.image_read(str(case / "moving.nii.gz"))
    t0 = time.perf_counter()
    r = ants.registration(
        f,
        m,
        type_of_transform="SyNOnly",
        syn_metric="mattes" if cross else "CC",
        syn_sampling=32 if cross else 2,
        reg_iterations=(40, 20, 0),
    )
    elapsed = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as t:
        img = nib.load(str(case / "fixed.nii.gz"))
        warped = [
            ants.apply_transforms(f, ants.image_read(str(p)), r["fwdtransforms"], interpolator="linear").numpy()
            for p in _coordinate_images(Path(t), img.shape, img.affine)
        ]
    return elapsed, _disp_from_coords(warped)


def run_convexadam(case: Path, cross: bool, threads: int) -> tuple[float, np.ndarray]:
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    torch.set_num_threads(threads)
    f = nib.load(str(case / "fixed.nii.gz")).get_fdata(dtype=np.float32)
    m = nib.load(str(case / "moving.nii.gz")).get_fdata(dtype=np.float32)
    t0 = time.perf_counter()
    disp = convex_adam_pt(f, m, device=torch.device("cpu"), dtype=torch.float32)
    elapsed = time.perf_counter() - t0
    return elapsed, np.moveaxis(np.asarray(disp, np.float64), -1, 0)


def run_elastix(case: Path, cross: bool, threads: int) -> tuple[float, np.ndarray]:
    import itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    po = itk.ParameterObject.New()
    pm = po.GetDefaultParameterMap("bspline", 3)
    pm["FinalGridSpacingInPhysicalUnits"] = ["8.0"]
    po.AddParameterMap(pm)
    f = itk.imread(str(case / "fixed.nii.gz"), itk.F)
    m = itk.imread(str(case / "moving.nii.gz"), itk.F)
    t0 = time.perf_counter()
    _, tp = itk.elastix_registration_method(f, m, parameter_object=po, log_to_console=False)
    elapsed = time.perf_counter() - t0
    tp.SetParameter("FinalBSplineInterpolationOrder", "1")
    with tempfile.TemporaryDirectory() as t:
        img = nib.load(str(case / "fixed.nii.gz"))
        warped = []
        for p in _coordinate_images(Path(t), img.shape, img.affine):
            w = itk.transformix_filter(itk.imread(str(p), itk.F), tp)
            itk.imwrite(w, str(Path(t) / "w.nii.gz"))
            warped.append(nib.load(str(Path(t) / "w.nii.gz")).get_fdata())
    return elapsed, _disp_from_coords(warped)


FIREANTS_INSTALL = "bench/.venv/bin/pip install --no-deps fireants==1.5.0"
"""FireANTs without its dependencies (they would replace the CPU torch); the ones it imports are already there."""


@dataclass(frozen=True)
class FireantsRun:
    """A FireANTs registration: its images (``BatchedImages`` as FireANTs' loader reads them, headers included),
    the ``AffineRegistration`` (moments-initialised) and the ``GreedyRegistration`` started from it, and the
    seconds of the moments + affine stages (``affine_seconds``) and of the three stages (``seconds``)."""

    fixed: Any
    moving: Any
    affine: Any
    deformable: Any
    affine_seconds: float
    seconds: float


def fireants_image(path: Path):
    """A NIfTI file as FireANTs reads it (``Image.load_file``: SimpleITK, world headers kept), batched, on the CPU."""
    from fireants.io.image import BatchedImages, Image

    return BatchedImages([Image.load_file(str(path), device="cpu")])


def fireants_modules(import_module: Callable[[str], Any] = importlib.import_module) -> tuple[Any, Any, Any]:
    """FireANTs' ``registration.moments``, ``.affine`` and ``.greedy`` modules, imported by ``import_module``; a
    ``RuntimeError`` saying how to install it if it is not installed."""
    try:
        return tuple(import_module(f"fireants.registration.{name}") for name in ("moments", "affine", "greedy"))
    except ImportError as err:
        raise RuntimeError(f"fireants not installed ({err}): {FIREANTS_INSTALL}") from None


def fireants_register(fixed_path: Path, moving_path: Path, cross: bool, threads: int) -> FireantsRun:
    """FireANTs 1.5.0 on the CPU as its brain-MRI quickstart registers, in world coordinates: moments (centre of
    mass, scale 4), affine (scales 4/2/1, 200/100/50 Adam steps, lr 3e-3), then greedy compositive deformable
    (scales 4/2/1, 200/100/25 Adam steps, lr 0.5, smoothing sigmas grad 1 / warp 0.5), local CC of size 5 (global
    MI for cross-contrast); ``threads`` torch threads. A ``RuntimeError`` saying how to install it if it is not."""
    import torch

    moments_module, affine_module, greedy_module = fireants_modules()
    MomentsRegistration, AffineRegistration = moments_module.MomentsRegistration, affine_module.AffineRegistration
    GreedyRegistration = greedy_module.GreedyRegistration
    torch.set_num_threads(threads)
    fixed, moving = fireants_image(fixed_path), fireants_image(moving_path)
    loss = {"loss_type": "mi"} if cross else {"loss_type": "cc", "cc_kernel_size": 5}
    t0 = time.perf_counter()
    moments = MomentsRegistration(4, fixed, moving, moments=1, progress_bar=False, **loss)
    moments.optimize()
    affine = AffineRegistration(
        [4, 2, 1],
        [200, 100, 50],
        fixed,
        moving,
        optimizer="Adam",
        optimizer_lr=3e-3,
        init_rigid=moments.get_affine_init(),
        progress_bar=False,
        **loss,
    )
    affine.optimize()
    affine_seconds = time.perf_counter() - t0
    deformable = GreedyRegistration(
        scales=[4, 2, 1],
        iterations=[200, 100, 25],
        fixed_images=fixed,
        moving_images=moving,
        deformation_type="compositive",
        smooth_grad_sigma=1.0,
        smooth_warp_sigma=0.5,
        optimizer="adam",
        optimizer_lr=0.5,
        init_affine=affine.get_affine_matrix().detach(),
        progress_bar=False,
        **loss,
    )
    deformable.optimize()
    return FireantsRun(fixed, moving, affine, deformable, affine_seconds, time.perf_counter() - t0)


def run_fireants(case: Path, cross: bool, threads: int) -> tuple[float, np.ndarray]:
    """:func:`fireants_register` (time = its three stages); the transform is turned into a displacement by warping
    coordinate images with it (trilinear, as the other peers)."""
    import torch

    run = fireants_register(case / "fixed.nii.gz", case / "moving.nii.gz", cross, threads)
    img = nib.load(str(case / "fixed.nii.gz"))
    with tempfile.TemporaryDirectory() as t, torch.no_grad():
        warped = [
            run.deformable.evaluate(run.fixed, fireants_image(p))[0, 0].double().numpy().transpose(2, 1, 0)
            for p in _coordinate_images(Path(t), img.shape, img.affine)
        ]  # SimpleITK axis order reversed
    return run.seconds, _disp_from_coords(warped)


def score(case: Path, disp: np.ndarray) -> dict:
    """LUMIR-evaluator metrics of a ``(3, D0, D1, D2)`` voxel displacement on a case (``dice``, ``hd95``, ``ndv``),
    the TRE proxy ``tre`` (mm, through the fixed label map's affine: :func:`bench.common.mean_tre_mm` of the labels
    warped as for Dice), and the zero-field ``dice_affine`` / ``tre_affine`` (the moving labels as given)."""
    meta = json.loads((case / "meta.json").read_text())
    fixed_seg = nib.load(str(case / "fixed_seg.nii.gz"))
    fseg = np.asarray(fixed_seg.dataobj).astype(np.int64)
    mseg = np.asarray(nib.load(str(case / "moving_seg.nii.gz")).dataobj).astype(np.int64)
    labels = meta.get("labels") or common_labels(fseg, mseg)
    mask_image = nib.load(str(case / "fixed.nii.gz")).get_fdata() if meta["mask"] == "fixed" else fseg
    metrics = evaluator_scores(fseg, mseg, disp, mask_image, labels, affine=fixed_seg.affine)
    return {
        "case": case.name,
        "set": meta["set"],
        **metrics,
        "dice_affine": mean_dice(fseg, mseg, labels),
        "tre_affine": mean_tre_mm(fseg, mseg, labels, fixed_seg.affine),
        "n_labels": len(labels),
    }


def is_cross(case: Path) -> bool:
    return json.loads((case / "meta.json").read_text())["contrast"] == "cross"
