"""Shared helpers of the run-loop tests (tests/pipeline/test_batch.py, tests/system/test_run_*.py): tiny data
sets, the driver, checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from caio.io import validate_displacement_file
from caio.io.atomic import is_temporary, read_nifti_descrip

DRIVER = Path(__file__).resolve().parent / "run_driver.py"


def pair_ids(n: int) -> list[tuple[str, str]]:
    """``n`` same-contrast pairs over ``n`` subjects: (i, i+1 mod n)."""
    return [(f"{1000 + i}_0000", f"{1000 + (i + 1) % n}_0000") for i in range(n)]


def write_volume(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def make_dataset(root: Path, pairs: list[tuple[str, str]], shape=(24, 24, 24), seed: int = 0) -> Path:
    """``imagesVal/LUMIRMRI_<id>.nii.gz`` (random values in [0, 255]) for every id of ``pairs``, and the JSON."""
    rng = np.random.default_rng(seed)
    for name in sorted({n for pair in pairs for n in pair}):
        write_volume(root / "imagesVal" / f"LUMIRMRI_{name}.nii.gz", (rng.random(shape) * 255).astype(np.float32))
    entries = [
        {"fixed": f"./imagesVal/LUMIRMRI_{f}.nii.gz", "moving": f"./imagesVal/LUMIRMRI_{m}.nii.gz"} for f, m in pairs
    ]
    json_path = root / "LUMIR25_dataset.json"
    json_path.write_text(json.dumps({"name": "LUMIR", "validation": entries}))
    return json_path


def dataset(root: Path, n: int, shape=(24, 24, 24)) -> Path:
    return make_dataset(root, pair_ids(n), shape=shape)


def driver_cmd(json_path: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(DRIVER),
        "--json",
        str(json_path),
        "--input",
        str(json_path.parent),
        "-o",
        str(out),
        "--shape",
        "any",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def driver_env(**values: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(values)
    return env


def run_driver(json_path: Path, out: Path, *extra: str, timeout: float = 120, **env: str):
    return subprocess.run(
        driver_cmd(json_path, out, *extra), capture_output=True, text=True, timeout=timeout, env=driver_env(**env)
    )


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if is_temporary(p)] if out.is_dir() else []


def expected_outputs(n: int) -> list[str]:
    return [f"disp_{f[:4]}_{m[:4]}.nii.gz" for f, m in pair_ids(n)]


def check_outputs_valid(out: Path, names: list[str], shape=(24, 24, 24)) -> list[str]:
    """Problems of the outputs present in ``out`` (missing ones are not problems here)."""
    problems = []
    for path in sorted(out.glob("disp_*.nii.gz")):
        reason = validate_displacement_file(path, shape)
        if reason is not None:
            problems.append(reason)
        elif path.name not in names:
            problems.append(f"{path.name}: unexpected output")
        elif not (read_nifti_descrip(path) or "").startswith("caio "):
            problems.append(f"{path.name}: no recorded status")
    return problems


def plain_displacement(path: Path, shape=(24, 24, 24)) -> Path:
    """A valid displacement file without a caio status (as an older caio or another tool writes it)."""
    nib.save(nib.Nifti1Image(np.zeros((*shape, 3), np.float32), np.eye(4)), str(path))
    return path
