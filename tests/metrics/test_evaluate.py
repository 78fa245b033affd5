"""caio.metrics.surface_distance and caio.metrics.evaluate against the official LUMIR evaluation fixture."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from caio import cli, io, spatial
from caio.cli.evaluate import parse_labels
from caio.errors import CaioInputError
from caio.metrics import surface_distance as sd
from caio.metrics.evaluate import (
    DSC,
    HD95,
    LUMIR_LABELS,
    NDV,
    TRE,
    evaluate_folder,
    evaluate_pair,
    pair_subset,
    summarize,
)

CASES = {"A": ("3455", "3454", "caseA"), "B": ("3457", "3456", "caseB")}


@pytest.fixture(scope="module")
def lumir_eval(fixtures_dir: Path) -> Path:
    return fixtures_dir / "lumir_eval"


@pytest.fixture(scope="module")
def expected(lumir_eval: Path) -> dict:
    return json.loads((lumir_eval / "expected.json").read_text())


def _volume(folder: Path, kind: str, subject: str) -> np.ndarray:
    return np.asarray(nib.load(str(folder / "ground_truth" / kind / f"LUMIRMRI_{subject}_0000.nii.gz")).get_fdata())


def assert_same_values(actual, wanted, atol: float) -> None:
    """Equal within atol, with identical NaN and +-inf patterns."""
    actual, wanted = np.asarray(actual, float), np.asarray(wanted, float)
    assert actual.shape == wanted.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(wanted))
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(wanted))
    finite = np.isfinite(wanted)
    np.testing.assert_allclose(actual[finite], wanted[finite], rtol=0, atol=atol)


# ------------------------------------------------------------------ surface distance


def _block_code(block: np.ndarray) -> int:
    return int(sum(int(block[i, j, k]) << (4 * i + 2 * j + k) for i, j, k in itertools.product((0, 1), repeat=3)))


def test_surfel_area_table_is_invariant_under_cube_symmetries_and_complement():
    table = sd.surfel_area_table()
    assert table[0] == 0 and table[255] == 0
    for code in range(256):
        block = np.array([(code >> (4 * i + 2 * j + k)) & 1 for i, j, k in itertools.product((0, 1), repeat=3)])
        block = block.reshape(2, 2, 2)
        assert table[_block_code(1 - block)] == pytest.approx(table[code], abs=1e-12)
        for perm in itertools.permutations(range(3)):
            for flips in itertools.product((False, True), repeat=3):
                moved = block.transpose(perm)
                for axis in (a for a in range(3) if flips[a]):
                    moved = np.flip(moved, axis)
                assert table[_block_code(moved)] == pytest.approx(table[code], abs=1e-12)


def test_surfel_areas_of_simple_configurations():
    table = sd.surfel_area_table()
    assert table[1] == pytest.approx(math.sqrt(3) / 8)  # one corner: one triangle
    assert table[0b11] == pytest.approx(math.sqrt(2) / 2)  # two corners along an edge: a rectangle
    assert table[0b1111] == pytest.approx(1.0)  # a full face: unit square
    # Anisotropic spacing scales a face perpendicular to axis 0 by s1 * s2.
    assert sd.surfel_area_table((3.0, 2.0, 0.5))[0b1111] == pytest.approx(2.0 * 0.5)


def test_neighbour_codes_of_a_single_voxel():
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    codes = sd.neighbour_codes(mask)
    assert codes[1, 1, 1] == 1 << 7  # voxel p itself is corner (1, 1, 1)
    assert codes[2, 2, 2] == 1  # voxel p - 1 is corner (0, 0, 0)
    assert np.count_nonzero(codes) == 8


@pytest.mark.parametrize("case", ["A", "B"])
def test_surface_distances_match_official_per_label_details(lumir_eval, expected, case):
    fixed_id, _, key = CASES[case]
    fixed = _volume(lumir_eval, "labelsVal", fixed_id)
    warped = np.load(lumir_eval / "intermediates.npz")[f"{key}_warped_moving_seg"]
    checked = 0
    for label, details in expected["cases"][case]["per_label_details"].items():
        if "n_surfels_fixed" not in details:
            continue
        dist = sd.compute_surface_distances(fixed == int(label), warped == int(label))
        assert dist.surfel_areas_a.size == details["n_surfels_fixed"]
        assert dist.surfel_areas_b.size == details["n_surfels_warped"]
        assert dist.surfel_areas_a.sum() == pytest.approx(details["surfel_area_fixed"], abs=1e-9)
        assert dist.surfel_areas_b.sum() == pytest.approx(details["surfel_area_warped"], abs=1e-9)
        directed = [
            sd.directed_percentile(dist.distances_a_to_b, dist.surfel_areas_a, 95),
            sd.directed_percentile(dist.distances_b_to_a, dist.surfel_areas_b, 95),
        ]
        assert_same_values(directed, [details["hd95_fixed_to_warped"], details["hd95_warped_to_fixed"]], 1e-9)
        checked += 1
    assert checked >= 10


def test_hd95_of_a_shifted_cube_is_the_shift():
    a = np.zeros((24, 24, 24), bool)
    a[6:16, 6:16, 6:16] = True
    b = np.roll(a, 2, axis=0)
    assert sd.hd95(a, a) == 0.0
    assert sd.hd95(a, b) == pytest.approx(2.0)
    # anisotropic spacing: the shift is along axis 0, so it scales by the axis-0 voxel size
    assert sd.hd95(a, b, spacing=(1.5, 1.0, 1.0)) == pytest.approx(3.0)


def test_directed_percentile_takes_first_distance_reaching_the_area_fraction():
    distances = np.arange(20, dtype=float)
    # cumulative area fractions k / 20: exactly 0.95 at index 18, which is taken (>=, not >)
    assert sd.directed_percentile(distances, np.ones(20), 95.0) == 18.0
    assert sd.directed_percentile(distances, np.ones(20), 100.0) == 19.0
    weighted = np.ones(20)
    weighted[-1] = 100.0  # the last surfel dominates the area
    assert sd.directed_percentile(distances, weighted, 95.0) == 19.0
    assert sd.directed_percentile(np.zeros(0), np.zeros(0), 95.0) == math.inf


def test_hd95_is_inf_when_a_mask_is_empty():
    a = np.zeros((8, 8, 8), bool)
    a[2:5, 2:5, 2:5] = True
    assert sd.hd95(a, np.zeros_like(a)) == math.inf
    assert sd.hd95(np.zeros_like(a), a) == math.inf


# ------------------------------------------------------------------ per-pair metrics


def test_lumir_label_list_has_133_values_including_background():
    assert len(LUMIR_LABELS) == len(set(LUMIR_LABELS)) == 133
    assert LUMIR_LABELS[:7] == (0, 4, 11, 23, 30, 31, 32) and LUMIR_LABELS[-1] == 207
    assert 42 not in LUMIR_LABELS and 188 not in LUMIR_LABELS


@pytest.mark.parametrize("case", ["A", "B"])
def test_evaluate_pair_reproduces_official_case(lumir_eval, expected, case):
    fixed_id, moving_id, _ = CASES[case]
    want = expected["cases"][case]
    disp = io.read_displacement(lumir_eval / "submission" / f"disp_{fixed_id}_{moving_id}.nii.gz")
    metrics = evaluate_pair(
        _volume(lumir_eval, "labelsVal", fixed_id),
        _volume(lumir_eval, "labelsVal", moving_id),
        disp,
        fixed_image=_volume(lumir_eval, "imagesVal", fixed_id),
        fixed_landmarks=_volume(lumir_eval, "landmarksVal", fixed_id),
        moving_landmarks=_volume(lumir_eval, "landmarksVal", moving_id),
        labels=want["labels"],
    )
    assert_same_values(metrics.dice_per_label, want["dice_per_label"], 1e-12)
    assert_same_values(metrics.hd95_per_label, want["hd95_per_label"], 1e-9)
    assert_same_values([metrics.dice, metrics.hd95], [want["dice_mean_nanmean"], want["hd95_mean_nanmean"]], 1e-12)
    assert list(metrics.landmark_ids) == want["tre_landmark_ids"]
    assert_same_values(metrics.tre_per_landmark, want["tre_per_landmark"], 1e-9)
    assert_same_values([metrics.tre], [want["tre_mean"]], 1e-9)
    assert metrics.ndv == pytest.approx(want["ndv_percent"], rel=1e-9, abs=1e-15)


def test_vanished_label_and_landmark_give_zero_dice_inf_hd95_nan_tre():
    fixed = np.zeros((12, 12, 12), np.int32)
    fixed[2:6, 2:6, 2:6] = 1
    fixed[8:10, 8:10, 8:10] = 2
    moving = fixed.copy()
    moving[8:10, 8:10, 8:10] = 0
    moving[0, 8:10, 8:10] = 2  # only in the first row, which no fixed voxel samples:
    disp = np.zeros((3, 12, 12, 12))
    disp[0] = 0.75  # row x samples x + 0.75, i.e. moving row x + 1
    metrics = evaluate_pair(fixed, moving, disp, fixed_landmarks=fixed, moving_landmarks=moving, labels=[1, 2, 3])
    assert metrics.dice_per_label[1] == 0.0 and metrics.hd95_per_label[1] == math.inf
    assert math.isnan(metrics.dice_per_label[2]) and math.isnan(metrics.hd95_per_label[2])  # label 3 absent
    assert metrics.hd95 == math.inf and 0 < metrics.dice < 1
    assert math.isnan(metrics.tre) and math.isnan(metrics.tre_per_landmark[1])


def test_identity_displacement_gives_perfect_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(10, 11, 12))
    metrics = evaluate_pair(labels, labels, np.zeros((3, 10, 11, 12)), fixed_image=labels, labels=[0, 1, 2, 3])
    assert metrics.dice == 1.0 and metrics.hd95 == 0.0 and metrics.ndv == 0.0
    assert metrics.tre is None


def test_per_label_bounding_boxes_do_not_change_results():
    # Labels are evaluated inside their bounding boxes; maps with negative values take the
    # whole-grid path. Both must equal a plain whole-grid computation.
    rng = np.random.default_rng(3)
    fixed = ndimage_blobs(rng, (14, 15, 16))
    moving = ndimage_blobs(rng, (14, 15, 16))
    disp = rng.normal(0, 0.8, size=(3, 14, 15, 16))
    labels = [0, 1, 2, 3, 4]
    boxed = evaluate_pair(fixed, moving, disp, labels=labels)
    negative = evaluate_pair(
        np.where(fixed == 3, -3, fixed), np.where(moving == 3, -3, moving), disp, labels=[0, 1, 2, -3, 4]
    )
    warped = spatial.warp_labels_nearest(moving, disp)
    plain_hd = [sd.hd95(fixed == x, warped == x) for x in labels]
    plain_dice = [2 * ((fixed == x) & (warped == x)).sum() / ((fixed == x).sum() + (warped == x).sum()) for x in labels]
    assert_same_values(boxed.hd95_per_label, plain_hd, 0)
    assert_same_values(negative.hd95_per_label, plain_hd, 0)
    assert_same_values(boxed.dice_per_label, plain_dice, 0)
    with pytest.raises(ValueError, match="displacement grid"):
        evaluate_pair(fixed[:-1], moving, disp, labels=labels)


def ndimage_blobs(rng: np.random.Generator, shape) -> np.ndarray:
    """Label map 0..4 from smoothed noise: compact blobs away from the corners."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    return np.digitize(noise, np.quantile(noise, [0.4, 0.55, 0.7, 0.85])).astype(np.int64)


