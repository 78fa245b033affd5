"""Output side of a run: the output folder, writing a pair's displacement with its status, and resume.

Each written displacement records what produced it in the NIfTI header's ``descrip`` field
(:func:`status_text`, e.g. ``"caio ok gate+training-free+cascade"``), so ``--resume`` can tell an
``ok`` output from a ``degraded`` one without any extra file in the output folder
(:func:`resume_decision`). Every file goes through :func:`caio.io.atomic.replace_atomically`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from caio.errors import CaioInputError
from caio.io import Pair, output_names, validate_displacement_file, write_displacement
from caio.io.atomic import read_nifti_descrip, replace_atomically, temporary_name
from caio.pipeline.config import PipelineConfig
from caio.pipeline.pair import PairResult

log = logging.getLogger("caio.pipeline.batch")

STATUS_PREFIX = "caio "
"""Start of the ``descrip`` text caio writes; ``caio <status> <path>``."""


def status_text(status: str, path: str) -> str:
    """``descrip`` of a written displacement: ``"caio ok gate+engine"`` (at most 80 characters)."""
    return f"{STATUS_PREFIX}{status} {path or '-'}"[:80]


def parse_status_text(text: str | None) -> tuple[str, str] | None:
    """``(status, path)`` of a :func:`status_text`, ``None`` when ``text`` is not one."""
    if not text or not text.startswith(STATUS_PREFIX):
        return None
    parts = text[len(STATUS_PREFIX) :].split(" ", 1)
    return parts[0], (parts[1] if len(parts) > 1 else "")


def check_output_folder(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and prove it writable by creating and removing a file.

    Raises:
        CaioInputError: the path is a file, or the folder cannot be created or written.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise CaioInputError(f"{out_dir}: output path is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CaioInputError(f"{out_dir}: cannot create output folder ({err.strerror or err})") from None
    probe = temporary_name(out_dir / "write-probe")
    try:
        with open(probe, "xb") as fh:
            fh.write(b"caio")
        probe.unlink()
    except OSError as err:
        raise CaioInputError(f"{out_dir}: output folder is not writable ({err.strerror or err})") from None


def expected_output_shape(pair: Pair, cfg: PipelineConfig) -> tuple[int, ...]:
    """Grid of the output for ``pair``: ``cfg.expected_shape``, or the fixed image's own shape."""
    if cfg.expected_shape is not None:
        return tuple(cfg.expected_shape)
    try:
        return tuple(nib.load(str(pair.fixed)).shape[:3])
    except Exception as err:
        raise CaioInputError(f"{pair.fixed}: cannot read the image header ({err})") from None


@dataclass(frozen=True)
class ResumeDecision:
    """Whether ``--resume`` keeps a pair's outputs; ``path`` is the recorded path, ``reason`` why not."""

    keep: bool
    path: str = ""
    reason: str = ""


def resume_decision(pair: Pair, out_dir: Path, cfg: PipelineConfig) -> ResumeDecision:
    """Keep a pair only when every output exists, records status ``ok`` and is a valid displacement.

    Temporary files (``.<name>.<pid>-<hex>.tmp``) never match an output name, so a leftover
    of a killed run cannot make a pair look done.
    """
    names = output_names(pair)
    if not all((out_dir / n).is_file() for n in names):
        return ResumeDecision(False)
    recorded = parse_status_text(read_nifti_descrip(out_dir / names[0]))
    if recorded is None:
        return ResumeDecision(False, reason="earlier output has no recorded status")
    if recorded[0] != "ok":
        return ResumeDecision(False, reason=f"earlier output was {recorded[0]} ({recorded[1]})")
    try:
        shape = expected_output_shape(pair, cfg)
    except CaioInputError as err:
        return ResumeDecision(False, reason=str(err))
    for name in names:
        reason = validate_displacement_file(out_dir / name, shape)
        if reason is not None:
            return ResumeDecision(False, reason=f"earlier output invalid: {reason}")
    return ResumeDecision(True, path=recorded[1])


def write_outputs(result: PairResult, disp: np.ndarray, out_dir: Path) -> list[Path]:
    """Write ``disp`` under every output name of ``result.pair``, each atomically, status in the header."""
    names = output_names(result.pair)
    descrip = status_text(result.status, result.path)
    first = write_displacement(out_dir / names[0], disp, descrip=descrip)
    written = [first]
    for name in names[1:]:  # same bytes: copy to a temporary name, then rename
        written.append(replace_atomically(out_dir / name, lambda tmp: shutil.copyfile(first, tmp)))
    return written


def write_pair(result: PairResult, disp: np.ndarray, out_dir: Path) -> PairResult:
    """Write a pair's outputs; on failure the pair becomes ``failed`` (no file left behind). Never raises.

    Runs in the writer thread of :func:`caio.pipeline.batch.run`; sets ``result.outputs``,
    ``result.write_s`` and, on failure, ``status`` and ``message``.
    """
    start = time.monotonic()
    try:
        result.outputs = [str(p) for p in write_outputs(result, disp, out_dir)]
        outcome, detail = "ran", ""
    except (CaioInputError, ValueError, OSError) as err:
        result.status, result.message = "failed", f"cannot write output: {err}"
        result.outputs = []
        outcome, detail = "failed", str(err)
    result.write_s = time.monotonic() - start
    result.trace.record("write", outcome, result.write_s, detail)
    return result
