"""Own scans, unaligned: affine + deformable registration of pairs whose moving image was moved and re-gridded.

Each moving image (and its labels) gets a random affine transform in world space (rotation up to ``--max-angle``
degrees about a random axis, translation up to ``--max-shift`` mm, scaling within ±10 % per axis, shear up to 0.05)
and is put on another grid through its header: voxels ``--voxel-factor`` times the original size, the first axis
flipped (LPS-like), the field of view fitted around the moved head. Labels are carried by nearest neighbour, the
image linearly. Pairs (a reporting set: no setting of caio was chosen on it):

* ``ixi``: NiChart IXI 2 mm T1 pairs (subject 2k fixed, 2k+1 moving, from the 21st subject on), DLMUSE labels;
* ``real1mm``: test_data 3455 (fixed) <- 3454 (moving), aseg labels;
* ``cross``: test_data 4024 (T1, fixed) <- 4033 (T2-like drawn from 3454's labels), aseg labels.

Methods, each in its own 2-thread process: ``caio`` (``caio register`` with its defaults, then ``caio warp
--nearest`` of the labels; time = ``register``'s wall clock, reading and writing included) and ``greedy`` (12-dof
affine, then deformable, then the labels resliced; NCC 2x2x2, NMI for ``cross``; time = the three calls).
Dice = mean over the labels present in both maps (0 excluded)::

    bench/.venv/bin/python -m bench.unaligned --sets real1mm cross ixi --ixi-pairs 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.common import (
    IXI,
    OUT,
    TEST_DATA,
    add_out_argument,
    add_threads_argument,
    common_labels,
    ixi_subjects,
    keep_row,
    markdown_header,
    markdown_row,
    mean_dice,
    stamped,
    thread_env,
    write_table,
)

CACHE = OUT / "cache"


def random_world_transform(rng: np.random.Generator, max_angle: float, max_shift: float, centre: np.ndarray):
    """4x4 RAS transform about ``centre`` (mm): rotation, scaling, shear, translation as the module docstring says."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(-max_angle, max_angle))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    shear = np.eye(3)
    shear[0, 1], shear[1, 2] = rng.uniform(-0.05, 0.05, size=2)
    linear = rotation @ shear @ np.diag(rng.uniform(0.9, 1.1, size=3))
    shift = rng.normal(size=3)
    shift *= rng.uniform(0, max_shift) / np.linalg.norm(shift)
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre - linear @ centre + shift
    return out


def moved_and_regridded(image: nib.Nifti1Image, labels: np.ndarray, transform: np.ndarray, factor: float):
    """The image and labels moved by ``transform`` (world) onto a new grid: voxels ``factor`` times larger, axis 0
    flipped, the field of view around the moved content. Returns ``(image, labels)`` as NIfTI images."""
    from scipy import ndimage

    data = np.asarray(image.dataobj, np.float32)
    corners = np.array(
        [[i, j, k, 1] for i in (0, data.shape[0]) for j in (0, data.shape[1]) for k in (0, data.shape[2])]
    )
    world = (transform @ image.affine @ corners.T)[:3]
    low, high = world.min(axis=1), world.max(axis=1)
    spacing = np.abs(np.linalg.svd(image.affine[:3, :3], compute_uv=False)).mean() * factor
    shape = tuple(int(math.ceil(n)) for n in (high - low) / spacing)
    new_affine = np.diag([-spacing, spacing, spacing, 1.0])
    new_affine[:3, 3] = [high[0], low[1], low[2]]  # axis 0 runs from right to left (flipped)
    to_old = np.linalg.inv(image.affine) @ np.linalg.inv(transform) @ new_affine
    coords = np.indices(shape, dtype=np.float32).reshape(3, -1)
    old = (to_old[:3, :3] @ coords + to_old[:3, 3:]).reshape(3, *shape)
    moved = ndimage.map_coordinates(data, old, order=1, cval=0.0).astype(np.float32)
    moved_labels = ndimage.map_coordinates(labels, old, order=0, cval=0).astype(labels.dtype)
    return nib.Nifti1Image(moved, new_affine), nib.Nifti1Image(moved_labels, new_affine)


def build_case(name: str, fixed: Path, fixed_seg: Path, moving: Path, moving_seg: Path, args, seed: int) -> Path:
    case = CACHE / f"unaligned_{name}_s{seed}"
    if (case / "meta.json").is_file():
        return case
    case.mkdir(parents=True, exist_ok=True)
    image = nib.load(str(moving))
    labels = np.asarray(nib.load(str(moving_seg)).dataobj).astype(np.int32)
    centre = (image.affine @ np.array([*(np.array(image.shape[:3]) / 2), 1.0]))[:3]
    transform = random_world_transform(np.random.default_rng(seed), args.max_angle, args.max_shift, centre)
    factor = 1.2 if "real1mm" in name or "cross" in name else args.voxel_factor
    moved, moved_labels = moved_and_regridded(image, labels, transform, factor)
    nib.save(nib.load(str(fixed)), str(case / "fixed.nii.gz"))
    nib.save(nib.load(str(fixed_seg)), str(case / "fixed_seg.nii.gz"))
    nib.save(moved, str(case / "moving.nii.gz"))
    nib.save(moved_labels, str(case / "moving_seg.nii.gz"))
    meta = {"name": name, "seed": seed, "cross": "cross" in name, "transform": transform.tolist()}
    (case / "meta.json").write_text(json.dumps(meta))
    return case


