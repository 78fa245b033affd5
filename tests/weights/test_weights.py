"""Weights manifest, lookup by role, hash checks, fetching with a fake downloader, ``caio weights`` CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers.weights_recipe import ROLE_OF, write_deterministic_weights

from caio.cli import main as caio_main
from caio.cli import weights as weights_cli
from caio.errors import CaioInputError
from caio.weights import checkpoints, manifest
from caio.weights import fetch as fetching


def _entry(name: str, role: str, file: str, sha: str | None, urls=("https://example.invalid/a",)) -> dict:
    return {
        "name": name,
        "role": role,
        "file": file,
        "urls": list(urls),
        "sha256": sha,
        "licence": "test",
        "checkpoint_key": "state_dict",
        "member": None,
    }


def _write_manifest(folder: Path, entries: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    path.write_text(json.dumps({"version": 1, "weights": entries}))
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_downloader(source: Path, calls: list | None = None):
    """A 'download' that copies a local file."""

    def download(url: str, output: Path, member: str | None = None) -> None:
        if calls is not None:
            calls.append((url, member))
        shutil.copyfile(source, output)

    return download


# ------------------------------------------------------------------------------ manifest
def test_repo_manifest_lists_the_three_checkpoints_with_roles_keys_and_scales():
    entries = {e.name: e for e in manifest.load_manifest()}
    mono, multi, brainid = entries["VFA-LUMIR24-MonoModal"], entries["VFA-LUMIR25-MultiModal"], entries["Brain-ID"]
    assert (mono.role, mono.checkpoint_key, mono.input_scale) == ("backbone_mono", "model_state_dict", 1.0)
    assert any("17XEfRYJbnrtCVhaBCOvQVOLkWhix9PAK" in u for u in mono.urls)
    assert (multi.role, multi.checkpoint_key) == ("backbone_multi", "state_dict")
    assert multi.input_scale == pytest.approx(1 / 255)
    assert any("1cDY3isltI-uSCiivgP2zcx_5LeR8vIJ6" in u for u in multi.urls)
    assert (brainid.role, brainid.checkpoint_key, brainid.member) == ("contrast_adapter", "model", brainid.file)
    assert all(e.licence and e.file and (e.sha256 is None or len(e.sha256) == 64) for e in entries.values())
    assert len({e.file for e in entries.values()}) == 3


def test_manifest_errors_name_the_file(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(CaioInputError, match="manifest.json"):
        manifest.load_manifest(path)
    _write_manifest(tmp_path, [_entry("A", "backbone_wrong", "a.pth", None)])
    with pytest.raises(CaioInputError, match="unknown role 'backbone_wrong'"):
        manifest.load_manifest(path)
    with pytest.raises(CaioInputError, match="not found"):
        manifest.load_manifest(tmp_path / "nope.json")


# ------------------------------------------------------------------------------ resolve / verify
def test_resolve_returns_none_when_no_weights_are_present(tmp_path):
    for role in manifest.ROLES:
        assert manifest.resolve(role, tmp_path) is None  # repo manifest, empty folder
    assert manifest.resolve("backbone_mono", tmp_path / "does-not-exist") is None


def test_resolve_never_crashes_on_a_broken_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("[]")
    (tmp_path / "VFA_LUMIR24.pth").write_bytes(b"x")
    assert manifest.resolve("backbone_mono", tmp_path) is None


def test_resolve_checks_the_known_hash(tmp_path):
    data = b"pretend checkpoint"
    _write_manifest(tmp_path, [_entry("A", "backbone_mono", "a.pth", _sha(data).upper())])
    (tmp_path / "a.pth").write_bytes(data)
    assert manifest.resolve("backbone_mono", tmp_path) == tmp_path / "a.pth"
    assert manifest.resolve("backbone_multi", tmp_path) is None
    (tmp_path / "a.pth").write_bytes(data + b"!")
    assert manifest.resolve("backbone_mono", tmp_path) is None
    assert [s.state for s in manifest.verify(tmp_path)] == ["mismatch"]


def test_resolve_accepts_a_present_file_without_any_known_hash(tmp_path):
    _write_manifest(tmp_path, [_entry("A", "contrast_adapter", "a.pth", None)])
    (tmp_path / "a.pth").write_bytes(b"abc")
    assert manifest.resolve("contrast_adapter", tmp_path) == tmp_path / "a.pth"
    assert [s.state for s in manifest.verify(tmp_path)] == ["unverified"]


# ------------------------------------------------------------------------------ fetch
def test_fetch_with_known_hash_installs_the_file(tmp_path):
    source = tmp_path / "remote.bin"
    source.write_bytes(b"good weights")
    dest = tmp_path / "w"
    _write_manifest(dest, [_entry("A", "backbone_mono", "a.pth", _sha(b"good weights"))])
    calls: list = []
    path = fetching.fetch("A", dest, _fake_downloader(source, calls))
    assert path == dest / "a.pth" and path.read_bytes() == b"good weights"
    assert calls == [("https://example.invalid/a", None)]
    assert not (dest / "a.pth.sha256").exists() and not (dest / "a.pth.partial").exists()
    assert [s.state for s in manifest.verify(dest)] == ["ok"]


def test_fetch_sha_mismatch_raises_and_leaves_no_file_behind(tmp_path):
    source = tmp_path / "remote.bin"
    source.write_bytes(b"tampered weights")
    dest = tmp_path / "w"
    _write_manifest(dest, [_entry("A", "backbone_mono", "a.pth", _sha(b"good weights"))])
    with pytest.raises(CaioInputError, match="sha256"):
        fetching.fetch("A", dest, _fake_downloader(source))
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json"]
    assert manifest.resolve("backbone_mono", dest) is None


def test_fetch_without_known_hash_records_the_hash_it_saw(tmp_path):
    source = tmp_path / "remote.bin"
    source.write_bytes(b"first download")
    dest = tmp_path / "w"
    _write_manifest(dest, [_entry("A", "backbone_multi", "a.pth", None)])
    fetching.fetch("A", dest, _fake_downloader(source))
    assert (dest / "a.pth.sha256").read_text().split() == [_sha(b"first download"), "a.pth"]
    assert [s.state for s in manifest.verify(dest)] == ["recorded"]
    assert manifest.resolve("backbone_multi", dest) == dest / "a.pth"
    (dest / "a.pth").write_bytes(b"changed later")  # corruption after the fetch is detected
    assert manifest.resolve("backbone_multi", dest) is None


def test_fetch_tries_the_next_url_and_reports_all_failures(tmp_path):
    source = tmp_path / "remote.bin"
    source.write_bytes(b"w")
    dest = tmp_path / "w"
    _write_manifest(dest, [_entry("A", "backbone_mono", "a.pth", _sha(b"w"), urls=("u1", "u2"))])

    def flaky(url, output, member=None):
        if url == "u1":
            output.write_bytes(b"half")
            raise OSError("connection reset")
        shutil.copyfile(source, output)

    assert fetching.fetch("A", dest, flaky).read_bytes() == b"w"

    def broken(url, output, member=None):
        raise OSError(f"no route to {url}")

    (dest / "a.pth").unlink()
    with pytest.raises(CaioInputError, match="u1.*u2"):
        fetching.fetch("A", dest, broken)
    assert not (dest / "a.pth").exists() and not (dest / "a.pth.partial").exists()


def test_fetch_unknown_name_is_an_input_error(tmp_path):
    _write_manifest(tmp_path, [_entry("A", "backbone_mono", "a.pth", None)])
    with pytest.raises(CaioInputError, match="unknown weights 'B'"):
        fetching.fetch("B", tmp_path, _fake_downloader(tmp_path / "manifest.json"))


def test_gdown_folder_member_is_passed_to_the_downloader(tmp_path):
    source = tmp_path / "remote.bin"
    source.write_bytes(b"brainid")
    dest = tmp_path / "w"
    entry = _entry(
        "Brain-ID",
        "contrast_adapter",
        "brain_id_pretrained.pth",
        None,
        urls=("https://drive.google.com/drive/folders/xyz",),
    )
    entry["member"] = "brain_id_pretrained.pth"
    _write_manifest(dest, [entry])
    calls: list = []
    fetching.fetch("Brain-ID", dest, _fake_downloader(source, calls))
    assert calls == [("https://drive.google.com/drive/folders/xyz", "brain_id_pretrained.pth")]


# ------------------------------------------------------------------------------ CLI
def test_cli_list_and_verify_report_status_and_exit_codes(tmp_path, capsys):
    data = b"cli weights"
    _write_manifest(
        tmp_path, [_entry("A", "backbone_mono", "a.pth", _sha(data)), _entry("B", "contrast_adapter", "b.pth", None)]
    )
    assert caio_main(["weights", "--weights-dir", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert "A" in out and out.count("missing") == 2
    assert caio_main(["weights", "--weights-dir", str(tmp_path), "verify"]) == 1
    (tmp_path / "a.pth").write_bytes(data)
    assert caio_main(["weights", "--weights-dir", str(tmp_path), "verify", "A"]) == 0
    assert "ok" in capsys.readouterr().out
    assert caio_main(["weights", "--weights-dir", str(tmp_path), "verify"]) == 1  # B still missing
    assert caio_main(["weights", "--weights-dir", str(tmp_path), "verify", "C"]) == 2
    assert "unknown weights 'C'" in capsys.readouterr().err
    # the Dockerfile's spelling: option after the action
    assert caio_main(["weights", "verify", "A", "--weights-dir", str(tmp_path)]) == 0


def test_cli_verify_loads_vfa_checkpoints_strictly(tmp_path, capsys):
    import torch

    from caio.backbone.vfa import VFA

    good = _entry("V", "backbone_mono", "v.pth", None)
    good["architecture"] = "vfa"
    _write_manifest(tmp_path, [good])
    state = VFA().state_dict()
    torch.save({"model_state_dict": state}, tmp_path / "v.pth")
    assert caio_main(["weights", "--weights-dir", str(tmp_path), "verify"]) == 0
    del state["decoder.beta"]
    torch.save({"model_state_dict": state}, tmp_path / "v.pth")
    assert caio_main(["weights", "--weights-dir", str(tmp_path), "verify"]) == 1
    out = capsys.readouterr().out
    assert "unloadable" in out and "decoder.beta" in out
    assert caio_main(["weights", "--weights-dir", str(tmp_path), "verify", "--no-load"]) == 0


def test_default_weights_dir_follows_caio_weights_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("CAIO_WEIGHTS", str(tmp_path))
    assert manifest.default_weights_dir() == tmp_path
    monkeypatch.delenv("CAIO_WEIGHTS")
    assert manifest.default_weights_dir() == manifest.REPO_WEIGHTS_DIR


class _FakeGdown:
    """Stands in for the gdown module: 'Drive' is a dict id -> bytes, one folder listing."""

    def __init__(self, files: dict[str, bytes], folder: list[tuple[str, str]]):
        self.files, self.folder, self.calls = files, folder, []

    def download(self, url=None, output=None, quiet=False, fuzzy=False, id=None):
        self.calls.append(("download", url, id))
        key = id if id is not None else url.rsplit("=", 1)[-1]
        if key not in self.files:
            return None
        Path(output).write_bytes(self.files[key])
        return output

    def download_folder(self, url=None, output=None, quiet=False, skip_download=False, remaining_ok=False):
        from types import SimpleNamespace

        self.calls.append(("download_folder", url, skip_download))
        return [
            SimpleNamespace(id=i, path=f"folder/{name}", local_path=f"{output}/folder/{name}")
            for i, name in self.folder
        ]


def test_gdown_downloader_fetches_files_and_single_folder_members(tmp_path):
    fake = _FakeGdown({"ID1": b"vfa", "ID3": b"brainid"}, [("ID2", "T1w.nii.gz"), ("ID3", "brain_id_pretrained.pth")])
    fetching.gdown_download("https://drive.google.com/uc?id=ID1", tmp_path / "a.pth", gdown=fake)
    assert (tmp_path / "a.pth").read_bytes() == b"vfa"
    fetching.gdown_download(
        "https://drive.google.com/drive/folders/F", tmp_path / "b.pth", member="brain_id_pretrained.pth", gdown=fake
    )
    assert (tmp_path / "b.pth").read_bytes() == b"brainid"
    assert ("download", None, "ID2") not in fake.calls  # only the wanted member is downloaded
    with pytest.raises(CaioInputError, match="no file 'x.pth'"):
        fetching.gdown_download(
            "https://drive.google.com/drive/folders/F", tmp_path / "c.pth", member="x.pth", gdown=fake
        )
    with pytest.raises(CaioInputError, match="download failed"):
        fetching.gdown_download("https://drive.google.com/uc?id=MISSING", tmp_path / "d.pth", gdown=fake)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.pth"]


def test_gdown_missing_is_a_clear_input_error():
    assert fetching._import_gdown("json") is json  # an installed module is returned as is
    with pytest.raises(CaioInputError, match="gdown is not installed"):
        fetching._import_gdown("caio_no_such_module")


def _weights_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed as ``caio weights`` parses it."""
    parser = argparse.ArgumentParser(prog="caio weights")
    weights_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_fetch_continues_after_a_failure_and_exits_1(tmp_path, capsys):
    source = tmp_path / "remote.bin"
    source.write_bytes(b"w")
    dest = tmp_path / "w"
    _write_manifest(
        dest, [_entry("Bad", "backbone_mono", "bad.pth", "0" * 64), _entry("Good", "backbone_multi", "g.pth", None)]
    )
    calls: list = []
    args = _weights_args(["--weights-dir", str(dest), "fetch"])
    assert weights_cli.run(args, downloader=_fake_downloader(source, calls)) == 1
    assert len(calls) == 2  # both entries went through the downloader passed in
    out = capsys.readouterr().out
    assert "Bad: FAILED" in out and "sha256" in out
    assert (dest / "g.pth").read_bytes() == b"w" and not (dest / "bad.pth").exists()


