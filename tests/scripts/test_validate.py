"""The output checks of scripts/validate.py (the container smoke test CI runs), on a tiny folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from caio.io import load_pairs, write_displacement

REPO = Path(__file__).resolve().parents[2]
SHAPE = (24, 24, 24)
SHIFT = 2  # voxels along axis 0


@pytest.fixture(scope="module")
def validate():
    spec = importlib.util.spec_from_file_location("caio_validate_script", REPO / "scripts" / "validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ball(center) -> np.ndarray:
    grid = np.indices(SHAPE).astype(float)
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center)))
    labels = np.zeros(SHAPE, np.uint8)
    labels[r < 8] = 1
    labels[r < 4] = 2
    return labels


@pytest.fixture()
def folder(tmp_path: Path):
    """Fixed = balls at the centre; moving = the same balls SHIFT voxels further along axis 0."""
    fixed_lab, moving_lab = _ball((12, 12, 12)), _ball((12 + SHIFT, 12, 12))
    names = {"0001_0000": fixed_lab, "0002_0000": moving_lab}
    for sub in ("imagesVal", "labelsVal"):
        (tmp_path / sub).mkdir()
    for name, lab in names.items():
        image = (lab * 100).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "imagesVal" / f"LUMIRMRI_{name}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "labelsVal" / f"LUMIRMRI_{name}.nii.gz"))
    entry = {"fixed": "./imagesVal/LUMIRMRI_0001_0000.nii.gz", "moving": "./imagesVal/LUMIRMRI_0002_0000.nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps({"validation": [entry]}))
    out = tmp_path / "out"
    out.mkdir()
    return tmp_path, load_pairs(tmp_path / "dataset.json", tmp_path), out


def _write(out: Path, value: float) -> None:
    disp = np.zeros((3, *SHAPE), np.float32)
    disp[0] = value
    write_displacement(out / "disp_0001_0002.nii.gz", disp)


def test_a_field_that_registers_passes_with_dice_above_the_affine_only_dice(validate, folder):
    root, pairs, out = folder
    _write(out, SHIFT)  # warped(x) = moving(x + SHIFT) = fixed(x)
    summary = validate.check_and_evaluate(pairs, out, root)
    assert summary["ok"], summary["problems"]
    row = summary["pairs"][0]
    assert row["dice"] == pytest.approx(1.0) and row["dice_initial"] < 0.9


def test_a_field_no_better_than_affine_only_is_a_problem(validate, folder):
    root, pairs, out = folder
    _write(out, 0.0)
    summary = validate.check_and_evaluate(pairs, out, root)
    assert not summary["ok"]
    assert any("not above the affine-only" in p for p in summary["problems"])


def test_a_missing_output_is_a_problem(validate, folder):
    root, pairs, out = folder
    summary = validate.check_and_evaluate(pairs, out, root)
    assert not summary["ok"] and summary["pairs"][0]["valid"] is False


# ------------------------------------------------------------------ run report: status and path

NONE = frozenset()
ALL_WEIGHTS = frozenset({"brainid", "vfa_mono", "vfa_multi"})


def _entry(status="ok", steps=(("read", "ran"), ("gate", "ran"), ("engine", "ran")), configured=("gate", "engine")):
    trace = {"configured": list(configured), "steps": [{"name": n, "outcome": o} for n, o in steps]}
    return {"pair": "0002_0000<--0001_0000", "status": status, "message": "", "cross_contrast": False, "trace": trace}


def test_an_ok_cpu_pair_on_gate_and_engine_passes_the_run_report_check(validate):
    assert validate.check_run_report([_entry()], gpu=False, available=NONE) == []
    assert validate.check_run_report([_entry()], gpu=False, available=ALL_WEIGHTS) == []  # CPU: weights unused


def test_a_degraded_pair_fails_the_run_report_check(validate):
    entry = _entry(status="degraded")
    entry["message"] = "engine skipped: engine ran 0 iterations"
    problems = validate.check_run_report([entry], gpu=False, available=NONE)
    assert any("status degraded (engine skipped" in p for p in problems)


def test_a_path_other_than_the_expected_one_fails(validate):
    fallback = _entry(steps=(("gate", "ran"), ("vfa", "failed"), ("engine", "fallback")))
    problems = validate.check_run_report([fallback], gpu=True, available=ALL_WEIGHTS)
    assert any("path gate+engine is not the expected gate+vfa+cascade" in p for p in problems)
    cpu_cascade = _entry(steps=(("gate", "ran"), ("engine", "ran"), ("cascade", "ran")))
    assert validate.check_run_report([cpu_cascade], gpu=False, available=NONE)


def test_expected_path_per_device_contrast_and_weights(validate):
    assert validate.expected_path(False, True, ALL_WEIGHTS) == ("gate", "engine")
    assert validate.expected_path(True, True, ALL_WEIGHTS) == ("gate", "brainid", "vfa", "cascade")
    assert validate.expected_path(True, False, NONE) == ("gate", "engine")  # the cascade added nothing after it (GPU)
    assert validate.expected_path(True, False, frozenset({"vfa_mono"})) == ("gate", "vfa", "cascade")


def test_stdout_lines_stand_in_for_a_missing_report(validate):
    text = (
        "caio predict: 2 pairs\n"
        "[1/2] 3454_0000<--3455_0000 ok gate=0.812:same path=gate+engine steps=140 41.2s peak=900MB device=cpu -> x\n"
        "[2/2] 3454_0000<--4033_0001 degraded gate=0.301:cross path=gate+identity steps=- 59.0s peak=900MB"
        " device=cpu -> y | engine skipped: engine ran 0 iterations\n"
    )
    entries = validate.parse_pair_lines(text)
    assert [(e["status"], e["path"], e["cross_contrast"]) for e in entries] == [
        ("ok", "gate+engine", False),
        ("degraded", "gate+identity", True),
    ]
    problems = validate.check_run_report(entries, gpu=False, available=NONE)
    assert len(problems) == 2 and all(p.startswith("3454_0000<--4033_0001") for p in problems)
    assert validate.check_run_report([], gpu=False, available=NONE)
