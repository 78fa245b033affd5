"""``python tests/helpers/run_driver.py <predict args>``: caio predict with a test double of the registration.

For subprocess tests of the run loop (signals, kills, concurrent shards, a full disk): the real
reading, writing, resume and CLI run; the registration and the model loading are deterministic
doubles passed in as :class:`caio.pipeline.RunSteps` (no module attribute is replaced). Environment knobs:

* ``CAIO_TEST_DELAY_S``: seconds each registration sleeps (default 0.1).
* ``CAIO_TEST_DEGRADED``: comma-separated pair keys reported ``degraded``.
* ``CAIO_TEST_SLOW_WRITE_S``: before each pair's real write, a half-written temporary file of its first
  output (made by :func:`caio.io.atomic.replace_atomically`, so a signal handler finds it) lingers this long.
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


class _Abandoned(Exception):
    """Raised inside a slow write to drop its half-written temporary file (``replace_atomically`` removes it)."""


def slow_write(pause_s: float):
    """A write step: a half-written temporary file of the first output for ``pause_s`` seconds, then the real write."""
    from caio.io import output_names
    from caio.io.atomic import replace_atomically
    from caio.pipeline.outputs import write_pair

    def half_write(tmp: Path) -> None:
        tmp.write_bytes(b"\0" * 1024)  # a half-written file, registered as a live temporary
        time.sleep(pause_s)
        raise _Abandoned

    def write(result, disp, out_dir):
        try:
            replace_atomically(Path(out_dir) / output_names(result.pair)[0], half_write)
        except _Abandoned:
            pass
        return write_pair(result, disp, out_dir)

    return write


def fake_load_models(cfg, device=None):
    import torch

    from caio.pipeline.models import Models

    return Models(device=torch.device("cpu"))


def driver_steps():
    """The run steps of this driver: the doubles above, the real reading and (unless slowed) writing."""
    from caio.pipeline import RunSteps

    pause = float(os.environ.get("CAIO_TEST_SLOW_WRITE_S", "0"))
    if pause > 0:
        return RunSteps(register=fake_register_pair, load_models=fake_load_models, write=slow_write(pause))
    return RunSteps(register=fake_register_pair, load_models=fake_load_models)


def limit_file_size() -> None:
    """``CAIO_TEST_FSIZE``: a real process limit on file sizes (SIGXFSZ ignored, so a write fails with EFBIG)."""
    limit = os.environ.get("CAIO_TEST_FSIZE")
    if limit:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))


if __name__ == "__main__":
    limit_file_size()
    from caio.cli.predict import main

    sys.exit(main(sys.argv[1:], steps=driver_steps()))