def test_summarize_follows_official_aggregation():
    out = summarize([0.4174246014791657, 0.2542126781998081])
    assert out == {
        "mean": pytest.approx(0.3358186398394869, abs=1e-15),
        "std": pytest.approx(0.08160596163967881, abs=1e-15),
        "30": pytest.approx(0.30317625518361535),
    }
    with_inf = summarize([2.7, math.inf])
    assert with_inf["mean"] == math.inf and math.isnan(with_inf["std"]) and with_inf["30"] == math.inf
    assert summarize([1.0, 2.0, 3.0, 4.0], quantile=0.7)["30"] == pytest.approx(3.1)


def test_pair_subsets_follow_lumir_id_ranges():
    assert pair_subset("3455", "3454") == "ID"
    assert pair_subset("4015", "4014") == "OOD"
    assert pair_subset("4024", "4033") == "MM"
    assert pair_subset("0001", "0000") is None


def test_parse_labels_accepts_lumir_and_integer_lists():
    assert parse_labels(["lumir"]) == list(LUMIR_LABELS)
    assert parse_labels(["0", "2,3"]) == [0, 2, 3]
    assert parse_labels(None) is None
    with pytest.raises(CaioInputError, match="--labels"):
        parse_labels(["zero"])


# ------------------------------------------------------------------ folder / command line


