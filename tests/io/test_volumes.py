"""caio.io: dataset JSON, output names, volume reading, displacement writing; CLI error lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from caio import cli, io
from caio.errors import CaioInputError

VAL = "./imagesVal/LUMIRMRI_{}_{}.nii.gz"


def write_json(path: Path, payload) -> Path:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def entry(fixed: str, moving: str, fixed_mod: str = "0000", moving_mod: str = "0000") -> dict:
    return {"fixed": VAL.format(fixed, fixed_mod), "moving": VAL.format(moving, moving_mod)}


def one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


# ------------------------------------------------------------------ dataset JSON


def test_load_pairs_reads_validation_list_with_relative_paths(tmp_path):
    payload = {
        "training": [{"image": "./imagesTr/LUMIRMRI_0000_0000.nii.gz"}],
        "validation": [entry("3455", "3454"), entry("4024", "4033", "0000", "0001")],
    }
    pairs = io.load_pairs(write_json(tmp_path / "d.json", payload), tmp_path / "root", check_files=False)
    assert [p.key for p in pairs] == ["3455_0000<--3454_0000", "4024_0000<--4033_0001"]
    assert pairs[0].fixed == tmp_path / "root" / "imagesVal" / "LUMIRMRI_3455_0000.nii.gz"
    assert pairs[0].fixed_rel == VAL.format("3455", "0000")
    assert not pairs[0].is_cross_contrast and pairs[1].is_cross_contrast


def test_load_pairs_accepts_test_and_any_pair_list(tmp_path):
    payload = {"test": [entry("0001", "0000")], "eval_pairs": [entry("3457", "3456")], "name": "x"}
    path = write_json(tmp_path / "d.json", payload)
    assert [p.fixed_id for p in io.load_pairs(path, tmp_path, check_files=False)] == ["0001", "3457"]
    assert [p.fixed_id for p in io.load_pairs(path, tmp_path, keys=["eval_pairs"], check_files=False)] == ["3457"]


def test_load_pairs_checks_image_files_when_asked(tmp_path):
    path = write_json(tmp_path / "d.json", {"validation": [entry("3455", "3454")]})
    with pytest.raises(CaioInputError, match="image file not found") as err:
        io.load_pairs(path, tmp_path)
    assert "LUMIRMRI_3455_0000.nii.gz" in one_line_naming(err, tmp_path)


@pytest.mark.parametrize(
    "payload,keys,problem",
    [
        (None, None, "not found"),
        ("{not json", None, "not valid JSON"),
        ({"training": [{"image": "./imagesTr/LUMIRMRI_0000_0000.nii.gz"}]}, None, "expected key 'validation'"),
        ({"test": [entry("0001", "0000")]}, ["validation"], "key 'validation' not found"),
        ({"validation": [entry("3455", "3454"), {"fixed": VAL.format("3456", "0000")}]}, None, "needs both"),
        ({"validation": []}, None, "'validation' is empty"),
        (
            {"validation": [{"fixed": VAL.format("3455", "0000"), "moving": "../LUMIRMRI_3454_0000.nii.gz"}]},
            None,
            "leaves the data root",
        ),
        (
            {"validation": [{"fixed": "./imagesVal/brain.nii.gz", "moving": VAL.format("3454", "0000")}]},
            None,
            "_SSSS_MMMM",
        ),
    ],
)
def test_load_pairs_errors_are_one_line_naming_the_file(tmp_path, payload, keys, problem):
    path = tmp_path / "dataset.json"
    if payload is not None:
        write_json(path, payload)
    with pytest.raises(CaioInputError, match=problem) as err:
        io.load_pairs(path, tmp_path, keys=keys, check_files=False)
    message = str(err.value)
    assert "\n" not in message and "dataset.json" in message


def test_load_pairs_keeps_a_repeated_pair_once_with_a_warning(tmp_path, caplog):
    repeated = {"fixed": VAL.format("3455", "0000"), "moving": "imagesVal/LUMIRMRI_3454_0000.nii.gz"}
    path = write_json(tmp_path / "d.json", {"validation": [entry("3455", "3454"), repeated, entry("3456", "3455")]})
    pairs = io.load_pairs(path, tmp_path, check_files=False)
    assert [p.key for p in pairs] == ["3455_0000<--3454_0000", "3456_0000<--3455_0000"]
    assert sum("repeats the pair" in r.getMessage() for r in caplog.records) == 1


def test_json_paths_inside_root_and_absolute_paths_are_allowed(tmp_path):
    root = tmp_path / "root"
    assert io.resolve_data_path(root, "./imagesVal/../imagesVal/x.nii.gz") == root / "imagesVal" / "x.nii.gz"
    assert io.resolve_data_path(root, "/data/elsewhere/x.nii.gz") == Path("/data/elsewhere/x.nii.gz")
    for bad in ("../x.nii.gz", "imagesVal/../../x.nii.gz", ".."):
        with pytest.raises(CaioInputError, match="leaves the data root"):
            io.resolve_data_path(root, bad)


# ------------------------------------------------------------------ output names


@pytest.mark.parametrize(
    "fixed,moving,names",
    [
        (("3455", "0000"), ("3454", "0000"), ["disp_3455_3454.nii.gz"]),
        (("4024", "0000"), ("4033", "0001"), ["disp_4024_4033.nii.gz"]),
        (("0001", "0001"), ("0000", "0000"), ["disp_0001_0000.nii.gz", "disp_0001_0001_0000_0000.nii.gz"]),
        (("0000", "0000"), ("0002", "0002"), ["disp_0000_0002.nii.gz", "disp_0000_0000_0002_0002.nii.gz"]),
    ],
)
def test_output_names_follow_the_evaluator_rule(tmp_path, fixed, moving, names):
    path = write_json(tmp_path / "d.json", {"validation": [entry(fixed[0], moving[0], fixed[1], moving[1])]})
    pair = io.load_pairs(path, tmp_path, check_files=False)[0]
    assert io.output_names(pair) == names
    assert io.evaluated_output_name(pair) == names[-1]


def test_parse_lumir_name_cuts_subject_and_modality():
    assert io.parse_lumir_name("./imagesVal/LUMIRMRI_4033_0001.nii.gz") == ("4033", "0001")
    with pytest.raises(CaioInputError, match="_SSSS_MMMM"):
        io.parse_lumir_name("brain.nii.gz")


# ------------------------------------------------------------------ reading volumes


def save(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def test_read_volume_returns_float32_in_file_order(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    volume = io.read_volume(save(tmp_path / "v.nii.gz", array), expected_shape=(4, 5, 6))
    assert volume.dtype == np.float32 and volume.shape == (4, 5, 6)
    np.testing.assert_array_equal(volume, array)


def test_read_volume_errors(tmp_path):
    cases = [
        (save(tmp_path / "small.nii.gz", np.zeros((4, 5, 6), np.float32)), r"shape \(4, 5, 6\), expected"),
        (save(tmp_path / "nan.nii.gz", np.full((4, 5, 6), np.nan, np.float32)), "NaN"),
        (tmp_path / "missing.nii.gz", "not found"),
        (write_json(tmp_path / "text.nii.gz", "this is not an image"), "not gzip-compressed"),
        (write_json(tmp_path / "text.nii", "this is not an image" * 30), "cannot read"),
        (save(tmp_path / "four.nii.gz", np.zeros((4, 5, 6, 2), np.float32)), "3-D"),
    ]
    for path, problem in cases:
        shape = None if problem in ("NaN", "3-D") else io.LUMIR_SHAPE
        with pytest.raises(CaioInputError, match=problem) as err:
            io.read_volume(path, expected_shape=shape)
        one_line_naming(err, path)


# ------------------------------------------------------------------ writing displacements


def test_output_file_is_float32_channel_last_and_reads_back(tmp_path):
    shape = io.LUMIR_SHAPE
    axes = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    disp = np.stack(np.broadcast_arrays(axes[0] * 2.5, axes[1] * axes[2], axes[2] - 0.25))
    path = io.write_displacement(tmp_path / "disp_3455_3454.nii.gz", disp)
    image = nib.load(str(path))
    assert image.shape == (*shape, 3) and image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(image.affine, np.eye(4))
    back = io.read_displacement(path, expected_shape=shape)  # evaluator convention: get_fdata, channel-last
    assert back.shape == (3, *shape) and back.dtype == np.float64
    np.testing.assert_array_equal(back, disp.astype(np.float32))
    assert io.validate_displacement_file(path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disp_3455_3454.nii.gz"]  # no temp files left


def test_streamed_output_file_holds_the_bytes_nibabel_makes_of_the_whole_image(tmp_path):
    """The field is streamed into the (gzip) file from a channel-last view; the bytes are those of nibabel's
    in-memory image of the contiguous channel-last array, header included."""
    import gzip

    disp = np.random.default_rng(0).normal(size=(3, 9, 11, 13)).astype(np.float32)
    reference = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(disp, 0, -1)), np.eye(4))
    reference.header.set_xyzt_units("mm")
    for name in ("d.nii.gz", "d.nii"):
        path = io.write_displacement(tmp_path / name, disp)
        data = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
        assert data == reference.to_bytes()


def test_read_displacement_accepts_channel_first_and_rejects_bad_files(tmp_path):
    disp = np.random.default_rng(0).standard_normal((3, 4, 5, 6)).astype(np.float32)
    first = save(tmp_path / "first.nii.gz", disp)
    np.testing.assert_array_equal(io.read_displacement(first), disp)
    for name, array, problem in (
        ("five.nii.gz", disp.transpose(1, 2, 3, 0)[..., None, :], "got"),
        ("nan.nii.gz", np.full((4, 5, 6, 3), np.nan, np.float32), "NaN"),
    ):
        with pytest.raises(CaioInputError, match=problem):
            io.read_displacement(save(tmp_path / name, array))
    with pytest.raises(CaioInputError, match="expected"):
        io.read_displacement(first, expected_shape=(4, 5, 7))
    assert "expected float32" in io.validate_displacement_file(
        save(tmp_path / "f64.nii.gz", disp.astype(np.float64)), shape=(4, 5, 6)
    )


def test_write_displacement_refuses_wrong_layout_and_non_finite(tmp_path):
    with pytest.raises(ValueError, match="3, D0"):
        io.write_displacement(tmp_path / "d.nii.gz", np.zeros((4, 5, 6, 3)))
    with pytest.raises(ValueError, match="NaN"):
        io.write_displacement(tmp_path / "d.nii.gz", np.full((3, 4, 5, 6), np.inf))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder_gives_caio_input_error(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    disp = np.zeros((3, 4, 5, 6), np.float32)
    for folder in (tmp_path / "does" / "not" / "exist", a_file):
        with pytest.raises(CaioInputError) as err:
            io.write_displacement(folder / "disp_0001_0000.nii.gz", disp)
        one_line_naming(err, folder)
    with pytest.raises(CaioInputError) as err:
        io.write_json_atomic(a_file / "report.json", {"a": 1})
    one_line_naming(err, a_file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_write_json_atomic_writes_nan_tokens_and_leaves_no_temp_files(tmp_path):
    path = io.write_json_atomic(tmp_path / "sub" / "r.json", {"x": float("nan"), "y": float("inf")})
    assert json.loads(path.read_text())["y"] == float("inf")
    with pytest.raises(TypeError):
        io.write_json_atomic(tmp_path / "sub" / "bad.json", {"x": object()})
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["r.json"]


# ------------------------------------------------------------------ caio evaluate: user mistakes


@pytest.fixture()
def half_submission(fixtures_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The evaluation fixture with only case A's displacement file."""
    lumir_eval = fixtures_dir / "lumir_eval"
    disp_dir = tmp_path / "submission"
    disp_dir.mkdir()
    shutil.copy(lumir_eval / "submission" / "disp_3455_3454.nii.gz", disp_dir)
    return lumir_eval, disp_dir


