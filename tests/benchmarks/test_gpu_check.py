"""bench/gpu_check.sh cannot rot: its CPU smoke variant runs every section and writes every key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_smoke_writes_one_json_with_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},  # the interpreter running the tests, activated or not
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"environment", "vfa", "brainid", "engine", "cascade", "predict", "total_s"} <= set(result)
    assert {"torch", "cuda", "gpu"} <= set(result["environment"])
    assert result["vfa"]["fp32"]["seconds"] > 0 and result["vfa"]["fp32"]["finite"]
    assert result["brainid"]["tiled"] is False and result["brainid"]["seconds"] > 0
    assert result["engine"]["seconds"] > 0 and result["engine"]["iterations"] > 0
    assert len(result["engine"]["pairs"]) == 2 and result["engine"]["cold_seconds"] > 0
    assert result["cascade"]["steps"] >= 1 and result["cascade"]["stage_factors"]
    report = result["predict"]["report"]
    assert result["predict"]["exit_code"] in (0, 1) and report["pairs"]
    assert {"seconds", "io_wait_s"} <= set(report["pairs"][0]) and "model_loading" in report
    scores = result["predict"]["runs"][0]["metrics"]  # every written field scored like the evaluator
    assert [row["status"] for row in scores.values()] == ["ok"] and scores[report["pairs"][0]["pair"]]["ndv"] >= 0
