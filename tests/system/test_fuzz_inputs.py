"""Property-based fuzzing (Hypothesis, seeded) of NIfTI header fields and of the dataset JSON (issue 31).

The property, for every reader and entry point: a usable result (a checked 3-D float32 array, exit 0 with
a valid output) or one line naming the file (:class:`caio.errors.CaioInputError`, exit 2; ``predict``: the
pair skipped, the other pair still written); never another exception, a traceback or a partial output.
Files are tiny (at most 8 x 9 x 10 voxels of data); the default suite runs a few hundred cases in a few
seconds, ``-m slow`` ten times more.
"""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from caio import cli
from caio.cli import predict
from caio.errors import CaioInputError
from caio.io import MAX_ABS_INTENSITY, image_data, load_image, load_pairs, read_displacement, read_volume
from caio.pipeline import RunSteps
from caio.pipeline.models import Models
from caio.pipeline.pair import PairResult

SHAPE = (8, 9, 10)
FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SLOW = settings(FAST, max_examples=1500)
CLI_FAST = settings(FAST, max_examples=25)

FLOATS = st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-30, 1e38])
DTYPES = st.sampled_from([2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2304, 0, 999])
DIMS = st.sampled_from([0, 1, 2, 3, 8, 9, 10, -1, 32767])

header_changes = st.fixed_dictionaries(
    {},
    optional={
        "dim0": st.integers(-1, 9),
        "dims": st.lists(DIMS, min_size=7, max_size=7),
        "pixdim": st.lists(FLOATS, min_size=3, max_size=3),
        "datatype": DTYPES,
        "bitpix": st.sampled_from([0, 8, 16, 32, 64, 128]),
        "vox_offset": st.sampled_from([0.0, 100.0, 348.0, 352.0, 360.0, 4096.0, 1e12, np.nan, -1.0]),
        "scl_slope": FLOATS,
        "scl_inter": FLOATS,
        "qform_code": st.integers(-1, 5),
        "sform_code": st.integers(-1, 5),
        "quatern": st.lists(FLOATS, min_size=3, max_size=3),
        "srow": st.lists(FLOATS, min_size=12, max_size=12),
    },
)
data_changes = st.fixed_dictionaries(
    {
        "compressed": st.booleans(),
        "cut": st.sampled_from([0, 0, 0, 1, 7, 100, 2000]),  # bytes removed from the end
        "extra": st.sampled_from([0, 0, 0, 1, 16, 5000]),  # bytes appended
        "dtype": st.sampled_from(["int16", "float32", "uint8", "float64"]),
        "scale": st.sampled_from([1.0, 255.0, 1e7, 1e30]),
    }
)


def nifti_bytes(changes: dict, data: dict) -> bytes:
    """A NIfTI-1 file (header + data) of a valid 8x9x10 image, then ``changes`` written into raw header fields."""
    rng = np.random.default_rng(0)
    with np.errstate(invalid="ignore", over="ignore"):
        array = (rng.random(SHAPE) * data["scale"]).astype(data["dtype"])
    img = nib.Nifti1Image(array, np.diag([1.0, 1.2, 0.9, 1.0]))
    img.header.set_qform(img.affine, 1)
    buffer = io.BytesIO()
    img.to_file_map({"image": nib.FileHolder(fileobj=buffer), "header": nib.FileHolder(fileobj=buffer)})
    raw = bytearray(buffer.getvalue())
    hdr = np.frombuffer(bytes(raw[:348]), dtype=nib.nifti1.header_dtype).copy()
    for key, value in changes.items():
        if key == "dim0":
            hdr["dim"][0, 0] = value
        elif key == "dims":
            hdr["dim"][0, 1:] = value
        elif key == "pixdim":
            hdr["pixdim"][0, 1:4] = value
        elif key == "quatern":
            hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"] = value
        elif key == "srow":
            hdr["srow_x"][0], hdr["srow_y"][0], hdr["srow_z"][0] = value[:4], value[4:8], value[8:]
        else:
            hdr[key] = value
    raw[:348] = hdr.tobytes()
    if data["cut"]:
        raw = raw[: max(len(raw) - data["cut"], 1)]
    raw += b"\x01" * data["extra"]
    return bytes(raw)


def write_case(folder: Path, changes: dict, data: dict, name: str = "LUMIRMRI_0002_0000") -> Path:
    raw = nifti_bytes(changes, data)
    path = folder / (name + (".nii.gz" if data["compressed"] else ".nii"))
    path.write_bytes(gzip.compress(raw, 1) if data["compressed"] else raw)
    return path


def assert_one_line_naming(err: BaseException, path: Path) -> None:
    text = str(err)
    assert "\n" not in text and str(path) in text, text


def check_volume(array: np.ndarray) -> None:
    assert array.ndim == 3 and min(array.shape) >= 2 and array.dtype == np.float32
    assert np.isfinite(array).all() and float(np.abs(array).max(initial=0)) <= MAX_ABS_INTENSITY


