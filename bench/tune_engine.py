"""Engine tuning runs on the LUMIR-like set: ``caio.engine.register`` alone with one configuration.

Usage (repository root, after ``bench/make_lumir_like.py``)::

    python bench/tune_engine.py "level=LevelSettings(sigma_update=1.0, sigma_field=0.5)" 0,1
    python bench/tune_engine.py "" 8,9 mind          # similarity forced (default: lncc; cross pairs: the gate's)

The first argument is the keyword arguments of :class:`caio.engine.EngineConfig` as Python text, the second
the pair indices of ``LUMIR_like_dataset.json``'s "validation" list. Prints per pair: zero-field Dice, Dice
(mean over the non-zero labels of ``labels.json``, labels warped nearest-neighbour), seconds of the
``register`` call, folding (% of fixed-brain voxels with det J <= 0) and iterations per level; then the means.
A quick development tool (its Dice is a plain mean of per-label Dice, not the evaluator's table).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from caio import spatial
from caio.engine import EngineConfig, LevelSettings, register, warm_up
from caio.engine.api import CROSS_CONTRAST_SIMILARITY

ROOT = Path(__file__).resolve().parent / "out" / "lumir_like"


def dice(fixed: np.ndarray, warped: np.ndarray, labels: list[int]) -> float:
    scores = []
    for label in labels:
        a, b = fixed == label, warped == label
        total = a.sum() + b.sum()
        if total:
            scores.append(2 * (a & b).sum() / total)
    return float(np.mean(scores))


def main(argv: list[str]) -> int:
    torch.set_num_threads(2)
    config = eval(
        f"EngineConfig({argv[0] if argv else ''})", {"EngineConfig": EngineConfig, "LevelSettings": LevelSettings}
    )
    pairs = json.loads((ROOT / "LUMIR_like_dataset.json").read_text())["validation"]
    labels = [v for v in json.loads((ROOT / "labels.json").read_text())["labels"] if v != 0]
    chosen = [int(i) for i in argv[1].split(",")] if len(argv) > 1 else range(len(pairs))
    warm_up()
    rows = []
    for index in chosen:
        fixed_rel, moving_rel = pairs[index]["fixed"][2:], pairs[index]["moving"][2:]
        cross = not moving_rel.endswith("_0000.nii.gz")
        similarity = argv[2] if len(argv) > 2 else (CROSS_CONTRAST_SIMILARITY if cross else "lncc")

        def load(rel: str) -> np.ndarray:
            return np.asarray(nib.load(ROOT / rel).dataobj)

        fixed = torch.from_numpy(load(fixed_rel).astype(np.float32))[None, None]
        moving = torch.from_numpy(load(moving_rel).astype(np.float32))[None, None]
        fixed_labels = load(fixed_rel.replace("images", "labels")).astype(np.int32)
        moving_labels = torch.from_numpy(load(moving_rel.replace("images", "labels")).astype(np.float32))[None, None]
        start = time.monotonic()
        disp, trace = register(fixed, moving, similarity=similarity, config=config)
        seconds = time.monotonic() - start
        warped = spatial.warp(moving_labels, disp, mode="nearest")[0, 0].numpy().astype(np.int32)
        det = spatial.jacobian_determinant(disp).reshape(fixed_labels.shape)
        folding = float((det[torch.from_numpy(fixed_labels > 0)] <= 0).float().mean() * 100)
        zero = dice(fixed_labels, moving_labels[0, 0].numpy().astype(np.int32), labels)
        score = dice(fixed_labels, warped, labels)
        rows.append((cross, zero, score, seconds, folding))
        print(
            f"pair {index} {'cross' if cross else 'same '} {similarity} zero {zero:.4f} dice {score:.4f} "
            f"t {seconds:.1f}s fold% {folding:.4f} it {[level.done for level in trace.levels]}",
            flush=True,
        )
    for cross in (False, True):
        subset = [r[1:] for r in rows if r[0] == cross]
        if subset:
            zero, score, seconds, folding = np.mean(subset, axis=0)
            print(
                f"MEAN {'cross' if cross else 'same'} n {len(subset)} zero {zero:.4f} dice {score:.4f} "
                f"t {seconds:.1f} fold {folding:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
