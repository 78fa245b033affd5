"""caio predict / predict.py: layout detection, sharding, caches, CLI end to end on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import pipeline_data as data

from caio.cli.layout import detect_layout, parse_shard, prepare_cache_env, select_shard
from caio.cli.predict import main
from caio.errors import CaioInputError
from caio.io import validate_displacement_file

REPO = Path(__file__).resolve().parents[2]


def _touch(path: Path, is_dir: bool = False) -> Path:
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    return path


def test_layout_2025_is_found(tmp_path):
    _touch(tmp_path / "app/LUMIR25_dataset.json")
    _touch(tmp_path / "app/input", is_dir=True)
    layout = detect_layout(tmp_path)
    assert layout.source == "2025"
    assert (layout.json, layout.input, layout.output) == (
        tmp_path / "app/LUMIR25_dataset.json",
        tmp_path / "app/input",
        tmp_path / "app/output",
    )


def test_layout_2024_is_the_fallback(tmp_path):
    _touch(tmp_path / "LUMIR_dataset.json")
    _touch(tmp_path / "input", is_dir=True)
    _touch(tmp_path / "app/input", is_dir=True)  # 2025 data root without its JSON: not a 2025 layout
    layout = detect_layout(tmp_path)
    assert layout.source == "2024"
    assert (layout.json, layout.input, layout.output) == (
        tmp_path / "LUMIR_dataset.json",
        tmp_path / "input",
        tmp_path / "output",
    )


def test_layout_2025_wins_when_both_exist(tmp_path):
    for p in ("app/LUMIR25_dataset.json", "LUMIR_dataset.json"):
        _touch(tmp_path / p)
    for p in ("app/input", "input"):
        _touch(tmp_path / p, is_dir=True)
    assert detect_layout(tmp_path).source == "2025"


def test_layout_json_dir_of_the_organizer_example(tmp_path):
    _touch(tmp_path / "app/json_dir/test_pairs.json")
    _touch(tmp_path / "app/input", is_dir=True)
    assert detect_layout(tmp_path).json == tmp_path / "app/json_dir/test_pairs.json"


def test_layout_flags_override_each_part(tmp_path):
    _touch(tmp_path / "app/LUMIR25_dataset.json")
    _touch(tmp_path / "app/input", is_dir=True)
    other_json = _touch(tmp_path / "elsewhere/pairs.json")
    out = tmp_path / "myout"
    layout = detect_layout(tmp_path, json=other_json, output=out)
    assert (layout.json, layout.input, layout.output) == (other_json, tmp_path / "app/input", out)
    assert layout.source == "2025+flags"
    data = _touch(tmp_path / "data", is_dir=True)
    layout = detect_layout(tmp_path / "empty-root", json=other_json, input=data, output=out)
    assert (layout.json, layout.input, layout.output) == (other_json, data, out)


def test_layout_missing_everywhere_names_what_was_tried(tmp_path):
    with pytest.raises(CaioInputError) as err:
        detect_layout(tmp_path)
    assert "LUMIR25_dataset.json" in str(err.value) and "LUMIR_dataset.json" in str(err.value)
    with pytest.raises(CaioInputError, match="nope.json: dataset JSON not found"):
        detect_layout(tmp_path, json=tmp_path / "nope.json")


@pytest.mark.parametrize("n_items", [0, 1, 7, 36])
def test_shards_cover_every_pair_exactly_once(n_items):
    items = list(range(n_items))
    for n in range(1, 6):
        shards = [select_shard(items, k, n) for k in range(n)]
        assert sorted(x for s in shards for x in s) == items
        for k, shard in enumerate(shards):
            assert all(i % n == k for i in shard) and shard == sorted(shard)


def test_parse_shard_is_zero_based_and_rejects_nonsense():
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/4", "1/0", "a/b", "2"):
        with pytest.raises(CaioInputError, match="--shard"):
            parse_shard(bad)


def test_caches_move_to_tmp_when_home_is_not_writable(tmp_path):
    env = {"HOME": str(tmp_path / "no-such-home"), "TORCH_HOME": "/kept"}
    set_now = prepare_cache_env(env, uid=4242)
    assert env["TORCH_HOME"] == "/kept" and "TORCH_HOME" not in set_now
    assert env["MPLCONFIGDIR"].endswith("caio-cache-4242/matplotlib") and Path(env["MPLCONFIGDIR"]).is_dir()
    assert env["XDG_CACHE_HOME"].endswith("caio-cache-4242")
    home = tmp_path / "home"
    home.mkdir()
    assert prepare_cache_env({"HOME": str(home)}) == {}


SHAPE_ARGS = [str(n) for n in data.SHAPE]


def _argv(tmp_path, json_path, *extra, budget="3"):
    """predict arguments for the tiny dataset under ``tmp_path`` (CPU, no progress bar)."""
    return [
        "--json",
        str(json_path),
        "--input",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "out"),
        "--shape",
        *SHAPE_ARGS,
        "--device",
        "cpu",
        "--no-progress",
        "--budget-s",
        budget,
        *extra,
    ]


def _cli(tmp_path, spec, *extra, monkeypatch, capsys):
    json_path = data.make_dataset(tmp_path / "data", spec)
    argv = _argv(tmp_path, str(json_path), *extra)
    code = main(argv)
    return code, capsys.readouterr()


def test_predict_writes_valid_outputs_one_line_per_pair_and_report(tmp_path, monkeypatch, capsys):
    spec = [("0002_0000", "0001_0000"), ("0003_0000", "0002_0000"), ("0001_0000", "0003_0001")]
    code, cap = _cli(
        tmp_path,
        spec,
        "--report",
        str(tmp_path / "rep/report.json"),
        "--steps",
        "2",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0
    lines = [line for line in cap.out.splitlines() if line.startswith("[")]
    assert len(lines) == 3
    assert lines[0].startswith("[1/3] 0002_0000<--0001_0000 ok gate=") and " path=gate+engine steps=" in lines[0]
    assert "peak=" in lines[0] and "-> disp_0002_0001.nii.gz" in lines[0]
    for name in ("disp_0002_0001", "disp_0003_0002", "disp_0001_0003"):
        assert validate_displacement_file(tmp_path / "out" / f"{name}.nii.gz", data.SHAPE) is None
    report = json.loads((tmp_path / "rep/report.json").read_text())
    assert report["counts"]["ok"] == 3 and len(report["pairs"]) == 3 and report["exit_code"] == 0
    assert not (tmp_path / "out" / "report.json").exists()


def test_predict_bad_pair_exit_nonzero_others_written(tmp_path, monkeypatch, capsys):
    json_path = data.make_dataset(tmp_path / "data", [("0002_0000", "0001_0000"), ("0003_0000", "0001_0000")])
    data.write_volume(
        tmp_path / "data/imagesVal/LUMIRMRI_0003_0000.nii.gz", __import__("numpy").zeros((8, 8, 8), "float32")
    )
    code = main(_argv(tmp_path, str(json_path)))
    cap = capsys.readouterr()
    assert code == 1
    assert (tmp_path / "out/disp_0002_0001.nii.gz").is_file() and not (tmp_path / "out/disp_0003_0001.nii.gz").exists()
    bad = [line for line in cap.out.splitlines() if "0003_0000<--0001_0000" in line]
    assert len(bad) == 1 and "skipped" in bad[0] and "LUMIRMRI_0003_0000.nii.gz: shape (8, 8, 8)" in bad[0]


def test_predict_shard_and_resume(tmp_path, monkeypatch, capsys):
    spec = [("0002_0000", "0001_0000"), ("0003_0000", "0001_0000"), ("0004_0000", "0001_0000")]
    code, cap = _cli(tmp_path, spec, "--shard", "1/2", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["disp_0003_0001.nii.gz"]
    code = main(_argv(tmp_path, str(tmp_path / "data/LUMIR25_dataset.json"), "--resume"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert code == 0 and [line.split()[2] for line in lines] == ["ok", "resumed", "ok"]


def test_environment_sets_defaults_and_flags_win(monkeypatch):
    import argparse

    from caio.cli.predict import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, environ={"CAIO_BUDGET_S": "12.5", "CAIO_STEPS": "3", "CAIO_SHARD": "1/3"})
    args = parser.parse_args([])
    assert (args.budget_s, args.steps, args.shard, args.device) == (12.5, 3, "1/3", "auto")
    args = parser.parse_args(["--budget-s", "90", "--steps", "5"])
    assert (args.budget_s, args.steps) == (90.0, 5)


def test_predict_py_without_dataset_prints_one_line_and_exits_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(REPO / "predict.py"), "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "no dataset found" in errors[0] and "Traceback" not in proc.stderr


def test_predict_with_the_real_modules_on_tiny_volumes(tmp_path, capsys):
    json_path = data.make_dataset(tmp_path / "data", [("0002_0000", "0003_0001")])
    code = main(_argv(tmp_path, str(json_path), "--weights", str(tmp_path / "no-weights"), budget="4"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert validate_displacement_file(tmp_path / "out" / "disp_0002_0003.nii.gz", data.SHAPE) is None
    line = next(line for line in out.splitlines() if line.startswith("[1/1]"))
    assert " ok gate=" in line and ":cross" in line and "path=gate+engine " in line


def test_predict_qc_writes_pictures_per_pair(tmp_path, monkeypatch, capsys):
    json_path = data.make_dataset(tmp_path / "data", [("0002_0000", "0001_0000")])
    labels = __import__("numpy").zeros(data.SHAPE, "uint8")
    labels[8:24, 8:24, 8:24] = 3
    data.write_volume(tmp_path / "data/labelsVal/LUMIRMRI_0002_0000.nii.gz", labels)
    code = main(_argv(tmp_path, str(json_path), "--qc", str(tmp_path / "qc")))
    assert code == 0
    pictures = sorted(p.name for p in (tmp_path / "qc").iterdir())
    assert pictures and all(p.startswith("disp_0002_0001") and p.endswith(".png") for p in pictures)