def _read_or_refuse(path: Path, reader) -> np.ndarray | None:
    try:
        array = reader(path)
    except CaioInputError as err:
        assert_one_line_naming(err, path)
        event("refused: " + str(err).removeprefix(str(path))[2:40])  # statistics: pytest --hypothesis-show-statistics
        return None
    event("accepted")
    return array


def _property_every_reader(changes: dict, data: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_case(Path(tmp), changes, data)
        array = _read_or_refuse(path, lambda p: read_volume(p, expected_shape=None))  # predict, evaluate, qc
        if array is not None:
            check_volume(array)
        registered = _read_or_refuse(path, lambda p: image_data(load_image(p), p))  # register, warp
        if registered is not None:
            check_volume(registered)
            np.testing.assert_array_equal(registered, array)  # the affine-using path reads the same data


@FAST
@given(changes=header_changes, data=data_changes)
def test_every_reader_returns_a_checked_volume_or_one_line_naming_the_file(changes, data):
    _property_every_reader(changes, data)


@pytest.mark.slow
@SLOW
@given(changes=header_changes, data=data_changes)
def test_every_reader_property_slow(changes, data):
    _property_every_reader(changes, data)


@FAST
@given(changes=header_changes, data=data_changes, channel_first=st.booleans())
def test_displacement_reader_returns_a_finite_field_or_one_line(changes, data, channel_first):
    shape = (3, 8, 9, 10) if channel_first else (8, 9, 10, 3)
    rng = np.random.default_rng(1)
    img = nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), np.eye(4))
    buffer = io.BytesIO()
    img.to_file_map({"image": nib.FileHolder(fileobj=buffer), "header": nib.FileHolder(fileobj=buffer)})
    raw = bytearray(buffer.getvalue())
    hdr = np.frombuffer(bytes(raw[:348]), dtype=nib.nifti1.header_dtype).copy()
    for key in ("scl_slope", "scl_inter", "vox_offset", "datatype", "sform_code"):
        if key in changes:
            hdr[key] = changes[key]
    raw[:348] = hdr.tobytes()
    raw = raw[: max(len(raw) - data["cut"], 1)] + b"\x01" * data["extra"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "disp.nii.gz"
        path.write_bytes(gzip.compress(bytes(raw), 1))
        disp = _read_or_refuse(path, read_displacement)
        if disp is not None:
            assert disp.shape == (3, *SHAPE) and disp.dtype == np.float64 and np.isfinite(disp).all()


# ------------------------------------------------------------------ through the command lines


def _one_stderr_line(capsys, path: Path) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], err


