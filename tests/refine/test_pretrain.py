"""``caio pretrain`` (caio.refine.pretrain): resume, weights file, errors."""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
import pytest
import torch

from caio.cli import main as cli_main
from caio.cli import pretrain as pretrain_cli
from caio.errors import CaioInputError
from caio.refine import pretrain
from caio.refine.cascade import refine
from caio.refine.settings import CascadeConfig

SHAPE = (20, 24, 18)
CFG = CascadeConfig(base_channels=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def volume_folder(tmp_path):
    folder = tmp_path / "vols"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for k in range(4):
        low = torch.rand(1, 1, 5, 5, 5, generator=gen)
        vol = torch.nn.functional.interpolate(low, size=SHAPE, mode="trilinear", align_corners=True)[0, 0] * 255
        nib.save(nib.Nifti1Image(vol.numpy().astype(np.float32), np.eye(4)), str(folder / f"subj{k}_T1.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), np.eye(4)), str(folder / "subj0_seg.nii.gz"))
    return folder


def _volumes(folder):
    return pretrain.load_volumes(pretrain.find_volumes(folder))


def test_find_volumes_skips_label_files(volume_folder):
    names = [p.name for p in pretrain.find_volumes(volume_folder)]
    assert names == [f"subj{k}_T1.nii.gz" for k in range(4)]


def test_resume_continues_exactly_like_a_straight_run(volume_folder, tmp_path):
    volumes = _volumes(volume_folder)
    straight = pretrain.train(volumes, CFG, steps=6, lr=1e-3, seed=3, progress=False)
    ckpt = tmp_path / "run.ckpt"
    first = pretrain.train(
        volumes, CFG, steps=6, lr=1e-3, seed=3, checkpoint=ckpt, checkpoint_every=2, stop_after=4, progress=False
    )
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    resumed = pretrain.train(
        volumes, CFG, steps=6, lr=1e-3, seed=3, checkpoint=ckpt, checkpoint_every=2, resume=True, progress=False
    )
    s_straight, s_first, s_resumed = (n.state_dict() for n in (straight, first, resumed))
    assert all(torch.equal(s_straight[k], s_resumed[k]) for k in s_straight)
    assert not all(torch.equal(s_straight[k], s_first[k]) for k in s_straight)  # 4 steps != 6 steps


def test_resume_without_checkpoint_is_an_input_error(volume_folder, tmp_path):
    with pytest.raises(CaioInputError, match="missing.ckpt"):
        pretrain.train(
            _volumes(volume_folder), CFG, steps=2, checkpoint=tmp_path / "missing.ckpt", resume=True, progress=False
        )


def test_cli_writes_a_small_weights_file_that_refine_loads(volume_folder, tmp_path):
    out = tmp_path / "w.pt"
    parser = argparse.ArgumentParser()
    pretrain_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            str(volume_folder),
            "--output",
            str(out),
            "--steps",
            "3",
            "--lr",
            "1e-3",
            "--checkpoint-every",
            "2",
            "--stage-factors",
            "2",
            "1",
        ]
    )
    # the default networks: check the file layout and that refine accepts it
    assert pretrain_cli.run(args) == 0
    payload = torch.load(out, weights_only=True)
    assert payload["format_version"] == 1 and payload["arch"]["n_stages"] == 2
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values())
    assert out.stat().st_size < 10e6
    cfg = CascadeConfig(stage_factors=(2, 1), residual_scales=(1.0, 0.05), steps=1)
    fixed, moving = _volumes(volume_folder)[:2]
    disp, report = refine(fixed, moving, torch.zeros(1, 3, *SHAPE), cfg, init_state=out)
    assert disp.shape == (1, 3, *SHAPE) and report.steps == 1


def test_cli_reports_a_folder_without_volumes_in_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["pretrain", str(empty), "--output", str(tmp_path / "w.pt")]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
