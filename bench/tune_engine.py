"""Engine tuning runs on the LUMIR-like set: ``caio.engine.register`` alone with one configuration.

Usage (repository root, after ``python -m bench.make_lumir_like``)::

    python -m bench.tune_engine "level=LevelSettings(sigma_update=1.0, sigma_field=0.5)" 0,1
    python -m bench.tune_engine "" 8,9 mind          # similarity forced (default: lncc; cross pairs: the gate's)
    python -m bench.tune_engine "" synth:10 mind     # the first 10 synthetic cross-contrast pairs instead

``CAIO_TUNE_ROOT=<folder>`` reads another set made by ``python -m bench.make_lumir_like`` (e.g. the held-out set,
``bench/out/lumir_heldout``; check on it, do not tune on it).

``synth:N`` takes the pairs ``bench/out/cache/synth_*`` that ``python -m bench.registration --sets synth
--synth-pairs N`` made (T1-like <- T2-/FLAIR-like, 96x112x96; Dice over the fixed label map's labels).

The first argument is the keyword arguments of :class:`caio.engine.EngineConfig` as Python text, the second
the pair indices of ``LUMIR_like_dataset.json``'s "validation" list. Prints per pair: zero-field Dice, Dice
(mean over the non-zero labels of ``labels.json``, labels warped nearest-neighbour), the TRE proxy of those warped
labels in mm (``tre``; ``zero tre`` of the unwarped ones: :func:`bench.common.mean_tre_mm`, label-centroid
distance through the fixed label map's affine; voxels on the ``synth`` pairs, whose affine is the identity),
seconds of the ``register`` call, folding (% of fixed-brain voxels with det J <= 0) and iterations per level; then
the means. A quick development tool (its Dice is a plain mean of per-label Dice, not the evaluator's table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from bench.common import LUMIR_LIKE, mean_dice, mean_tre_mm, read_labels
from caio import spatial
from caio.engine import EngineConfig, LevelSettings, register, warm_up
from caio.engine.multiresolution import CROSS_CONTRAST_SIMILARITY

ROOT = Path(os.environ.get("CAIO_TUNE_ROOT", LUMIR_LIKE))


def synth_cases(n: int) -> list[tuple]:
    """``(index, cross, fixed, moving, fixed labels, moving labels)`` of the first ``n`` synthetic pairs."""
    folders = sorted((ROOT.parent / "cache").glob("synth_*"))[:n]
    if len(folders) < n:
        raise SystemExit(
            f"only {len(folders)} synthetic pairs in bench/out/cache: run python -m bench.registration first"
        )
    names = ("fixed", "moving", "fixed_seg", "moving_seg")
    return [(i, True, *(folder / f"{name}.nii.gz" for name in names)) for i, folder in enumerate(folders)]


def config_from_text(text: str) -> EngineConfig:
    """:class:`EngineConfig` from its keyword arguments as Python text (``LevelSettings`` may be used), e.g.
    ``"mind_remap_iterations=(20,)"``; ``""`` gives the defaults. A development tool's input: evaluated as is."""
    return eval(f"EngineConfig({text})", {"EngineConfig": EngineConfig, "LevelSettings": LevelSettings})


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default="", help='EngineConfig keyword arguments as Python text ("": defaults)')
    p.add_argument("pairs", nargs="?", help="pair indices, comma-separated (default: all), or synth:N")
    p.add_argument("similarity", nargs="?", help="forced similarity (default: lncc; cross pairs: the gate's)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(2)
    config = config_from_text(args.config)
    cases = synth_cases(int(args.pairs.split(":")[1])) if args.pairs and args.pairs.startswith("synth:") else []
    labels = None if cases else read_labels(ROOT)
    if not cases:
        pairs = json.loads((ROOT / "LUMIR_like_dataset.json").read_text())["validation"]
        chosen = [int(i) for i in args.pairs.split(",")] if args.pairs else range(len(pairs))
        for index in chosen:
            fixed_path, moving_path = ROOT / pairs[index]["fixed"][2:], ROOT / pairs[index]["moving"][2:]
            label_paths = [Path(str(p).replace("images", "labels")) for p in (fixed_path, moving_path)]
            cases.append((index, not moving_path.name.endswith("_0000.nii.gz"), fixed_path, moving_path, *label_paths))
    warm_up()
    rows = []
    for index, cross, fixed_path, moving_path, fixed_label_path, moving_label_path in cases:
        similarity = args.similarity or (CROSS_CONTRAST_SIMILARITY if cross else "lncc")

        def load(path: Path) -> np.ndarray:
            return np.asarray(nib.load(path).dataobj)

        fixed = torch.from_numpy(load(fixed_path).astype(np.float32))[None, None]
        moving = torch.from_numpy(load(moving_path).astype(np.float32))[None, None]
        fixed_labels = load(fixed_label_path).astype(np.int32)
        affine = nib.load(fixed_label_path).affine
        moving_labels = torch.from_numpy(load(moving_label_path).astype(np.float32))[None, None]
        pair_labels = labels or [int(v) for v in np.unique(fixed_labels) if v != 0]
        start = time.monotonic()
        disp, trace = register(fixed, moving, similarity=similarity, config=config)
        seconds = time.monotonic() - start
        warped = spatial.warp(moving_labels, disp, mode="nearest")[0, 0].numpy().astype(np.int32)
        det = spatial.jacobian_determinant(disp).reshape(fixed_labels.shape)
        folding = float((det[torch.from_numpy(fixed_labels > 0)] <= 0).float().mean() * 100)
        unwarped = moving_labels[0, 0].numpy().astype(np.int32)
        zero, score = mean_dice(fixed_labels, unwarped, pair_labels), mean_dice(fixed_labels, warped, pair_labels)
        zero_tre = mean_tre_mm(fixed_labels, unwarped, pair_labels, affine)
        tre = mean_tre_mm(fixed_labels, warped, pair_labels, affine)
        rows.append((cross, zero, score, zero_tre, tre, seconds, folding))
        print(
            f"pair {index} {'cross' if cross else 'same '} {similarity} zero {zero:.4f} dice {score:.4f} "
            f"zero tre {zero_tre:.2f} tre {tre:.2f}mm "
            f"t {seconds:.1f}s fold% {folding:.4f} it {[level.done for level in trace.levels]} "
            f"s {[round(level.seconds, 2) for level in trace.levels]} safeguard {len(trace.safeguard)}",
            flush=True,
        )
    for cross in (False, True):
        subset = [r[1:] for r in rows if r[0] == cross]
        if subset:
            zero, score, zero_tre, tre, seconds, folding = np.mean(subset, axis=0)
            print(
                f"MEAN {'cross' if cross else 'same'} n {len(subset)} zero {zero:.4f} dice {score:.4f} "
                f"zero tre {zero_tre:.2f} tre {tre:.2f}mm t {seconds:.1f} fold {folding:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