def cases(args) -> list[Path]:
    out, images, labels = [], TEST_DATA / "imagesVal", TEST_DATA / "labelsVal"
    if "real1mm" in args.sets:
        f, m = "LUMIRMRI_3455_0000.nii.gz", "LUMIRMRI_3454_0000.nii.gz"
        out.append(build_case("real1mm", images / f, labels / f, images / m, labels / m, args, 1))
    if "cross" in args.sets:
        f, m = "LUMIRMRI_4024_0000.nii.gz", "LUMIRMRI_4033_0001.nii.gz"
        out.append(build_case("cross", images / f, labels / f, images / m, labels / m, args, 2))
    if "ixi" in args.sets:
        subjects = ixi_subjects()[20:]
        for k in range(args.ixi_pairs):
            fid, mid = subjects[2 * k], subjects[2 * k + 1]
            t1, seg = IXI / "T1", IXI / "DLMUSE"
            paths = (t1 / f"{fid}_T1.nii.gz", seg / f"{fid}_T1_DLMUSE.nii.gz")
            paths += (t1 / f"{mid}_T1.nii.gz", seg / f"{mid}_T1_DLMUSE.nii.gz")
            out.append(build_case(f"ixi_{fid[:6]}_{mid[:6]}", *paths, args, 10 + k))
    return out


def _run(cmd: list[str], threads: int) -> None:
    done = subprocess.run(cmd, env={**os.environ, **thread_env(threads)}, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def run_caio(case: Path, tmp: Path, threads: int) -> float:
    caio = [sys.executable, "-m", "caio"]
    start = time.perf_counter()
    register = ["register", str(case / "fixed.nii.gz"), str(case / "moving.nii.gz"), "-o", str(tmp / "disp.nii.gz")]
    _run([*caio, *register, "--device", "cpu", "--threads", str(threads)], threads)
    seconds = time.perf_counter() - start
    warp = ["warp", "--disp", str(tmp / "disp.nii.gz"), "--moving", str(case / "moving_seg.nii.gz")]
    _run([*caio, *warp, "-o", str(tmp / "warped_seg.nii.gz"), "--nearest"], threads)
    return seconds


def run_greedy(case: Path, tmp: Path, threads: int, cross: bool) -> float:
    from picsl_greedy import Greedy3D

    f, m = case / "fixed.nii.gz", case / "moving.nii.gz"
    metric = "NMI" if cross else "NCC 2x2x2"
    common = f"-d 3 -threads {threads} -i {f} {m} -m {metric}"
    start = time.perf_counter()
    Greedy3D().execute(f"{common} -a -dof 12 -ia-image-centers -n 100x50x10 -o {tmp / 'affine.mat'}")
    warp = f"-it {tmp / 'affine.mat'} -n 100x50x20 -s 1.5vox 0.5vox -o {tmp / 'warp.nii.gz'}"
    Greedy3D().execute(f"{common} {warp}")
    seconds = time.perf_counter() - start
    out = tmp / "warped_seg.nii.gz"
    reslice = f"-rm {case / 'moving_seg.nii.gz'} {out} -r {tmp / 'warp.nii.gz'} {tmp / 'affine.mat'}"
    Greedy3D().execute(f"-d 3 -threads {threads} -rf {f} -ri LABEL 0.2vox {reslice}")
    return seconds


def score(case: Path, method: str, args) -> dict:
    meta = json.loads((case / "meta.json").read_text())
    fixed_seg = np.asarray(nib.load(str(case / "fixed_seg.nii.gz")).dataobj).astype(np.int64)
    moving_seg = np.asarray(nib.load(str(case / "moving_seg.nii.gz")).dataobj).astype(np.int64)
    labels = common_labels(fixed_seg, moving_seg)
    row = {"case": case.name, "method": method}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        try:
            if method == "caio":
                seconds = run_caio(case, tmp, args.threads)
            else:
                seconds = run_greedy(case, tmp, args.threads, meta["cross"])
        except Exception as err:  # a failing method is a row with its error, the others go on
            return {**row, "error": str(err)[:200]}
        warped = np.asarray(nib.load(str(tmp / "warped_seg.nii.gz")).dataobj).astype(np.int64)
    return {**row, "seconds": seconds, "dice": mean_dice(fixed_seg, warped, labels), "labels": len(labels)}


def table(rows: list[dict]) -> str:
    lines = markdown_header(["case", "method", "Dice", "s"])
    for r in rows:
        dice = f"{r['dice']:.3f}" if "dice" in r else r.get("error", "–")
        lines.append(markdown_row([r["case"], r["method"], dice, f"{r.get('seconds', float('nan')):.1f}"]))
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method and "dice" in r]
        if sel:
            mean = [float(np.mean([r[k] for r in sel])) for k in ("dice", "seconds")]
            lines.append(markdown_row(["**mean**", method, f"{mean[0]:.3f}", f"{mean[1]:.1f}"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.unaligned", description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=["real1mm", "cross", "ixi"], choices=["real1mm", "cross", "ixi"])
    p.add_argument("--ixi-pairs", type=int, default=8)
    p.add_argument("--methods", nargs="+", default=["caio", "greedy"], choices=["caio", "greedy"])
    p.add_argument("--max-angle", type=float, default=15.0, help="degrees")
    p.add_argument("--max-shift", type=float, default=20.0, help="mm")
    p.add_argument("--voxel-factor", type=float, default=0.8, help="moving voxel size / original (IXI)")
    add_threads_argument(p)
    add_out_argument(p)
    args = p.parse_args(argv)
    base, rows = stamped(args.out, "unaligned"), []
    for method in args.methods:
        for case in cases(args):
            keep_row(base, rows, score(case, method, args))
    write_table(base, table(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