def test_resolved_weights_load_and_predict_as_the_pipeline_calls_them(tmp_path):
    import torch

    from caio.backbone.vfa import VFA, load_vfa, predict_displacement

    shutil.copyfile(manifest.REPO_WEIGHTS_DIR / "manifest.json", tmp_path / "manifest.json")
    torch.manual_seed(0)
    torch.save({"epoch": 1, "state_dict": VFA().state_dict()}, tmp_path / "VFA_LUMIR25.pth")
    assert manifest.resolve("backbone_mono", tmp_path) is None
    path = manifest.resolve("backbone_multi", tmp_path)
    assert path == tmp_path / "VFA_LUMIR25.pth"
    model = load_vfa(path, torch.device("cpu"))
    assert model.config.input_scale == pytest.approx(1 / 255)
    images = [torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(s)) * 255 for s in (1, 2)]
    disp = predict_displacement(model, *images)
    assert disp.shape == (1, 3, 32, 32, 32) and torch.isfinite(disp).all() and disp.abs().max() > 0


# ------------------------------------------------------------------------------ torch version the loaders need
def _torch_lower_bound(pyproject: str) -> tuple[int, ...]:
    """The ``X.Y`` of ``"torch>=X.Y..."`` in pyproject's dependencies."""
    match = re.search(r'^\s*"torch\s*>=\s*([0-9]+(?:\.[0-9]+)*)[^"]*"', pyproject, re.MULTILINE)
    assert match, "pyproject.toml: no torch lower bound in the dependencies"
    return tuple(int(p) for p in match.group(1).split("."))


