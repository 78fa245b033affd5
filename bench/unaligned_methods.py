"""The methods of :mod:`bench.unaligned` and what is measured on their outputs.

Each ``run_*`` registers one case (:mod:`bench.unaligned_cases`) with its outputs kept in a work folder, and
returns a row: ``dice_affine`` (labels through the affine alone), ``dice`` and ``tre`` (affine + deformable;
``tre`` = the TRE proxy, mm: label-centroid distance, :func:`bench.common.mean_tre_mm`), ``seconds``
(the registration calls' wall clock, reading and writing included), ``ndv`` (% of the fixed brain, fixed labels
> 0, where the deformable part folds: :func:`caio.metrics.ndv.ndv_percent` of the tool's displacement field in
fixed voxels; the affine part of every tool has a positive determinant), ``corner_mm`` (mean distance at the 8
corners of the moving subject's brain box between the recovered and the known world transform, on the case's
known-answer pair, see :mod:`bench.unaligned_cases`).

* ``caio``: ``caio register F M -o D --warped W --itk-affine A.mat --itk-warp IW --inverse-warp INV`` (its
  defaults, 2 threads, CPU), then ``caio warp --nearest`` of the labels (``dice``). ``dice_affine``: the labels
  through ``A.mat`` alone (caio has no affine-only run: the affine's world transform is read back from the
  ITK file and applied as ``caio warp`` applies it, nearest neighbour). Export checks: the labels through
  ``[IW, A.mat]`` by ``ants.apply_transforms`` and by a SimpleITK composite transform (nearest neighbour),
  their Dice minus caio's (``d_ants``, ``d_sitk``); the moving image through them (linear) against caio's
  ``--warped`` (``img_ants``, ``img_sitk``: mean absolute difference in the fixed brain, % of caio's mean
  there). Inverse: ``inv_vox`` = mean over the fixed brain of ``|phi^-1(phi(x)) - x|`` (fixed voxels) with
  ``phi`` from ``D`` and ``phi^-1`` from ``INV``; ``inv_mm`` = what ``caio register`` printed. ``corner_mm``:
  :func:`caio.transforms.register_affine` as ``caio register`` calls it (``model="affine"``, ``lncc2``).
* ``greedy``: ``-a -dof 12 -ia-image-centers -n 100x50x10``, then ``-it affine.mat -n 100x50x20 -s 1.5vox
  0.5vox`` (NCC 2x2x2; NMI for cross-contrast sets); labels through ``warp + affine`` (``dice``) and ``affine``
  alone (``dice_affine``) by nearest neighbour as ``caio warp`` (Greedy's own ``-ri LABEL 0.2vox`` reslicing,
  a smoothing of each label, scored about 0.015 higher for caio and Greedy alike on an IXI pair, and takes
  minutes for 148 labels). ``corner_mm``: the same affine call on the known-answer pair, its RAS matrix (fixed
  -> moving world, as Greedy writes it) against the truth.
* ``ants``: ``ants.registration(type_of_transform="SyN")`` (its defaults: affine stage then SyN, Mattes),
  labels by ``ants.apply_transforms`` (nearest neighbour) through both transforms and the affine alone.
* ``fireants`` (only when named: minutes per pair on 2 cores): FireANTs 1.5.0 on the CPU as its brain-MRI quickstart,
  :func:`bench.methods.fireants_register` (the settings of the aligned bench: moments, affine 4/2/1 x 200/100/50,
  greedy compositive 4/2/1 x 200/100/25, local CC 5; global MI for cross-contrast sets) on the case files as
  FireANTs' own loader reads them (headers: the grids are its business); labels at the moving voxel coordinates
  of FireANTs' ``get_warped_coordinates`` of the affine stage (``dice_affine``) and of the greedy stage (``dice``)
  by nearest neighbour as ``caio warp`` (kept as ``warped_seg_affine.nii.gz`` / ``warped_seg.nii.gz``, and the
  affine as Greedy writes one, ``affine.mat``: RAS, fixed -> moving world);
  ``seconds`` = the three stages, ``affine_seconds`` = moments + affine (images read before); ``ndv`` of its warp
  with its affine factored out (:func:`fireants_field_in_voxels`); no ``corner_mm``. Not installed: an error row
  saying how to install it (``pip install --no-deps fireants==1.5.0``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.common import common_labels, mean_dice, mean_tre_mm, save_nifti, thread_env
from bench.methods import FireantsRun, fireants_register
from bench.unaligned_cases import read_meta


@dataclass(frozen=True)
class Pair:
    """A case's label maps and grids: ``fixed_seg``/``moving_seg`` int64 arrays, ``brain`` = ``fixed_seg > 0``."""

    case: Path
    meta: dict
    fixed_affine: np.ndarray
    moving_affine: np.ndarray
    fixed_seg: np.ndarray
    moving_seg: np.ndarray
    labels: list[int]

    @property
    def brain(self) -> np.ndarray:
        return self.fixed_seg > 0

    def dice(self, warped: np.ndarray) -> float:
        return mean_dice(self.fixed_seg, np.asarray(warped).astype(np.int64), self.labels)

    def scores(self, warped: np.ndarray) -> dict:
        """``dice`` and ``tre`` (the TRE proxy, mm: :func:`bench.common.mean_tre_mm`) of warped moving labels."""
        warped = np.asarray(warped).astype(np.int64)
        return {"dice": self.dice(warped), "tre": mean_tre_mm(self.fixed_seg, warped, self.labels, self.fixed_affine)}


