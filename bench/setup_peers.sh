#!/usr/bin/env bash
# Create bench/.venv (git-ignored) with the CPU registration peers used by `python -m bench.registration`.
#
# Follows shared/specs/data_and_peers.md B1: torch 2.13.0 (CPU wheel) is installed first and pinned
# with a constraints file so that no peer can pull a CUDA torch. caio itself is installed editable.
# Usage (from anywhere):   bash bench/setup_peers.sh        (re-running is harmless)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
CONSTRAINTS="$HERE/.venv/constraints.txt"
echo "torch==2.13.0" > "$CONSTRAINTS"
PIP=("$VENV/bin/pip" install --quiet -c "$CONSTRAINTS")
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" numpy scipy nibabel SimpleITK picsl-greedy antspyx convexadam itk-elastix
# FireANTs (a peer run only on request: --methods fireants) without its dependencies: they would pull a CUDA torch
# and an old SimpleITK; what it imports (numpy, scipy, SimpleITK, tqdm, torch) is installed by this script.
"${PIP[@]}" --no-deps fireants==1.5.0
"${PIP[@]}" -e "$REPO"
"$VENV/bin/python" - <<'PY'
import importlib
for name in ("torch", "ants", "itk", "picsl_greedy", "convexAdam", "fireants", "caio"):
    mod = importlib.import_module(name)
    print(f"{name:14s} {getattr(mod, '__version__', 'ok')}")
PY
echo "peers ready in $VENV"
