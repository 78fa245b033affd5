"""Known-warp recovery on real co-registered contrasts: which similarity to use for a cross-contrast pair.

The LUMIR-like cross-contrast pairs of ``bench.registration`` draw their moving image from label maps, where
tissue intensities are close to a function of the T1's. Here the contrasts are real scans of the same anatomy:

* ``spm_t2``, ``spm_pd``: the SPM avg152 T1 with its T2 and PD templates (2 mm, co-registered by construction);
* ``chris_pd``: one subject's T1 (0.88 mm) and PD (0.86 x 0.86 x 2.4 mm), rigidly aligned here with ANTs
  (Mattes mutual information) and resampled onto a 1 mm grid;
* ``spm_t1``, ``chris_t1``: the same T1 on both sides (the floor that a same-contrast pair reaches).

Every image is skull-stripped with a brain mask (the MNI ICBM152 2009a GM + WM probabilities above 0.5, placed on
the image by an ANTs affine, dilated by 2 voxels), as LUMIR images are. A known smooth diffeomorphic field ``s``
(``caio.synth.generator.random_displacement``, largest displacement fixed per seed) warps the *fixed* T1, so
``fixed(x) = T1(x + s(x)) = other(x + s(x))`` and the true answer is ``s``; each similarity of ``caio.register`` is
scored by its endpoint error against ``s`` inside the (warped) brain mask, in voxels.

    bench/.venv/bin/python -m bench.real_cross                      # 3 seeds, lncc2 / remap / mind
    bench/.venv/bin/python -m bench.real_cross --seeds 0 --similarities remap lncc2
    bench/.venv/bin/python -m bench.real_cross --similarities mind \
        --config "" "mind_remap_factors=(), mind_remap_iterations=()"    # EngineConfig keyword arguments

The ANTs affine behind the brain mask differs from one process to the next, and the endpoint error with it (the SPM
T2 case: 0.78 voxel in three processes, 1.37 in a fourth, same engine): compare configurations in one invocation
(``--config`` takes several; each runs on the same masks and warps), not across runs.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from bench.common import DATA, add_out_argument, add_threads_argument, markdown_header, markdown_row, stamped

MNI = DATA / "mni_icbm152_2009a_nilearn"
SPM = DATA / "spm_canonical"
CHRIS = DATA / "niivue_chris_multicontrast"


@dataclass
class Pair:
    """One real contrast pair on a common grid: ``fixed`` (T1), ``moving`` (other contrast), ``mask`` (brain)."""

    name: str
    fixed: np.ndarray
    moving: np.ndarray
    mask: np.ndarray
    max_disp: float
    """Largest displacement of the known warp, voxels (16 mm on the 2 mm templates, 12 mm on the 1 mm subject)."""


def _brain_mask(target):
    """ICBM152 GM + WM > 0.5 placed on ``target`` (an ``ants`` image) by an affine, dilated by 2 voxels."""
    import ants
    from scipy import ndimage

    t1 = ants.image_read(str(MNI / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    gm = ants.image_read(str(MNI / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"))
    wm = ants.image_read(str(MNI / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"))
    reg = ants.registration(target, t1, type_of_transform="Affine")
    brain = ants.apply_transforms(target, gm + wm, reg["fwdtransforms"], interpolator="linear").numpy() > 0.5
    return ndimage.binary_dilation(ndimage.binary_fill_holes(brain), iterations=2)


def _crop(arrays: list[np.ndarray], mask: np.ndarray, margin: int = 6) -> list[np.ndarray]:
    """``arrays`` cut to the bounding box of ``mask`` grown by ``margin`` voxels (the engine's own box)."""
    from caio.engine.images import foreground_box

    brain = torch.from_numpy(mask.astype(np.float32))[None, None]
    box = foreground_box(brain, brain, margin)
    return [a[box] for a in arrays]


def spm_pairs() -> list[Pair]:
    import ants

    t1 = ants.image_read(str(SPM / "avg152T1.nii.gz"))
    mask = _brain_mask(t1)
    pairs = []
    for name, other in (("spm_t1", "T1"), ("spm_t2", "T2"), ("spm_pd", "PD")):
        moving = ants.image_read(str(SPM / f"avg152{other}.nii.gz")).numpy()
        fixed, moving, m = _crop([t1.numpy() * mask, moving * mask, mask], mask)
        pairs.append(Pair(name, fixed, moving, m, max_disp=8.0))
    return pairs


def chris_pairs() -> list[Pair]:
    """T1 and PD of one subject, rigidly aligned (PD -> T1), on a 1 mm grid restricted to the PD's slab."""
    import ants

    t1 = ants.image_read(str(CHRIS / "chris_t1.nii.gz"))
    t1 = ants.resample_image(t1, (1.0, 1.0, 1.0), use_voxels=False, interp_type=0)
    pd = ants.image_read(str(CHRIS / "chris_PD.nii.gz"))
    reg = ants.registration(t1, pd, type_of_transform="Rigid", aff_metric="mattes")
    pd_on_t1 = ants.apply_transforms(t1, pd, reg["fwdtransforms"], interpolator="linear").numpy()
    covered = ants.apply_transforms(t1, pd * 0 + 1, reg["fwdtransforms"], interpolator="nearestNeighbor").numpy()
    from scipy import ndimage

    covered = ndimage.binary_erosion(covered > 0.5, iterations=3)  # away from the slab's ends
    mask = _brain_mask(t1) & covered
    pairs = []
    for name, moving in (("chris_t1", t1.numpy()), ("chris_pd", pd_on_t1)):
        fixed, moving, m = _crop([t1.numpy() * mask, moving * mask, mask], mask)
        pairs.append(Pair(name, fixed, moving, m, max_disp=12.0))
    return pairs


def known_warp(shape: tuple[int, ...], max_disp: float, seed: int) -> torch.Tensor:
    """``[1, 3, *shape]`` smooth displacement whose largest value is ``max_disp`` voxels (a diffeomorphism
    rescaled; its Jacobian determinant stays positive at these amplitudes: printed by :func:`run`)."""
    from caio.synth.generator import random_displacement

    disp = random_displacement(shape, torch.Generator().manual_seed(seed), max_disp=1.0, control_spacing=32)
    return disp * (max_disp / float(disp.abs().max()))


def endpoint_error(disp: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean and 95th percentile of ``|disp - truth|`` (voxels) inside ``mask``."""
    err = (disp - truth).norm(dim=1)[0][mask]
    return float(err.mean()), float(torch.quantile(err, 0.95))


def run(pairs: list[Pair], similarities: list[str], seeds: list[int], config_text: str = "") -> list[dict]:
    from bench.tune_engine import config_from_text
    from caio import spatial
    from caio.engine import register
    from caio.engine.multiresolution import warm_up

    warm_up()
    config = config_from_text(config_text)
    rows = []
    for pair in pairs:
        fixed0 = torch.from_numpy(np.ascontiguousarray(pair.fixed, np.float32))[None, None]
        moving = torch.from_numpy(np.ascontiguousarray(pair.moving, np.float32))[None, None]
        mask0 = torch.from_numpy(pair.mask.astype(np.float32))[None, None]
        for seed in seeds:
            truth = known_warp(tuple(pair.fixed.shape), pair.max_disp, seed)
            fixed = spatial.warp(fixed0, truth)
            mask = spatial.warp(mask0, truth, mode="nearest")[0, 0] > 0.5
            zero = endpoint_error(torch.zeros_like(truth), truth, mask)
            jacobian = float(spatial.jacobian_determinant(truth).min())
            for sim in ["lncc"] if pair.name.endswith("_t1") else similarities:  # T1 <- T1: the floor
                t0 = time.perf_counter()
                disp, trace = register(fixed, moving, similarity=sim, config=config)
                seconds = time.perf_counter() - t0
                mean, p95 = endpoint_error(disp, truth, mask)
                rows.append(
                    dict(
                        pair=pair.name,
                        seed=seed,
                        similarity=sim,
                        config=config_text,
                        ran=trace.similarity,
                        explained=trace.explained,
                        epe=mean,
                        epe95=p95,
                        zero_epe=zero[0],
                        seconds=seconds,
                        truth_min_jacobian=jacobian,
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    columns = ["pair", "similarity", "config", "seeds", "endpoint error (vox)", "95th pct (vox)", "zero field (vox)"]
    lines = markdown_header([*columns, "time (s)"])
    keys = list(dict.fromkeys((r["pair"], r["similarity"], r["config"]) for r in rows))
    for pair, sim, config in keys:
        sel = [r for r in rows if (r["pair"], r["similarity"], r["config"]) == (pair, sim, config)]
        epe, p95, zero, seconds = (float(np.mean([r[k] for r in sel])) for k in ("epe", "epe95", "zero_epe", "seconds"))
        name = config or "defaults"
        cells = [pair, sim, f"`{name}`", len(sel), f"{epe:.2f}", f"{p95:.2f}", f"{zero:.2f}", f"{seconds:.1f}"]
        lines.append(markdown_row(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--similarities", nargs="+", default=["lncc2", "remap", "mind"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--sets", nargs="+", default=["spm", "chris"], choices=["spm", "chris"])
    add_threads_argument(p)
    p.add_argument(
        "--config",
        nargs="+",
        default=[""],
        help='EngineConfig keyword arguments as Python text, one or more ("": the defaults), run on the same pairs',
    )
    add_out_argument(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = [pair for s in args.sets for pair in {"spm": spm_pairs, "chris": chris_pairs}[s]()]
    rows = [row for config in args.config for row in run(pairs, args.similarities, args.seeds, config)]
    text = table(rows)
    base = stamped(args.out, "real_cross")
    base.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    base.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