def test_evaluate_folder_reproduces_official_metrics(lumir_eval, expected):
    rows, aggregates = evaluate_folder(
        lumir_eval / "eval_config.json", lumir_eval / "ground_truth", lumir_eval / "submission"
    )
    official = json.loads((lumir_eval / "official_metrics.json").read_text())
    for name in (DSC, HD95, NDV, TRE, "ID_dice"):
        for stat in ("mean", "std", "30"):
            want = official["aggregates"][name][stat]
            assert_same_values([aggregates[name][stat]], [want], 1e-12 if name != NDV else abs(want) * 1e-9)
    cases = expected["official_evaluate_L2R_case_results"]
    assert [r["pair"] for r in rows] == list(cases)
    for row in rows:
        case = cases[row["pair"]]
        assert row["status"] == "ok" and row["disp_file"].startswith("disp_")
        assert_same_values(row["dice_per_label"], case[DSC]["detailed"], 1e-12)
        assert_same_values(row["hd95_per_label"], case[HD95]["detailed"], 1e-9)
        assert_same_values(
            [row["dice"], row["hd95"], row["tre"]], [case[DSC]["mean"], case[HD95]["mean"], case[TRE]["mean"]], 1e-9
        )
        assert row["ndv"] == pytest.approx(case[NDV]["mean"], rel=1e-9, abs=1e-15)


