"""``python tests/_run_driver.py <predict args>``: caio predict with a test double of the registration.

For subprocess tests of the run loop (signals, kills, concurrent shards, a full disk): the real
reading, writing, resume and CLI run; ``register_pair`` and ``load_models`` are replaced by
deterministic doubles. Environment knobs:

* ``CAIO_TEST_DELAY_S``: seconds each registration sleeps (default 0.1).
* ``CAIO_TEST_DEGRADED``: comma-separated pair keys reported ``degraded``.
* ``CAIO_TEST_SLOW_WRITE_S``: each NIfTI write pauses this long half-way (temporary file half written).
* ``CAIO_TEST_FSIZE``: file-size limit in bytes (``RLIMIT_FSIZE``; SIGXFSZ ignored, so a write fails with EFBIG).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fake_register_pair(pair, cfg, models, *, volumes=None, clock_start=None):
    from caio.pipeline.pair import PairResult, load_pair_volumes
    from caio.pipeline.trace import PairTrace

    start = time.monotonic() if clock_start is None else clock_start
    fixed, _moving = volumes if volumes is not None else load_pair_volumes(pair, cfg)
    time.sleep(float(os.environ.get("CAIO_TEST_DELAY_S", "0.1")))
    rng = np.random.default_rng(zlib.crc32(pair.key.encode()))
    disp = rng.standard_normal((3, *fixed.shape)).astype(np.float32)  # noise: gzip cannot shrink it
    degraded = pair.key in os.environ.get("CAIO_TEST_DEGRADED", "").split(",")
    trace = PairTrace()
    trace.record("test-double", "ran")
    return PairResult(
        pair=pair,
        status="degraded" if degraded else "ok",
        disp=disp,
        trace=trace,
        seconds=time.monotonic() - start,
        message="test double degraded" if degraded else "",
    )


def install() -> None:
    import importlib

    from caio.io import atomic
    from caio.pipeline.models import Models

    run = importlib.import_module("caio.pipeline.run")
    run.register_pair = fake_register_pair
    run.load_models = lambda cfg, device=None: Models(device=__import__("torch").device("cpu"))
    pause = float(os.environ.get("CAIO_TEST_SLOW_WRITE_S", "0"))
    if pause > 0:
        real_save = atomic._save_nifti

        def slow_save(img, tmp, gzipped, compresslevel=atomic.GZIP_LEVEL):
            Path(tmp).write_bytes(b"\0" * 1024)  # a half-written file
            time.sleep(pause)
            real_save(img, tmp, gzipped, compresslevel)

        atomic._save_nifti = slow_save
    limit = os.environ.get("CAIO_TEST_FSIZE")
    if limit:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))


if __name__ == "__main__":
    install()
    from caio.cli.predict import main

    sys.exit(main(sys.argv[1:]))
