#!/usr/bin/env bash
# Build the submission image and run it exactly as the LUMIR organizers do, on test_data/,
# then check and evaluate every output (scripts/validate.py does the work through docker-py).
#
#   scripts/validate.sh [validate.py options]      e.g. --no-build, --out DIR, --gpu on
#
# Needs a Docker-compatible engine at DOCKER_HOST (or Docker's default socket) and the
# Python package `docker` (pip install -e ".[test]"). Environment:
#   BASE_IMAGE              build arg (default: the Dockerfile's pytorch/pytorch CUDA image)
#   CAIO_IMAGE              image tag (default localhost/caio-lumir25:validate)
#   CAIO_VALIDATE_BUDGET_S  per-pair budget inside the container (CPU host default 60)
#   CAIO_VALIDATE_STEPS     cascade steps inside the container (default: the cascade's)
# Exit status 0 only when the run and every check passed, every pair is 'ok' and ran the path expected
# for the device and the weights in weights/ (CPU: gate+engine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
for package in docker nibabel numpy; do
    if ! "$PYTHON" -c "import $package" 2>/dev/null; then
        echo "validate.sh: the Python package '$package' is missing for $PYTHON: pip install -e '.[test]' (or set PYTHON)" >&2
        exit 2
    fi
done
start=$SECONDS
status=0
"$PYTHON" scripts/validate.py "$@" || status=$?
echo "validate.sh: finished in $((SECONDS - start)) s with status $status"
exit "$status"