def test_caio_evaluate_command_writes_csv_and_json(lumir_eval, tmp_path, capsys):
    out = tmp_path / "report"
    code = cli.main(
        [
            "evaluate",
            "--json",
            str(lumir_eval / "eval_config.json"),
            "--data-root",
            str(lumir_eval / "ground_truth"),
            "--disp-dir",
            str(lumir_eval / "submission"),
            "--output",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "3455_0000<--3454_0000" in printed and "mean" in printed and "p30" in printed
    official = json.loads((lumir_eval / "official_metrics.json").read_text())
    written = json.loads((out / "metrics.json").read_text())
    assert written["aggregates"][DSC] == official["aggregates"][DSC]
    assert set(written["cases"]) == set(official["cases"])
    for key, case in official["cases"].items():
        assert_same_values(written["cases"][key][HD95]["detailed"], case[HD95]["detailed"], 1e-9)
    with open(out / "metrics.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["pair"] for r in table] == list(official["cases"])
    assert float(table[0]["dice"]) == official["cases"][table[0]["pair"]][DSC]["mean"]
    assert table[1]["hd95"] == "inf" and table[1]["tre"] == "nan"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]


def test_labels_and_shape_override_and_explicit_folders(lumir_eval):
    root = lumir_eval / "ground_truth"
    rows, aggregates = evaluate_folder(
        lumir_eval / "eval_config.json",
        root,
        lumir_eval / "submission",
        labels_dir=root / "labelsVal",
        landmarks_dir=root / "landmarksVal",
        labels=[2, 3],
        expected_shape=(40, 48, 44),
        pairs_keys=["eval_pairs"],
    )
    assert rows[0]["labels"] == [2, 3] and len(rows[0]["dice_per_label"]) == 2
    assert rows[0]["dice"] == pytest.approx(np.mean([0.49853450572875035, 0.33519920974646034]), abs=1e-15)
    rows, _ = evaluate_folder(
        lumir_eval / "eval_config.json", root, lumir_eval / "submission", expected_shape=(40, 48, 45)
    )
    assert [r["status"] for r in rows] == ["invalid", "invalid"] and "expected" in rows[0]["error"]
    with pytest.raises(CaioInputError, match="labels file not found"):
        evaluate_folder(
            lumir_eval / "eval_config.json", root, lumir_eval / "submission", labels_dir=root / "imagesVal" / "nowhere"
        )
