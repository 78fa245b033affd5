"""Small real brain volumes for pipeline tests on the LUMIR grid block-averaged by 4 (40x56x48).

Four distinct real T1 subjects: ``test_data``'s two (``3454_0000``, ``3455_0000``; its ``4024_0000`` is a
copy of ``3455_0000`` and is not used) and two OASIS subjects stored already small in
``tests/data/oasis_t1_40x56x48.npz`` (``tests/data/README.md``), plus ``test_data``'s T2-like image.

:func:`make_dataset` writes a LUMIR-style folder (``imagesVal/LUMIRMRI_<id>.nii.gz`` and a
dataset JSON) for any pair ids: an id with modality code ``0001`` gets the T2-like subject,
any other id one of the four T1 subjects (subject number modulo 4), so that pairs whose codes differ
are genuinely cross-contrast and same-contrast pairs of subjects 1-4 (or any two numbers that differ
modulo 4) register two different people. Importable from tests (``tests/`` is on ``sys.path`` under pytest).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "test_data" / "imagesVal"
OASIS_T1 = Path(__file__).resolve().parents[1] / "data" / "oasis_t1_40x56x48.npz"
T1_SUBJECTS = ("3454_0000", "3455_0000", "oasis_a", "oasis_b")
"""Four different people (``oasis_*``: arrays of :data:`OASIS_T1`, the others ``test_data`` images)."""
T2_SUBJECT = "4033_0001"
FACTOR = 4
SHAPE = (160 // FACTOR, 224 // FACTOR, 192 // FACTOR)


@cache
def small_volume(name: str) -> np.ndarray:
    """Subject ``name`` of :data:`T1_SUBJECTS` or :data:`T2_SUBJECT` at :data:`SHAPE`, float32 in [0, 255]:
    a ``test_data`` image ``LUMIRMRI_<name>`` block-averaged by :data:`FACTOR`, or an OASIS subject as stored."""
    if name.startswith("oasis_"):
        with np.load(OASIS_T1) as arrays:
            return arrays[name.removeprefix("oasis_")].astype(np.float32)
    image = np.asarray(nib.load(str(TEST_DATA / f"LUMIRMRI_{name}.nii.gz")).dataobj, dtype=np.float32)
    d0, d1, d2 = (n // FACTOR for n in image.shape)
    blocks = image[: d0 * FACTOR, : d1 * FACTOR, : d2 * FACTOR].reshape(d0, FACTOR, d1, FACTOR, d2, FACTOR)
    return blocks.mean(axis=(1, 3, 5)).astype(np.float32)


def source_of(pair_id: str) -> str:
    """Which ``test_data`` subject stands in for the id ``SSSS_MMMM``."""
    subject, modality = pair_id.split("_")
    return T2_SUBJECT if modality == "0001" else T1_SUBJECTS[int(subject) % len(T1_SUBJECTS)]


def write_volume(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def make_dataset(root: Path, pairs: list[tuple[str, str]]) -> Path:
    """Write every image of ``pairs`` (``("SSSS_MMMM", "SSSS_MMMM")`` = fixed, moving) and the JSON; return its path."""
    for name in {n for pair in pairs for n in pair}:
        write_volume(root / "imagesVal" / f"LUMIRMRI_{name}.nii.gz", small_volume(source_of(name)))
    entries = [
        {"fixed": f"./imagesVal/LUMIRMRI_{f}.nii.gz", "moving": f"./imagesVal/LUMIRMRI_{m}.nii.gz"} for f, m in pairs
    ]
    json_path = root / "LUMIR25_dataset.json"
    json_path.write_text(json.dumps({"name": "LUMIR", "validation": entries}))
    return json_path