def test_torch_lower_bound_covers_the_loaders_needs(repo_dir):
    """``torch.serialization.safe_globals`` (used by load_checkpoint) exists from torch 2.5 on."""
    bound = _torch_lower_bound((repo_dir / "pyproject.toml").read_text())
    need = checkpoints.TORCH_MIN_VERSION
    assert bound >= need, f"pyproject allows torch {bound}, the loaders need {need}"
    assert checkpoints.TORCH_MIN_VERSION >= (2, 5)  # the release that introduced safe_globals
    installed = tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert installed >= checkpoints.TORCH_MIN_VERSION and hasattr(torch.serialization, "safe_globals")
    assert _torch_lower_bound('deps = [\n    "torch>=2.1,<3",\n]') == (2, 1)  # the parser reads what it should


def test_deterministic_weights_are_found_by_role_under_their_official_names(tmp_path):
    written = write_deterministic_weights(tmp_path, brainid=False)  # Brain-ID's file: tests/contrast/test_brainid.py
    assert sorted(written) == ["vfa_mono", "vfa_multi"]
    files = {e.role: e.file for e in manifest.load_manifest()}
    for name, role in ROLE_OF.items():
        found = manifest.resolve(role, tmp_path)
        assert found == (written[name] if name in written else None), role
        assert found is None or found.name == files[role]
