"""Run a function as an unprivileged user, so that permission cases test the same thing as root and as not.

Root reads a chmod-000 file and writes into a mode-0555 folder, so such cases once skipped as root (a fresh
clone as root, CI in a container). :func:`run_unprivileged` forks this process; when it is root, the child
drops to ``nobody`` (uid/gid 65534, no supplementary groups) before it calls the function. It forks rather than
starting a new interpreter because the interpreter may sit where ``nobody`` cannot reach it (``/root/.pyenv``);
so whatever the function imports should be imported before the call. :func:`shared_folder` makes a folder under
the system temp dir that the child can reach (pytest's ``tmp_path`` lies under a mode-0700 folder as root).
"""

from __future__ import annotations

import io
import os
import pickle
import select
import signal
import tempfile
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
"""uid and gid of ``nobody`` / ``nogroup`` on Debian and most Linux systems."""


@dataclass(frozen=True)
class ChildResult:
    """What the child returned (``value``) and printed, and the user it ran as (``euid``, ``egid``)."""

    value: object
    stdout: str
    stderr: str
    euid: int
    egid: int


def drop_privileges() -> None:
    """Become ``nobody`` when root (no supplementary groups); do nothing otherwise."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def run_unprivileged(fn: Callable[..., object], *args, timeout: float = 120.0) -> ChildResult:
    """``fn(*args)`` in a forked child that first drops root (:func:`drop_privileges`); stdout/stderr captured.

    Raises:
        AssertionError: the child raised (its traceback in the message), died or ran past ``timeout`` seconds.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller (pytest); report through the pipe and _exit
        os.close(read_fd)
        try:
            drop_privileges()
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                value = fn(*args)
            payload = ("ok", value, out.getvalue(), err.getvalue(), os.geteuid(), os.getegid())
        except BaseException:
            payload = ("raised", traceback.format_exc())
        try:
            with os.fdopen(write_fd, "wb") as pipe:
                pickle.dump(payload, pipe)
        finally:
            os._exit(0)
    os.close(write_fd)
    data = b""
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            while True:
                ready, _, _ = select.select([pipe], [], [], timeout)
                if not ready:
                    os.kill(pid, signal.SIGKILL)
                    raise AssertionError(f"unprivileged child ran past {timeout} s")
                chunk = os.read(pipe.fileno(), 1 << 16)
                if not chunk:
                    break
                data += chunk
    finally:
        os.waitpid(pid, 0)
    if not data:
        raise AssertionError("unprivileged child died without a result")
    payload = pickle.loads(data)
    if payload[0] == "raised":
        raise AssertionError(f"unprivileged child raised:\n{payload[1]}")
    _, value, stdout, stderr, euid, egid = payload
    return ChildResult(value, stdout, stderr, euid, egid)


def shared_folder() -> Path:
    """A new folder (mode 0755) under the system temp dir, reachable by the unprivileged child; the caller removes
    it (``shutil.rmtree``)."""
    path = Path(tempfile.mkdtemp(prefix="caio-unprivileged-"))
    path.chmod(0o755)
    return path
