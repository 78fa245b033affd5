#!/usr/bin/env bash
# Download the third-party weights listed in weights/manifest.json (build-time step, needs network).
#
#   scripts/fetch_weights.sh                          # all entries, into weights/
#   scripts/fetch_weights.sh VFA-LUMIR24-MonoModal    # only the named ones
#   CAIO_WEIGHTS=/somewhere scripts/fetch_weights.sh  # another folder
#
# gdown (Google Drive downloader) is installed here if missing; it is not a runtime dependency
# of caio. Files are downloaded to <file>.partial, hash-checked against the manifest and only
# then renamed; when the manifest has no sha256 the observed hash is written to <file>.sha256.
# Afterwards `caio weights verify` checks everything (also run by the Docker build with
# REQUIRE_WEIGHTS=1). The weights carry their own licences (see weights/README.md): never commit them.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${CAIO_WEIGHTS:-$repo/weights}"
PYTHON="${PYTHON:-python}"

if ! "$PYTHON" -c "import gdown" 2>/dev/null; then
    echo "installing gdown (build-time only)" >&2
    "$PYTHON" -m pip install --quiet "gdown>=5.1"
fi
if ! "$PYTHON" -c "import caio" 2>/dev/null; then
    echo "caio is not installed: pip install -e $repo first" >&2
    exit 1
fi
mkdir -p "$dest"
"$PYTHON" -m caio.cli weights --weights-dir "$dest" fetch "$@"
"$PYTHON" -m caio.cli weights --weights-dir "$dest" verify "$@"