def load_pair(case: Path) -> Pair:
    f, m = nib.load(str(case / "fixed_seg.nii.gz")), nib.load(str(case / "moving_seg.nii.gz"))
    fseg, mseg = np.asarray(f.dataobj).astype(np.int64), np.asarray(m.dataobj).astype(np.int64)
    return Pair(case, read_meta(case), f.affine, m.affine, fseg, mseg, common_labels(fseg, mseg))


# ------------------------------------------------------------------ shared measurements


def run_command(cmd: list[str], threads: int, accepted: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """Run ``cmd`` with ``threads`` threads; a ``RuntimeError`` with its last output line unless its exit status
    is one of ``accepted``."""
    done = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True)
    if done.returncode not in accepted:
        raise RuntimeError(f"{' '.join(cmd[:4])}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return done


def labels_through(pair: Pair, transform: np.ndarray, disp=None) -> np.ndarray:
    """The moving labels on the fixed grid through world ``transform`` (fixed -> moving) and an optional
    ``[1, 3, D0, D1, D2]`` field in fixed voxels (nearest neighbour, outside -> 0, as ``caio warp --nearest``)."""
    from caio.transforms import moving_voxel_coordinates_through

    shape = pair.fixed_seg.shape
    coords = moving_voxel_coordinates_through(shape, pair.fixed_affine, pair.moving_affine, transform, disp)
    return labels_at(pair, coords[0].numpy())


def labels_at(pair: Pair, coords: np.ndarray) -> np.ndarray:
    """The moving labels at ``(3, D0, D1, D2)`` moving voxel coordinates given for every fixed voxel (nearest
    neighbour, outside -> 0: :func:`caio.spatial.warp_labels_nearest`, as ``caio warp --nearest``)."""
    from caio import spatial

    return spatial.warp_labels_nearest(pair.moving_seg, coords - spatial.identity_grid_np(pair.fixed_seg.shape))


def itk_field_in_voxels(path: Path, affine: np.ndarray) -> np.ndarray:
    """An ITK displacement field file (LPS mm vectors, ``(X, Y, Z, 1, 3)`` or ``(X, Y, Z, 3)``) as ``(3, X, Y, Z)``
    float64 voxels of the grid of ``affine`` (the field's own grid, the fixed one)."""
    from caio.io.itk import itk_displacement_to_voxels

    data = np.asarray(nib.load(str(path)).get_fdata(), np.float64).reshape(*nib.load(str(path)).shape[:3], 3)
    return itk_displacement_to_voxels(np.moveaxis(data, -1, 0), affine)


def ndv_of_itk_field(pair: Pair, path: Path) -> float:
    """NDV (%) inside the fixed brain of an ITK displacement field on the fixed grid."""
    from caio.metrics.ndv import ndv_percent

    return ndv_percent(itk_field_in_voxels(path, pair.fixed_affine), pair.brain)


def brain_box(labels_path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """``(shape, affine)`` of the bounding box of ``labels > 0`` (a sub-grid of the labels' grid)."""
    img = nib.load(str(labels_path))
    index = np.argwhere(np.asarray(img.dataobj) > 0)
    low, high = index.min(axis=0), index.max(axis=0)
    affine = np.asarray(img.affine, np.float64).copy()
    affine[:3, 3] = affine[:3, :3] @ low + affine[:3, 3]
    return tuple(int(n) for n in high - low + 1), affine


def corner_error(meta: dict, estimate: np.ndarray) -> float:
    """Mean corner error (mm) of ``estimate`` against the case's known transform ``M`` on the moving subject's
    brain box (the known-answer pair's fixed image is that subject's T1 on its original grid)."""
    from caio.transforms import corner_error_mm

    shape, affine = brain_box(Path(meta["source_labels"]))
    return corner_error_mm(estimate, np.asarray(meta["transform"]), shape, affine)


def read_greedy_matrix(path: Path) -> np.ndarray:
    """Greedy's affine file: a 4x4 RAS matrix, fixed world -> moving world."""
    return np.loadtxt(str(path)).reshape(4, 4)


def write_greedy_matrix(path: Path, transform: np.ndarray) -> Path:
    np.savetxt(str(path), np.asarray(transform, np.float64), fmt="%.10f")
    return path


# ------------------------------------------------------------------ caio


def run_caio(pair: Pair, work: Path, threads: int) -> dict:
    """``caio register`` with every output, ``caio warp --nearest``, and the checks of the module docstring."""
    case, caio = pair.case, [sys.executable, "-m", "caio"]
    outputs = {k: work / f"{k}.nii.gz" for k in ("disp", "warped", "itk_warp", "inverse")}
    affine_file = work / "affine.mat"
    register = ["register", str(case / "fixed.nii.gz"), str(case / "moving.nii.gz"), "-o", str(outputs["disp"])]
    register += ["--warped", str(outputs["warped"]), "--itk-affine", str(affine_file)]
    register += ["--itk-warp", str(outputs["itk_warp"]), "--inverse-warp", str(outputs["inverse"])]
    start = time.perf_counter()
    # exit status 1: outputs written, but the engine's safeguard flagged the pair (reasons on stderr): scored
    done = run_command([*caio, *register, "--device", "cpu", "--threads", str(threads)], threads, accepted=(0, 1))
    seconds = time.perf_counter() - start
    printed = done.stdout
    if done.returncode == 1 and not outputs["disp"].is_file():
        raise RuntimeError(f"caio register exit 1 without outputs: {done.stderr.strip()[-200:]}")
    warp = ["warp", "--disp", str(outputs["disp"]), "--moving", str(case / "moving_seg.nii.gz")]
    run_command([*caio, *warp, "-o", str(work / "warped_seg.nii.gz"), "--nearest"], threads)
    from caio.io.itk import read_itk_affine

    transform = read_itk_affine(affine_file)
    scores = pair.scores(np.asarray(nib.load(str(work / "warped_seg.nii.gz")).dataobj))
    dice = scores["dice"]
    match = re.search(r"inverse_error_mm=([0-9.]+)", printed)
    affine_seconds = re.search(r"it, ([0-9.]+)s", printed)
    row = {
        "dice_affine": pair.dice(labels_through(pair, transform)),
        **scores,
        "seconds": seconds,
        "affine_seconds": float(affine_seconds.group(1)) if affine_seconds else None,
        "ndv": ndv_of_itk_field(pair, outputs["itk_warp"]),
        "corner_mm": corner_error(pair.meta, caio_known_pair_affine(pair)),
        "inv_vox": inverse_error_voxels(pair, outputs["disp"], outputs["inverse"]),
        "inv_mm": float(match.group(1)) if match else None,
        "printed": printed.strip().split(" -> ")[0],
        "flagged": done.stderr.strip()[-300:] if done.returncode == 1 else None,
    }
    return {**row, **export_checks(pair, work, dice, affine_file, outputs["itk_warp"], outputs["warped"])}


def caio_known_pair_affine(pair: Pair) -> np.ndarray:
    """:func:`caio.transforms.register_affine` on the known-answer pair (the moving subject's T1 on its original
    grid <- the case's moving image), as ``caio register`` calls it (``--affine affine``, similarity auto)."""
    from caio.io import image_data, load_image
    from caio.transforms import register_affine

    source, moving = Path(pair.meta["source_image"]), pair.case / "moving.nii.gz"
    f_img, m_img = load_image(source), load_image(moving)
    transform, _ = register_affine(
        image_data(f_img, source), f_img.affine, image_data(m_img, moving), m_img.affine,
        model="affine", similarity="lncc2",
    )  # fmt: skip
    return transform


def inverse_error_voxels(pair: Pair, disp_path: Path, inverse_path: Path) -> float:
    """Mean over the fixed brain of ``|phi^-1(phi(x)) - x|`` in fixed voxels: ``phi(x) = x + u(x)`` (moving
    voxels, ``disp_path``), ``phi^-1(y) = y + v(y)`` (fixed voxels on the moving grid, ``inverse_path``)."""
    import torch

    from caio import spatial
    from caio.io.fields import read_field

    u = torch.from_numpy(read_field(disp_path).disp)[None]
    v = torch.from_numpy(read_field(inverse_path).disp)[None]
    identity = spatial.identity_grid(u.shape[2:], dtype=torch.float64)
    phi = identity + u
    back = phi + spatial.sample(v, phi, padding_mode="border")
    error = torch.linalg.vector_norm(back - identity, dim=1)[0].numpy()
    return float(error[pair.brain].mean())


def export_checks(pair: Pair, work: Path, dice: float, affine: Path, field: Path, warped: Path) -> dict:
    """Dice and warped image of ``[field, affine]`` applied by antspyx and by SimpleITK, against caio's."""
    import ants
    import SimpleITK as sitk

    case = pair.case
    fixed = ants.image_read(str(case / "fixed.nii.gz"))
    chain = [str(field), str(affine)]

    def by_ants(path: Path, interpolator: str) -> np.ndarray:
        return ants.apply_transforms(fixed, ants.image_read(str(path)), chain, interpolator=interpolator).numpy()

    vectors = sitk.ReadImage(str(field), sitk.sitkVectorFloat64)
    # a composite applies its last transform to a point first: the field, then the affine
    composite = sitk.CompositeTransform([sitk.ReadTransform(str(affine)), sitk.DisplacementFieldTransform(vectors)])
    reference = sitk.ReadImage(str(case / "fixed.nii.gz"))

    def by_sitk(path: Path, interpolator: int) -> np.ndarray:
        out = sitk.Resample(sitk.ReadImage(str(path), sitk.sitkFloat32), reference, composite, interpolator, 0.0)
        return sitk.GetArrayFromImage(out).transpose(2, 1, 0)

    caio_image = np.asarray(nib.load(str(warped)).dataobj, np.float64)
    scale = max(float(np.abs(caio_image[pair.brain]).mean()), 1e-12)

    def image_difference(other: np.ndarray) -> float:
        return 100.0 * float(np.abs(other.astype(np.float64) - caio_image)[pair.brain].mean()) / scale

    seg, moving = case / "moving_seg.nii.gz", case / "moving.nii.gz"
    return {
        "d_ants": pair.dice(np.round(by_ants(seg, "nearestNeighbor"))) - dice,
        "d_sitk": pair.dice(np.round(by_sitk(seg, sitk.sitkNearestNeighbor))) - dice,
        "img_ants": image_difference(by_ants(moving, "linear")),
        "img_sitk": image_difference(by_sitk(moving, sitk.sitkLinear)),
    }


# ------------------------------------------------------------------ greedy


def greedy(command: str) -> None:
    from picsl_greedy import Greedy3D

    Greedy3D().execute(command)


def greedy_affine(fixed: Path, moving: Path, out: Path, threads: int, cross: bool) -> None:
    metric = "NMI" if cross else "NCC 2x2x2"
    common = f"-d 3 -threads {threads} -i {fixed} {moving} -m {metric}"
    greedy(f"{common} -a -dof 12 -ia-image-centers -n 100x50x10 -o {out}")


def greedy_deformable(fixed: Path, moving: Path, affine: Path, out: Path, threads: int, cross: bool) -> None:
    metric = "NMI" if cross else "NCC 2x2x2"
    common = f"-d 3 -threads {threads} -i {fixed} {moving} -m {metric}"
    greedy(f"{common} -it {affine} -n 100x50x20 -s 1.5vox 0.5vox -o {out}")


def labels_through_itk(pair: Pair, matrix: np.ndarray, warp: Path | None = None) -> np.ndarray:
    """The moving labels through an ITK chain ``[warp, affine]`` (the warp applied to a fixed point first), the
    affine given as a RAS world matrix, by :func:`labels_through` (nearest neighbour, as ``caio warp``)."""
    import torch

    disp = None if warp is None else torch.from_numpy(itk_field_in_voxels(warp, pair.fixed_affine))[None]
    return labels_through(pair, matrix, disp)


def run_greedy(pair: Pair, work: Path, threads: int) -> dict:
    f, m, cross = pair.case / "fixed.nii.gz", pair.case / "moving.nii.gz", bool(pair.meta["cross"])
    affine, warp = work / "affine.mat", work / "warp.nii.gz"
    start = time.perf_counter()
    greedy_affine(f, m, affine, threads, cross)
    affine_seconds = time.perf_counter() - start
    greedy_deformable(f, m, affine, warp, threads, cross)
    seconds = time.perf_counter() - start
    known = work / "known_affine.mat"
    greedy_affine(Path(pair.meta["source_image"]), m, known, threads, cross)
    matrix = read_greedy_matrix(affine)
    return {
        "dice_affine": pair.dice(labels_through_itk(pair, matrix)),
        **pair.scores(labels_through_itk(pair, matrix, warp)),
        "seconds": seconds,
        "affine_seconds": affine_seconds,
        "ndv": ndv_of_itk_field(pair, warp),
        "corner_mm": corner_error(pair.meta, read_greedy_matrix(known)),
    }


# ------------------------------------------------------------------ ants


def run_ants(pair: Pair, work: Path, threads: int) -> dict:
    """antspyx SyN (affine stage included, its defaults); threads from ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``."""
    import ants

    fixed = ants.image_read(str(pair.case / "fixed.nii.gz"))
    moving = ants.image_read(str(pair.case / "moving.nii.gz"))
    start = time.perf_counter()
    result = ants.registration(fixed, moving, type_of_transform="SyN", outprefix=str(work / "ants_"))
    seconds = time.perf_counter() - start
    seg = ants.image_read(str(pair.case / "moving_seg.nii.gz"))
    transforms = list(result["fwdtransforms"])  # [warp, affine]

    def labels(chain: list[str]) -> np.ndarray:
        return np.round(ants.apply_transforms(fixed, seg, chain, interpolator="nearestNeighbor").numpy())

    warp = next(Path(t) for t in transforms if t.endswith(".nii.gz"))
    return {
        "dice_affine": pair.dice(labels([transforms[-1]])),
        **pair.scores(labels(transforms)),
        "seconds": seconds,
        "ndv": ndv_of_itk_field(pair, warp),
    }


# ------------------------------------------------------------------ fireants


def fireants_moving_voxels(registration, run: FireantsRun) -> np.ndarray:
    """``(3, D0, D1, D2)`` moving voxel coordinates (nibabel axis order) of every fixed voxel through a FireANTs
    registration, from its own ``get_warped_coordinates`` (``[1, Z, Y, X, 3]``: SimpleITK's array order, reversed
    relative to nibabel's, and x, y, z in ``[-1, 1]`` of the moving image, corners aligned)."""
    import torch

    with torch.no_grad():
        grid = registration.get_warped_coordinates(run.fixed, run.moving)[0].double().numpy()
    size = np.array(run.moving.shape[2:][::-1], np.float64)  # SimpleITK size (x, y, z) = nibabel shape
    voxels = (grid + 1.0) * 0.5 * (size - 1.0)
    return np.moveaxis(voxels, -1, 0).transpose(0, 3, 2, 1)


def fireants_field_in_voxels(run: FireantsRun) -> np.ndarray:
    """The deformable part of a FireANTs greedy registration as a ``(3, D0, D1, D2)`` displacement in fixed voxels:
    its moving coordinates are ``A x + w(x)`` (``A`` its affine, ``w`` its warp, both in ``[-1, 1]`` coordinates),
    that is ``A (x + A^-1 w(x))``; ``A^-1 w`` is scaled to voxels (its determinant's sign is that of the map)."""
    import torch

    with torch.no_grad():
        params = run.deformable.get_warp_parameters(run.fixed, run.moving)
        linear, warp = params["affine"][0, :, :3].double(), params["grid"][0].double()  # warp: [Z, Y, X, 3]
        disp = (warp @ torch.linalg.inv(linear).T).numpy()
    size = np.array(run.fixed.shape[2:][::-1], np.float64)
    return np.moveaxis(disp * 0.5 * (size - 1.0), -1, 0).transpose(0, 3, 2, 1)


def fireants_world_matrix(run: FireantsRun) -> np.ndarray:
    """FireANTs' affine (fixed world -> moving world, SimpleITK's LPS mm) as a 4x4 RAS matrix, as Greedy writes it."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ run.affine.get_affine_matrix()[0].detach().double().numpy() @ flip


def run_fireants(pair: Pair, work: Path, threads: int) -> dict:
    """:func:`bench.methods.fireants_register` (moments + affine, then greedy; MI for cross-contrast sets) on the
    case files as FireANTs reads them; labels at the moving voxel coordinates of each stage (nearest neighbour)."""
    from caio.metrics.ndv import ndv_percent

    run = fireants_register(pair.case / "fixed.nii.gz", pair.case / "moving.nii.gz", bool(pair.meta["cross"]), threads)
    affine_labels = labels_at(pair, fireants_moving_voxels(run.affine, run))
    labels = labels_at(pair, fireants_moving_voxels(run.deformable, run))
    save_nifti(work / "warped_seg_affine.nii.gz", affine_labels.astype(np.int32), pair.fixed_affine)
    save_nifti(work / "warped_seg.nii.gz", labels.astype(np.int32), pair.fixed_affine)
    write_greedy_matrix(work / "affine.mat", fireants_world_matrix(run))
    return {
        "dice_affine": pair.dice(affine_labels),
        **pair.scores(labels),
        "seconds": run.seconds,
        "affine_seconds": run.affine_seconds,
        "ndv": ndv_percent(fireants_field_in_voxels(run), pair.brain),
    }


METHODS = {"caio": run_caio, "greedy": run_greedy, "ants": run_ants, "fireants": run_fireants}
DEFAULT_METHODS = tuple(m for m in METHODS if m != "fireants")
"""``fireants`` runs only when named (minutes per pair on the CPU)."""


def score(case: Path, method: str, work: Path, threads: int, methods: dict | None = None) -> dict:
    """One row: ``case``, ``set``, ``method`` and the method's measurements (or ``error``); ``methods``: name ->
    ``run_*`` function (default :data:`METHODS`)."""
    pair = load_pair(case)
    row = {"set": pair.meta["set"], "case": case.name, "method": method, "labels": len(pair.labels)}
    work.mkdir(parents=True, exist_ok=True)
    try:
        return {**row, **(METHODS if methods is None else methods)[method](pair, work, threads)}
    except Exception as err:  # a failing method is a row with its error, the others go on
        return {**row, "error": f"{type(err).__name__}: {err}"[:300]}