def evaluate_args(lumir_eval: Path, disp_dir: Path, json_path: Path | None = None) -> list[str]:
    return [
        "evaluate",
        "--json",
        str(json_path or lumir_eval / "eval_config.json"),
        "--data-root",
        str(lumir_eval / "ground_truth"),
        "--disp-dir",
        str(disp_dir),
    ]


def test_evaluate_missing_displacement_reports_pair_and_exits_nonzero(half_submission, capsys):
    lumir_eval, disp_dir = half_submission
    assert cli.main(evaluate_args(lumir_eval, disp_dir)) != 0
    captured = capsys.readouterr()
    assert "3455_0000<--3454_0000" in captured.out and "missing" in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "disp_3457_3456.nii.gz" in lines[0] and "Traceback" not in captured.err


def test_evaluate_bad_json_prints_one_line_without_traceback(half_submission, tmp_path):
    lumir_eval, disp_dir = half_submission
    bad = write_json(tmp_path / "bad.json", '{"eval_pairs": [')
    env = dict(os.environ, PYTHONPATH=str(Path(io.__file__).resolve().parents[1]))
    result = subprocess.run(
        [sys.executable, "-m", "caio", *evaluate_args(lumir_eval, disp_dir, bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.json" in lines[0] and "not valid JSON" in lines[0]
    assert "Traceback" not in result.stderr


def test_field_of_view_marks_the_fixed_voxels_that_map_inside_the_moving_grid():
    from caio.io import field_of_view, resample_to_grid

    moving_affine = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm along axis 0, starting 5 voxels into the fixed grid
    moving_affine[:3, 3] = (5.0, 0.0, 0.5)
    inside = field_of_view((4, 6, 6), moving_affine, (16, 6, 5), np.eye(4))
    expected = np.zeros((16, 6, 5), bool)
    expected[5:12, :, 1:] = True  # fixed x0 in [5, 5 + 2 * 3]; x2 - 0.5 in [0, 5]: x2 >= 1 (x2 = 0 maps to -0.5)
    np.testing.assert_array_equal(inside, expected)
    ones = resample_to_grid(np.ones((4, 6, 6), np.float32), moving_affine, (16, 6, 5), np.eye(4))
    np.testing.assert_allclose(ones[inside], 1.0, atol=1e-6)  # never the zero padding
