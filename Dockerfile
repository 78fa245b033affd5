# caio: LUMIR 2025 submission image. Run exactly as the organizers do:
#   docker run --rm --ipc=host --network=none --gpus "device=0" --user $(id -u):$(id -g) \
#     -v <json>:/app/LUMIR25_dataset.json -v <data root>:/app/input -v <out>:/app/output caio-lumir25
# The CMD takes no arguments (see docs/container.md for the build/export/validate steps).
#
# BASE_IMAGE: any image with Python >= 3.10 and torch 2.x first on PATH. The default is the
# official PyTorch CUDA runtime image; CI builds with a local CPU stand-in (BASE_IMAGE=...).
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

FROM ${BASE_IMAGE}
# 1 = fail the build unless every required weight file is present and verified.
ARG REQUIRE_WEIGHTS=0
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/caio-cache/matplotlib \
    TORCH_HOME=/tmp/caio-cache/torch \
    XDG_CACHE_HOME=/tmp/caio-cache \
    NUMBA_CACHE_DIR=/app/numba-cache \
    CAIO_WEIGHTS=/app/weights
WORKDIR /app

# Runtime dependencies first (this layer is cached until pyproject.toml changes). torch comes
# from the base image (pyproject's range accepts it, so pip leaves it alone).
COPY pyproject.toml /tmp/caio-src/pyproject.toml
RUN set -eu; cd /tmp/caio-src; \
    deps=$(python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print(' '.join(repr(x) for x in d))"); \
    eval "python -m pip install $deps"
# The package itself (no -e: the source folder is removed afterwards).
COPY src /tmp/caio-src/src
RUN set -eu; cd /tmp/caio-src; touch README.md; \
    python -m pip install --no-deps --no-build-isolation . 2>/dev/null || python -m pip install --no-deps . ; \
    cd /; rm -rf /tmp/caio-src; \
    python -c "import caio.pipeline, caio.cli.predict, torch; print('caio ready, torch', torch.__version__)"; \
    python -c "from caio.engine import warm_up; print('engine CPU kernels compiled in %.1f s' % warm_up())"; \
    chmod -R a+rwX /app/numba-cache

# weights/ always exists (weights/manifest.json is tracked); the checkpoints beside it are optional.
COPY weights/ /app/weights/
COPY predict.py /app/predict.py
RUN set -eu; \
    if [ "$REQUIRE_WEIGHTS" = "1" ]; then caio weights --weights-dir /app/weights verify; fi; \
    mkdir -p /app/input /app/output /tmp/caio-cache; \
    chmod -R a+rX /app; chmod 1777 /app/output /tmp/caio-cache

CMD ["python", "-u", "predict.py"]
