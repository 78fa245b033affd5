"""Input-side bad inputs (issue 13 item 5), each through a real command-line entry.

Image-level problems are checked through ``caio register`` and ``caio warp`` (``caio.cli.main``)
and all together in one ``predict`` run beside a good pair, which must still be written.
Dataset-JSON problems go through ``caio.cli.predict.main``. Every failure must be: the
documented exit status (2 for a user mistake that stops the command, 1 for a ``predict`` run
that skipped a pair), one stderr line naming the file and the problem, no traceback.
The output-side cases (unwritable folder, full disk ...) are in the pipeline's tests.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.unprivileged import run_unprivileged

from caio import cli
from caio.cli import predict

SHAPE = (12, 14, 10)


def smooth_image(seed: int = 0, shape=SHAPE) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    a = gaussian_filter(np.random.default_rng(seed).random(shape), 2)
    return ((a - a.min()) / (a.max() - a.min()) * 255).astype(np.float32)


def save(path: Path, array: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------ bad image files


def _truncated(path: Path) -> Path:
    save(path, smooth_image())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _symlink_loop(path: Path) -> Path:
    other = path.with_name("loop_b.nii.gz")
    os.symlink(other, path)
    os.symlink(path, other)
    return path


def _through_a_file(path: Path) -> Path:
    path.with_name("plain").write_text("x")
    return path.with_name("plain") / "image.nii.gz"


BAD_IMAGES = {
    # name: (make(path) -> path, problem in the message)
    "missing_file": (lambda p: p, "image file not found"),
    "zero_byte_file": (lambda p: (p.write_bytes(b""), p)[1], "empty file (0 bytes)"),
    "directory_instead_of_file": (lambda p: (p.mkdir(), p)[1], "is a folder"),
    "fifo_unreadable": (_fifo, "not a regular file"),
    "path_through_a_file": (_through_a_file, "a folder in the path is a file"),
    "symlink_loop": (_symlink_loop, "symbolic link loop"),
    "garbage_bytes_named_nii_gz": (lambda p: (p.write_bytes(os.urandom(500)), p)[1], "not gzip-compressed"),
    "garbage_inside_gzip": (lambda p: (p.write_bytes(gzip.compress(b"no header" * 50)), p)[1], "cannot read"),
    "truncated_nii_gz": (_truncated, "truncated or corrupt"),
    "two_d_image": (lambda p: save(p, smooth_image()[:, :, 0]), "2-D image"),
    "two_d_stored_as_3d": (lambda p: save(p, smooth_image()[:, :, :1]), "2-D image"),
    "five_d_image": (lambda p: save(p, np.zeros((*SHAPE, 2, 2), np.float32)), "5-D image"),
    "four_d_two_channels": (lambda p: save(p, np.zeros((*SHAPE, 2), np.float32)), "4-D image"),
    "nan_values": (lambda p: save(p, np.where(smooth_image() > 200, np.nan, smooth_image())), "NaN"),
    "inf_values": (lambda p: save(p, np.where(smooth_image() > 200, np.inf, smooth_image())), "infinite"),
    "huge_values_1e30": (lambda p: save(p, smooth_image() * np.float32(1e28)), "intensity"),
    "complex_dtype": (lambda p: save(p, smooth_image().astype(np.complex64)), "not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_register_refuses_bad_moving_image_with_one_line(tmp_path, capsys, case):
    make, problem = BAD_IMAGES[case]
    bad = make(tmp_path / "moving.nii.gz")
    fixed = save(tmp_path / "fixed.nii.gz", smooth_image())
    out = tmp_path / "disp.nii.gz"
    assert cli.main(["register", str(fixed), str(bad), "-o", str(out), "--device", "cpu"]) == 2
    one_error_line(capsys, str(bad), problem, "caio register: error:")
    assert not out.exists()


@pytest.mark.parametrize("case", ["zero_byte_file", "symlink_loop", "nan_values", "directory_instead_of_file"])
def test_warp_refuses_bad_displacement_or_image(tmp_path, capsys, case):
    make, problem = BAD_IMAGES[case]
    disp = save(tmp_path / "disp.nii.gz", np.zeros((*SHAPE, 3), np.float32))
    bad = make(tmp_path / "bad.nii.gz")
    out = tmp_path / "w.nii.gz"
    for args in (["--disp", str(bad), "--moving", str(disp)], ["--disp", str(disp), "--moving", str(bad)]):
        if case == "nan_values" and args[1] == str(bad):
            continue  # a NaN image is not a (3-channel) displacement; covered by test_io
        assert cli.main(["warp", *args, "-o", str(out)]) == 2
        one_error_line(capsys, str(bad), problem)
    assert not out.exists()


def test_unreadable_file_by_permissions(shared_tmp_path):
    """chmod 000: root reads it anyway, so ``caio register`` runs in a child that drops root
    (tests/helpers/unprivileged.py) and gets the same refusal as a normal user, as root or not."""
    bad = save(shared_tmp_path / "locked.nii.gz", smooth_image())
    bad.chmod(0)
    fixed = save(shared_tmp_path / "fixed.nii.gz", smooth_image())
    out = shared_tmp_path / "d.nii.gz"
    shared_tmp_path.chmod(0o777)  # the output folder is writable: only the moving image is refused
    child = run_unprivileged(cli.main, ["register", str(fixed), str(bad), "-o", str(out), "--device", "cpu"])
    assert child.euid != 0 and child.egid != 0  # the check ran without root's override
    assert child.value == 2, child.stderr
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in child.stderr, child.stderr
    assert str(bad) in lines[0] and "ermission denied" in lines[0] and "caio register: error:" in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.uint8])
def test_integer_and_float64_images_are_accepted_and_converted(tmp_path, capsys, dtype):
    labels = (smooth_image() / 16).astype(dtype)
    moving = save(tmp_path / "m.nii.gz", labels)
    disp = save(tmp_path / "disp.nii.gz", np.zeros((*SHAPE, 3), np.float32))
    for extra, out_dtype in (([], np.float32), (["--nearest"], np.dtype(dtype))):
        out = tmp_path / f"w{len(extra)}.nii.gz"
        assert cli.main(["warp", "--disp", str(disp), "--moving", str(moving), "-o", str(out), *extra]) == 0
        image = nib.load(str(out))
        assert image.get_data_dtype() == out_dtype
        np.testing.assert_allclose(np.asarray(image.dataobj), labels, atol=1e-4)  # zero field: the image itself
    assert capsys.readouterr().err == ""


def test_four_d_image_with_one_channel_is_taken_as_3d(tmp_path, capsys):
    image = smooth_image()
    moving = save(tmp_path / "m.nii.gz", image[..., None])
    disp = save(tmp_path / "disp.nii.gz", np.zeros((*SHAPE, 3), np.float32))
    out = tmp_path / "w.nii.gz"
    assert cli.main(["warp", "--disp", str(disp), "--moving", str(moving), "-o", str(out)]) == 0
    np.testing.assert_allclose(nib.load(str(out)).get_fdata(), image, atol=1e-4)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ dataset JSON (predict)

VAL = "./imagesVal/LUMIRMRI_{}_0000.nii.gz"


def predict_args(json_path: Path, root: Path, out: Path) -> list[str]:
    return [
        "--json", str(json_path), "--input", str(root), "-o", str(out), "--shape", "any", "--device", "cpu",
        "--mode", "training-free", "--no-cascade", "--budget-s", "10", "--no-progress",
    ]  # fmt: skip


def entry(fixed: str, moving: str) -> dict:
    return {"fixed": VAL.format(fixed), "moving": VAL.format(moving)}


@pytest.fixture()
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    for i, subject in enumerate(("0001", "0002")):
        save(root / VAL.format(subject), smooth_image(i))
    return root


BAD_JSON = {
    "malformed_json": ('{"validation": [', "not valid JSON"),
    "no_pair_list": ({"name": "LUMIR", "training": [{"image": VAL.format("0001")}]}, "expected key 'validation'"),
    "empty_pair_list": ({"validation": []}, "'validation' is empty"),
    "entry_without_moving": (
        {"validation": [entry("0001", "0002"), {"fixed": VAL.format("0001")}]},
        "missing 'moving'",
    ),
    "path_leaves_input_folder": (
        {
            "validation": [
                entry("0001", "0002"),
                {"fixed": VAL.format("0001"), "moving": "../LUMIRMRI_0009_0000.nii.gz"},
            ]
        },
        "leaves the data root",
    ),
    "wrong_lumir_file_name": (
        {"validation": [entry("0001", "0002"), {"fixed": VAL.format("0001"), "moving": "./imagesVal/brain.nii.gz"}]},
        "_SSSS_MMMM",
    ),
    "top_level_list": ([entry("0001", "0002")], "top level must be an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_predict_refuses_bad_dataset_json_before_any_work(tmp_path, dataset, capsys, case):
    payload, problem = BAD_JSON[case]
    json_path = tmp_path / "dataset.json"
    json_path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    out = tmp_path / "out"
    assert predict.main(predict_args(json_path, dataset, out)) == 2
    one_error_line(capsys, "dataset.json", problem, "caio predict: error:")
    assert not out.exists() or not any(out.iterdir())


def test_predict_json_that_is_a_folder_or_missing(tmp_path, dataset, capsys):
    # predict's layout detection answers "not found" for a folder too (cli/predict.py, not io)
    for json_path, problem in ((tmp_path / "folder.json", "not found"), (tmp_path / "none.json", "not found")):
        if "folder" in json_path.name:
            json_path.mkdir()
        assert predict.main(predict_args(json_path, dataset, tmp_path / "out")) == 2
        one_error_line(capsys, str(json_path), problem)


def test_predict_same_pair_twice_registers_it_once_with_a_warning(tmp_path, dataset, capsys, caplog):
    json_path = tmp_path / "dataset.json"
    twice = {"fixed": VAL.format("0001"), "moving": "imagesVal/../imagesVal/LUMIRMRI_0002_0000.nii.gz"}
    json_path.write_text(json.dumps({"validation": [entry("0001", "0002"), twice]}))
    out = tmp_path / "out"
    assert predict.main(predict_args(json_path, dataset, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["disp_0001_0002.nii.gz"]
    repeats = [r for r in caplog.records if "repeats the pair" in r.getMessage()]
    assert len(repeats) == 1 and "dataset.json" in repeats[0].getMessage()
    assert capsys.readouterr().err == ""


def test_predict_skips_each_bad_image_and_still_writes_the_good_pair(tmp_path, dataset, capsys):
    """One run: a good pair (moving given by an absolute path: allowed) beside bad images and pairs."""
    images = dataset / "imagesVal"
    pairs = [{"fixed": VAL.format("0001"), "moving": str(images / "LUMIRMRI_0002_0000.nii.gz")}]
    expected = {}
    for n, case in enumerate(
        [
            "missing_file",
            "zero_byte_file",
            "symlink_loop",
            "truncated_nii_gz",
            "nan_values",
            "huge_values_1e30",
            "five_d_image",
            "fifo_unreadable",
            "garbage_bytes_named_nii_gz",
        ]
    ):
        subject = f"{n + 10:04d}"
        make, problem = BAD_IMAGES[case]
        bad = make(images / f"LUMIRMRI_{subject}_0000.nii.gz")
        pairs.append({"fixed": VAL.format("0001"), "moving": VAL.format(subject)})
        expected[f"0001_0000<--{subject}_0000"] = (bad.name, problem)
    save(images / "LUMIRMRI_0030_0000.nii.gz", smooth_image(shape=(10, 14, 10)))  # another shape than the fixed
    pairs.append({"fixed": VAL.format("0001"), "moving": VAL.format("0030")})
    expected["0001_0000<--0030_0000"] = ("LUMIRMRI_0030_0000.nii.gz", "differs from fixed")
    json_path = tmp_path / "dataset.json"
    json_path.write_text(json.dumps({"validation": pairs}))
    out = tmp_path / "out"
    assert predict.main(predict_args(json_path, dataset, out)) == 1
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["disp_0001_0002.nii.gz"]
    assert nib.load(str(out / "disp_0001_0002.nii.gz")).shape == (*SHAPE, 3)
    lines = {line.split()[1]: line for line in captured.out.splitlines() if line.startswith("[")}
    assert " ok " in lines["0001_0000<--0002_0000"]
    for key, (name, problem) in expected.items():
        assert " skipped " in lines[key] and name in lines[key] and problem in lines[key], lines[key]
    assert "Traceback" not in captured.err
    err = captured.err.strip().splitlines()
    summary = [line for line in err if line.startswith("caio predict:")]
    assert len(summary) == 1 and f"{len(expected)} pair(s)" in summary[0]
    per_pair = [line for line in err if not line.startswith("caio predict:")]  # log lines, when they reach stderr
    for name, problem in expected.values():  # at most one line per bad pair, naming the file and the problem
        hits = [line for line in per_pair if name in line]
        assert len(hits) <= 1 and all(problem in line for line in hits), hits
    assert len(per_pair) <= len(expected)