@CLI_FAST
@given(changes=header_changes, data=data_changes)
def test_warp_exits_0_with_a_valid_output_or_2_with_one_line(capsys, changes, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        moving = write_case(folder, changes, data)
        disp = folder / "disp.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 3), np.float32), np.diag([1.0, 1.2, 0.9, 1.0])), str(disp))
        out = folder / "warped.nii.gz"
        capsys.readouterr()
        code = cli.main(["warp", "--disp", str(disp), "--moving", str(moving), "-o", str(out)])
        if code == 0:
            assert nib.load(str(out)).shape == SHAPE
        else:
            assert code == 2 and not out.exists() and not list(folder.glob(".*tmp"))
            _one_stderr_line(capsys, moving)


def _zero_register(pair, cfg, models, *, volumes=None, clock_start=None) -> PairResult:
    fixed, _ = volumes
    return PairResult(pair=pair, status="ok", disp=np.zeros((3, *fixed.shape), np.float32))


FAKE_STEPS = RunSteps(register=_zero_register, load_models=lambda cfg: Models(device=torch.device("cpu")))


@CLI_FAST
@given(changes=header_changes, data=data_changes)
def test_predict_registers_or_skips_the_fuzzed_pair_and_always_writes_the_good_one(capsys, changes, data):
    """The reading is real; the registration a zero field (the property is about the input side)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = root / "imagesVal"
        images.mkdir()
        rng = np.random.default_rng(3)
        for name in ("LUMIRMRI_0001_0000", "LUMIRMRI_0003_0000"):
            image = nib.Nifti1Image((rng.random(SHAPE) * 255).astype(np.float32), np.eye(4))
            nib.save(image, str(images / f"{name}.nii.gz"))
        bad = write_case(images, changes, data)
        entries = [
            {"fixed": "./imagesVal/LUMIRMRI_0001_0000.nii.gz", "moving": "./imagesVal/LUMIRMRI_0003_0000.nii.gz"},
            {"fixed": "./imagesVal/LUMIRMRI_0001_0000.nii.gz", "moving": f"./imagesVal/{bad.name}"},
        ]
        (root / "ds.json").write_text(json.dumps({"validation": entries}))
        out = root / "out"
        argv = ["--json", str(root / "ds.json"), "--input", str(root), "-o", str(out), "--shape", "any"]
        capsys.readouterr()
        code = predict.main([*argv, "--device", "cpu", "--no-progress"], steps=FAKE_STEPS)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        lines = [line for line in captured.out.splitlines() if line.startswith("[")]
        assert len(lines) == 2 and " ok " in lines[0]
        assert (out / "disp_0001_0003.nii.gz").is_file()
        if code == 0:
            assert " ok " in lines[1] and nib.load(str(out / "disp_0001_0002.nii.gz")).shape == (*SHAPE, 3)
        else:
            assert code == 1 and " skipped " in lines[1] and bad.name in lines[1], lines[1]
            assert not (out / "disp_0001_0002.nii.gz").exists()
        assert not [p for p in out.iterdir() if p.name.startswith(".")]


def _register_property(capsys, changes: dict, data: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        moving = write_case(folder, changes, data)
        fixed = folder / "fixed.nii.gz"
        image = (np.random.default_rng(4).random(SHAPE) * 255).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.2, 0.9, 1.0])), str(fixed))
        out = folder / "disp.nii.gz"
        capsys.readouterr()
        code = cli.main(["register", str(fixed), str(moving), "-o", str(out), "--device", "cpu", "--budget-s", "0.3"])
        event(f"register exit {code}")
        if code == 0:
            assert read_displacement(out, SHAPE).shape == (3, *SHAPE)
        else:
            assert code == 2 and not out.exists() and not list(folder.glob(".*tmp"))
            _one_stderr_line(capsys, moving)


@settings(CLI_FAST, max_examples=12)
@given(changes=header_changes, data=data_changes)
def test_register_exits_0_with_a_valid_output_or_2_with_one_line(capsys, changes, data):
    _register_property(capsys, changes, data)


@pytest.mark.slow
@settings(CLI_FAST, max_examples=150)
@given(changes=header_changes, data=data_changes)
def test_register_property_slow(capsys, changes, data):
    _register_property(capsys, changes, data)


@CLI_FAST
@given(changes=header_changes, data=data_changes)
def test_evaluate_exits_0_with_metrics_or_2_with_one_line_naming_the_file(capsys, changes, data):
    """A fuzzed fixed image (read for the NDV mask) against a valid zero displacement."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "imagesVal").mkdir()
        fixed = write_case(root / "imagesVal", changes, dict(data, compressed=True), name="LUMIRMRI_0001_0000")
        moving = root / "imagesVal" / "LUMIRMRI_0002_0000.nii.gz"
        nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4)), str(moving))
        entry = {"fixed": "./imagesVal/LUMIRMRI_0001_0000.nii.gz", "moving": "./imagesVal/LUMIRMRI_0002_0000.nii.gz"}
        (root / "ds.json").write_text(json.dumps({"validation": [entry]}))
        disp_dir = root / "disp"
        disp_dir.mkdir()
        nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 3), np.float32), np.eye(4)), str(disp_dir / "disp_0001_0002.nii.gz"))
        out = root / "metrics"
        argv = ["evaluate", "--json", str(root / "ds.json"), "--data-root", str(root), "--disp-dir", str(disp_dir)]
        capsys.readouterr()
        code = cli.main([*argv, "--shape", *map(str, SHAPE), "--labels", "1", "-o", str(out)])
        event(f"evaluate exit {code}")
        if code == 0:
            assert json.loads((out / "metrics.json").read_text())["pairs"][0]["status"] == "ok"
        else:
            assert code == 2 and not out.exists()
            _one_stderr_line(capsys, fixed)


# ------------------------------------------------------------------ dataset JSON

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
PATHS = st.sampled_from(
    [
        "./imagesVal/LUMIRMRI_0001_0000.nii.gz",
        "./imagesVal/LUMIRMRI_0002_0000.nii.gz",
        "../LUMIRMRI_0001_0000.nii.gz",
        "/abs/LUMIRMRI_0009_0000.nii.gz",
        "./imagesVal/LUMIRMRI_00\x001_0000.nii.gz",
        "",
        "x" * 5000 + "_0001_0000.nii.gz",
        "./imagesVal/brain.nii.gz",
    ]
)
ENTRIES = st.lists(
    st.one_of(st.fixed_dictionaries({"fixed": PATHS, "moving": PATHS}), JSON_VALUES),
    max_size=5,
)
DATASETS = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({"validation": ENTRIES}),
    st.dictionaries(st.sampled_from(["validation", "test", "training", "name"]), ENTRIES, max_size=3),
)


@FAST
@given(payload=DATASETS, nesting=st.sampled_from([0, 0, 0, 50, 100000]))
def test_dataset_json_gives_pairs_or_one_line_naming_the_file(payload, nesting):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dataset.json"
        text = json.dumps(payload)
        path.write_text("[" * nesting + text + "]" * nesting)
        try:
            pairs = load_pairs(path, tmp, check_files=False)
        except CaioInputError as err:
            assert "\n" not in str(err) and str(path) in str(err), str(err)
            return
        assert pairs and all(len(p.fixed_id) == 4 and len(p.moving_id) == 4 for p in pairs)
