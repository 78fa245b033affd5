"""End to end: scripts/validate.sh builds the image and runs it as the organizers do (slow).

Skipped when no Docker-compatible engine answers (DOCKER_HOST or Docker's default socket),
when docker-py is missing, or when test_data/ has not been built.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _engine_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=10).ping()
        return True
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "test_data" / "LUMIR25_dataset.json").is_file(), reason="test_data/ not built")
@pytest.mark.skipif(
    not _engine_available(), reason="no Docker-compatible engine (see shared/tools/container-runtime.sh)"
)
def test_validate_sh_builds_runs_and_checks_the_container(tmp_path):
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "validate.sh"), "--summary", str(summary_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads(summary_path.read_text())
    pairs = json.loads((REPO / "test_data" / "LUMIR25_dataset.json").read_text())["validation"]
    assert summary["container_exit"] == 0 and summary["ok"] and not summary["problems"]
    assert len(summary["pairs"]) == len(pairs) and all(p["valid"] for p in summary["pairs"])
    assert "validate: PASS" in proc.stdout


def test_validate_sh_names_a_missing_python_package_in_one_line_without_a_traceback(tmp_path):
    import sys

    bare = tmp_path / "python-without-site-packages"  # the real interpreter, as on a machine with nothing installed
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "validate.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(bare)},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'docker' is missing" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
