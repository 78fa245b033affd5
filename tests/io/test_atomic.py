"""Atomic writes survive a power loss: the file is synced before the rename, the folder after it (issue 30 item 8).

``os.fsync`` and ``os.replace`` are wrapped (pytest's ``monkeypatch`` on the ``os`` module, restored after each test)
by recorders that call the real functions and note which path each file descriptor names (``/proc/self/fd``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from caio.errors import CaioInputError
from caio.io import atomic


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, Path]]:
    """``("fsync", path)`` and ``("replace", target)`` in the order the process made them."""
    seen: list[tuple[str, Path]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        seen.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst) -> None:
        seen.append(("replace", Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def _order(calls: list[tuple[str, Path]], target: Path) -> list[str]:
    """The calls as ``fsync tmp`` / ``replace`` / ``fsync folder`` (anything else named as it is)."""
    names = []
    for kind, path in calls:
        if kind == "replace":
            names.append("replace" if path == target else f"replace {path}")
        elif path == target.parent:
            names.append("fsync folder")
        elif atomic.is_temporary(path) and path.name.startswith(f".{target.name}."):
            names.append("fsync tmp")
        else:
            names.append(f"fsync {path}")
    return names


@pytest.mark.parametrize("kind", ["nifti", "json", "text"])
def test_each_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after_it(tmp_path, calls, kind):
    target = tmp_path / {"nifti": "disp.nii.gz", "json": "report.json", "text": "notes.txt"}[kind]
    if kind == "nifti":
        atomic.write_nifti_atomic(target, np.zeros((4, 5, 6, 3), np.float32))
    elif kind == "json":
        atomic.write_json_atomic(target, {"a": 1})
    else:
        atomic.write_text_atomic(target, "hello")
    assert _order(calls, target) == ["fsync tmp", "replace", "fsync folder"]
    assert target.is_file() and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_failing_file_sync_leaves_the_target_untouched_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(CaioInputError, match="report.json: cannot write"):
        atomic.write_json_atomic(target, {"a": 1})
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP])
def test_a_folder_that_refuses_fsync_still_gets_the_file(tmp_path, monkeypatch, code):
    """Some file systems cannot sync a folder: the write stands (the file's own sync still ran and must succeed)."""
    real_fsync, synced = os.fsync, []

    def refuses_folders(fd: int) -> None:
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(code, os.strerror(code))
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", refuses_folders)
    path = atomic.write_text_atomic(tmp_path / "a.txt", "x")
    assert path.read_text() == "x" and len(synced) == 1

    def refuses_all(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refuses_all)
    with pytest.raises(OSError):  # the same refusal on a file is an error: its bytes may not be on disk
        atomic.fsync_path(path)


def test_fsync_path_closes_what_it_opens(tmp_path):
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        atomic.fsync_path(tmp_path, folder=True)
    atomic.write_text_atomic(tmp_path / "b.txt", "y")
    assert len(os.listdir("/proc/self/fd")) == before
