"""Tests of caio.synth.generator / caio.synth.contrast_models (synthetic multi-contrast data) and of test_data/."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.data import require_path

from caio import spatial
from caio.cli import main as cli_main
from caio.io import LUMIR_SHAPE, load_pairs, output_names, read_volume
from caio.synth.contrast_models import TEMPLATE_CENTROIDS, SynthConfig, generator_for, synthesize_image
from caio.synth.generator import (
    brain_mask,
    canonical_labels,
    fit_template_affine,
    label_centroids,
    load_label_map_ras,
    make_subject,
    random_displacement,
    write_synthetic_dataset,
)

SMALL = (32, 48, 40)
WM, GM, CSF = (2, 41), (3, 42), (4, 43)


@pytest.fixture(scope="module")
def aseg_a(repo_dir: Path) -> np.ndarray:
    """Subject A's aseg labels on the LUMIR grid (test_data, in the repository)."""
    return np.asarray(nib.load(repo_dir / "test_data/labelsVal/LUMIRMRI_3455_0000.nii.gz").dataobj).astype(np.int32)


@pytest.fixture(scope="module")
def small_label_file(aseg_a: np.ndarray, tmp_path_factory) -> Path:
    """A 2 mm copy (80x112x96) of subject A's labels, as a NIfTI with a 2 mm RAS affine."""
    path = tmp_path_factory.mktemp("maps") / "aseg_2mm.nii.gz"
    nib.save(nib.Nifti1Image(aseg_a[::2, ::2, ::2].astype(np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def _mean(image: np.ndarray, labels: np.ndarray, values: tuple[int, ...]) -> float:
    return float(image[np.isin(labels, values)].mean())


def test_label_centroids_match_scipy():
    from scipy import ndimage

    labels = np.random.default_rng(0).integers(0, 6, (12, 14, 10))
    labels[labels == 5] = 70000  # large values go through np.unique
    got = label_centroids(labels)
    assert sorted(got) == [1, 2, 3, 4, 70000]
    for value, centroid in got.items():
        np.testing.assert_allclose(centroid, ndimage.center_of_mass(labels == value), atol=1e-9)


def test_template_centroids_match_voxelmorph_scan(data_dir: Path):
    data = np.load(require_path(data_dir / "voxelmorph_test_seg.npz"))
    seg = np.flip(np.swapaxes(data["seg"], 1, 2), axis=(0, 2)).astype(np.int32)
    assert seg.shape == LUMIR_SHAPE
    centroids = label_centroids(seg)
    for label, expected in TEMPLATE_CENTROIDS.items():
        np.testing.assert_allclose(centroids[label], expected, atol=0.051)


def test_fit_template_affine_recovers_shift_and_scale(aseg_a: np.ndarray):
    fit = fit_template_affine(aseg_a)
    np.testing.assert_allclose(fit[:, :3], np.eye(3), atol=0.002)  # table rounded to 0.1 voxel
    np.testing.assert_allclose(fit[:, 3], 0.0, atol=0.15)
    padded = np.pad(aseg_a[::2, ::2, ::2], ((5, 0), (3, 0), (7, 0)))  # 2 mm copy, shifted by (5, 3, 7) voxels
    fit = fit_template_affine(padded)
    np.testing.assert_allclose(np.diag(fit[:, :3]), [0.5, 0.5, 0.5], atol=0.01)
    np.testing.assert_allclose(fit[:, 3], [5.0, 3.0, 7.0], atol=0.6)


def test_load_label_map_ras_reorients_lia(tmp_path: Path):
    ras = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    lia = np.flip(ras, axis=(0, 2)).swapaxes(1, 2)  # inverse of the LIA -> RAS recipe
    affine = np.array([[-1, 0, 0, 2], [0, 0, 1, -3], [0, -1, 0, 3], [0, 0, 0, 1]], float)
    assert nib.aff2axcodes(affine) == ("L", "I", "A")
    nib.save(nib.Nifti1Image(lia.astype(np.int16), affine), tmp_path / "lia.nii.gz")
    np.testing.assert_array_equal(load_label_map_ras(tmp_path / "lia.nii.gz"), ras)


def test_canonical_labels_folds_cortex_and_strips_non_brain():
    labels = np.array([0, 2, 11101, 12175, 1035, 2002, 502, 165, 24, 9999])
    np.testing.assert_array_equal(canonical_labels(labels), [0, 2, 3, 42, 3, 42, 0, 0, 24, 0])


def test_random_displacement_is_smooth_bounded_and_invertible():
    disp = random_displacement(SMALL, generator_for(1, 0), max_disp=3.0)
    assert disp.shape == (1, 3, *SMALL)
    assert 0.1 < float(disp.abs().max()) < 3.5
    assert float(spatial.jacobian_determinant(disp).min()) > 0.2


def _label_r2(image: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of the brain's intensity variance explained by the per-label means."""
    brain = labels > 0
    values, lab = image[brain].astype(np.float64), labels[brain]
    _, inverse = np.unique(lab, return_inverse=True)
    means = np.bincount(inverse, weights=values) / np.bincount(inverse)
    return 1.0 - float(np.var(values - means[inverse]) / np.var(values))


def test_labels_and_image_stay_aligned(aseg_a: np.ndarray):
    clean = SynthConfig(bias_std=(0.0, 0.0), noise_std=(0.0, 0.0), gamma_log_std=0.0, thick_slice_prob=0.0)
    for config, min_r2 in ((clean, 0.8), (SynthConfig(), 0.4)):
        subject = make_subject(aseg_a[::2, ::2, ::2], ["t1", "t2"], generator_for(0, 0), SMALL, config)
        labels = subject.labels
        assert labels.shape == SMALL and set(np.unique(labels)) >= {0, *WM, *GM, *CSF}
        for contrast, image in subject.images.items():
            assert image.dtype == np.uint8 and image.shape == SMALL
            np.testing.assert_array_equal(image > 0, labels > 0)  # background exactly where labels are 0
            r2 = _label_r2(image, labels)
            assert r2 > min_r2, (contrast, r2)
            # the same labels shifted by 2 voxels explain the image much worse: the check sees misalignment
            assert _label_r2(image, np.roll(labels, 2, axis=0)) < r2 - 0.2
            if config is clean:
                wm, csf = image[np.isin(labels, WM)], image[np.isin(labels, CSF)]
                assert abs(wm.mean() - csf.mean()) > 2 * max(wm.std(), csf.std()), contrast


@pytest.mark.parametrize(
    "contrast, order",
    [
        ("t1", (WM, GM, CSF)),  # WM > GM > CSF
        ("t2", (CSF, GM, WM)),  # reversed
        ("flair", (GM, WM, CSF)),  # like T2 for tissue, dark CSF
    ],
)
def test_contrast_orderings_hold_on_average(aseg_a: np.ndarray, contrast: str, order):
    labels = canonical_labels(aseg_a[40:120:2, 60:180:2, 50:150:2])
    means = np.zeros(3)
    for seed in range(4):
        image = synthesize_image(labels, contrast, generator_for(seed, 7))[0, 0].numpy()
        means += [_mean(image, labels, values) for values in order]
    assert means[0] > means[1] > means[2], (contrast, means / 4)


def test_pd_is_flatter_than_t1(aseg_a: np.ndarray):
    labels = canonical_labels(aseg_a[40:120:2, 60:180:2, 50:150:2])
    spread = {}
    for contrast in ("t1", "pd"):
        values = []
        for seed in range(4):
            image = synthesize_image(labels, contrast, generator_for(seed, 8))[0, 0].numpy()
            tissue = [_mean(image, labels, v) for v in (WM, GM, CSF)]
            values.append((max(tissue) - min(tissue)) / np.mean(tissue))
        spread[contrast] = np.mean(values)
    assert spread["pd"] < 0.6 * spread["t1"], spread


def test_synthesize_image_rejects_empty_brain():
    from caio.errors import CaioInputError

    with pytest.raises(CaioInputError):
        synthesize_image(np.zeros((8, 8, 8), np.int32), "t1", generator_for(0))


def _read_folder(folder: Path) -> dict[str, bytes]:
    arrays = {}
    for path in sorted((folder / "imagesVal").glob("*.nii.gz")) + sorted((folder / "labelsVal").glob("*.nii.gz")):
        arr = np.asarray(nib.load(path).dataobj)
        arrays[f"{path.parent.name}/{path.name}"] = arr.dtype.str.encode() + arr.tobytes()
    return arrays


def test_same_seed_identical_files_different_seed_different(small_label_file: Path, tmp_path: Path):
    kwargs = dict(label_maps=[small_label_file], n_subjects=2, shape=SMALL)
    write_synthetic_dataset(tmp_path / "a", seed=5, **kwargs)
    write_synthetic_dataset(tmp_path / "b", seed=5, **kwargs)
    write_synthetic_dataset(tmp_path / "c", seed=6, **kwargs)
    a, b, c = (_read_folder(tmp_path / n) for n in "abc")
    assert len(a) == 8 and a == b
    assert (tmp_path / "a/LUMIR25_dataset.json").read_text() == (tmp_path / "b/LUMIR25_dataset.json").read_text()
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.startswith("imagesVal"))


def test_dataset_json_has_uni_and_cross_pairs(small_label_file: Path, tmp_path: Path):
    start = time.perf_counter()
    json_path = write_synthetic_dataset(
        tmp_path, [small_label_file], n_subjects=4, shape=SMALL, seed=1, contrasts=("t2", "flair"), first_id=4000
    )
    elapsed = time.perf_counter() - start
    data = json.loads(json_path.read_text())
    assert data["name"] == "LUMIR" and data["tensorImageShape"]["0"] == list(SMALL)
    pairs = load_pairs(json_path, tmp_path)  # checks that every file exists
    uni = [p for p in pairs if not p.is_cross_contrast]
    cross = [p for p in pairs if p.is_cross_contrast]
    assert len(uni) == 3 and len(cross) == 3 and data["numValidation"] == 6
    assert all(p.fixed_modality == "0000" and p.moving_modality in ("0001", "0002") for p in cross)
    assert all(p.fixed_id != p.moving_id for p in pairs)
    names = [name for p in pairs for name in output_names(p)]
    assert len(names) == len(set(names))
    for p in pairs:
        for path in (p.fixed, p.moving):
            image = read_volume(path, SMALL)
            labels = read_volume(Path(str(path).replace("imagesVal", "labelsVal")), SMALL)
            assert image.max() <= 255 and image.min() == 0
            np.testing.assert_array_equal(image > 0, labels > 0)
    assert elapsed < 30, f"4 small subjects took {elapsed:.1f} s"


def test_cli_synth_small_and_input_errors(small_label_file: Path, tmp_path: Path, capsys):
    rc = cli_main(
        [
            "synth",
            "--label-maps",
            str(small_label_file),
            "--output",
            str(tmp_path / "o"),
            "--n-subjects",
            "2",
            "--pairs",
            "cross",
            "--contrasts",
            "pd",
            "--shape",
            *map(str, SMALL),
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    pairs = load_pairs(tmp_path / "o/LUMIR25_dataset.json", tmp_path / "o")
    assert [(p.fixed_modality, p.moving_modality) for p in pairs] == [("0000", "0003")]
    rc = cli_main(["synth", "--label-maps", str(tmp_path / "nope"), "--output", str(tmp_path / "x")])
    assert rc == 2 and "nope" in capsys.readouterr().err
    rc = cli_main(
        ["synth", "--label-maps", str(small_label_file), "--output", str(tmp_path / "x"), "--n-subjects", "1"]
    )
    assert rc == 2


def test_mask_dilation_fills_csf_shell(aseg_a: np.ndarray):
    labels = canonical_labels(aseg_a[40:120:2, 60:180:2, 50:150:2])
    mask = brain_mask(labels, dilation=2)
    image = synthesize_image(labels, "t2", generator_for(2), mask=mask)[0, 0].numpy()
    np.testing.assert_array_equal(image > 0, mask)
    shell = mask & (labels == 0)
    assert shell.sum() > 0 and image[shell].mean() > _mean(image, labels, WM)  # CSF-bright in T2


# ----------------------------------------------------------------------------------------
# test_data/ (made by scripts/make_test_data.py)
# ----------------------------------------------------------------------------------------


def test_test_data_is_a_lumir_style_folder(repo_dir: Path):
    root = repo_dir / "test_data"
    pairs = load_pairs(root / "LUMIR25_dataset.json", root)
    assert [p.key for p in pairs] == ["3455_0000<--3454_0000", "4024_0000<--4033_0001"]
    assert [output_names(p) for p in pairs] == [["disp_3455_3454.nii.gz"], ["disp_4024_4033.nii.gz"]]
    shared = set(json.loads((root / "labels.json").read_text())["labels"])
    for p in pairs:
        for path in (p.fixed, p.moving):
            assert nib.load(path).get_data_dtype() == np.uint8
            image = read_volume(path)  # checks the 160x224x192 shape
            labels = np.asarray(nib.load(root / "labelsVal" / path.name).dataobj)
            assert image.min() == 0 and image.max() == 255
            assert ((image > 0) & (labels == 0)).sum() > 0.05 * (labels > 0).sum()  # CSF margin kept
            assert shared <= set(np.unique(labels).tolist())
    t1 = np.asarray(nib.load(root / "imagesVal/LUMIRMRI_3454_0000.nii.gz").dataobj).astype(float)
    t2 = np.asarray(nib.load(root / "imagesVal/LUMIRMRI_4033_0001.nii.gz").dataobj).astype(float)
    labels_b = np.asarray(nib.load(root / "labelsVal/LUMIRMRI_4033_0001.nii.gz").dataobj)
    assert _mean(t1, labels_b, WM) > _mean(t1, labels_b, GM) > _mean(t1, labels_b, CSF)
    assert _mean(t2, labels_b, WM) < _mean(t2, labels_b, GM) < _mean(t2, labels_b, CSF)
