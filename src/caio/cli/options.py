"""Option helpers shared by every ``caio`` command, so that one flag has one name and one meaning.

* ``-o/--output``: where a command writes (``--out`` is kept as a hidden, deprecated alias).
* ``--shape D0 D1 D2``: a grid (``D0xD1xD2`` in one word is still accepted, deprecated).
* ``--device``: ``auto | cpu | cuda | cuda:N``; ``--threads``: CPU threads (torch and the engine's kernels).
* ``--budget-s``: seconds allowed per pair.
* ``--max-memory SIZE``: bytes a pair may need (estimated from the headers before any data are read);
  :func:`check_register_memory` / :func:`check_warp_memory` apply it for ``register`` / ``warp``.
* :func:`examples`: the "Examples:" epilog of a command's ``--help``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

from caio.errors import CaioInputError

log = logging.getLogger(__name__)

ANY = "any"


def examples(*lines: str) -> str:
    """An "Examples:" epilog (use with :class:`argparse.RawDescriptionHelpFormatter`)."""
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_output(
    parser: argparse.ArgumentParser | Any, help: str, required: bool = False, default: Any = None, type: Any = None
) -> None:
    """``-o/--output`` (dest ``output``) plus the hidden deprecated alias ``--out``.

    ``required`` is checked by :func:`output_of` (so that the alias satisfies it too).
    """
    parser.add_argument(
        "-o", "--output", dest="output", default=default, type=type, help=help + (" (required)" if required else "")
    )
    parser.add_argument("--out", dest="output", default=argparse.SUPPRESS, type=type, help=argparse.SUPPRESS)


def output_of(args: argparse.Namespace) -> Any:
    """``args.output``; a one-line user error when it was required and not given."""
    if getattr(args, "output", None) is None:
        raise CaioInputError("-o/--output is required")
    return args.output


def parse_shape(values: Sequence[str], allow_any: bool = False) -> tuple[int, int, int] | None:
    """``["160", "224", "192"]`` (or the deprecated ``["160x224x192"]``, or ``["any"]`` when allowed)
    -> ``(160, 224, 192)`` (``None`` for ``any``).

    Raises:
        ValueError: anything else, or a size below 2.
    """
    words = list(values)
    if allow_any and len(words) == 1 and words[0].strip().lower() == ANY:
        return None
    if len(words) == 1 and "x" in words[0].lower():
        words = words[0].lower().split("x")
    try:
        shape = tuple(int(w) for w in words)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 2:
        hint = " or 'any'" if allow_any else ""
        raise ValueError(f"expected three sizes D0 D1 D2 (e.g. 160 224 192){hint}, got '{' '.join(values)}'")
    return shape  # type: ignore[return-value]


class _ShapeAction(argparse.Action):
    def __init__(self, *args: Any, allow_any: bool = False, **kwargs: Any) -> None:
        self.allow_any = allow_any
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            setattr(namespace, self.dest, parse_shape(values, self.allow_any))
        except ValueError as err:
            raise argparse.ArgumentError(self, str(err)) from None


def add_shape(
    parser: argparse.ArgumentParser | Any, help: str, default: Sequence[int] | None = None, allow_any: bool = False
) -> None:
    """``--shape D0 D1 D2`` (dest ``shape``, a tuple of 3 ints, or ``None``)."""
    parser.add_argument(
        "--shape",
        nargs="+",
        action=_ShapeAction,
        allow_any=allow_any,
        metavar="D",
        default=None if default is None else tuple(default),
        help=f"{help} (D0 D1 D2)",
    )


def add_device(parser: argparse.ArgumentParser | Any, default: str = "auto", help: str = "") -> None:
    """``--device auto | cpu | cuda | cuda:N``."""
    parser.add_argument("--device", default=default, help=help or f"auto | cpu | cuda | cuda:N (default {default})")


def add_threads(parser: argparse.ArgumentParser | Any) -> None:
    """``--threads N``: torch CPU threads (default: torch's)."""
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def apply_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` if given (torch and the engine's Numba kernels).

    Raises:
        CaioInputError: a thread count below 1.
    """
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if int(threads) < 1:
        raise CaioInputError(f"--threads {threads}: must be at least 1")
    from caio.device import set_cpu_threads  # imports numba; only when asked

    set_cpu_threads(int(threads))
    log.debug("CPU threads: %d (of %d CPUs)", threads, os.cpu_count() or 0)


def add_budget(parser: argparse.ArgumentParser | Any, default: float | None = None, help: str = "") -> None:
    """``--budget-s S`` (dest ``budget_s``): seconds allowed per pair (``None``: no limit)."""
    parser.add_argument(
        "--budget-s", dest="budget_s", type=float, default=default, metavar="S", help=help or "seconds allowed"
    )


def budget_of(args: argparse.Namespace) -> float | None:
    """``args.budget_s`` checked: ``None`` or a positive number.

    Raises:
        CaioInputError: zero or negative.
    """
    budget = getattr(args, "budget_s", None)
    if budget is not None and not float(budget) > 0:
        raise CaioInputError(f"--budget-s {budget}: must be a positive number of seconds")
    return budget


def _size(text: str) -> int:
    from caio.io.memory import parse_size  # caio.io imports torch: only for the commands that use it

    try:
        return parse_size(text)
    except CaioInputError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"--max-memory {text}: ")) from None


def add_max_memory(
    parser: argparse.ArgumentParser | Any, default: str | None = None, what: str = "a pair", env: str = ""
) -> None:
    """``--max-memory SIZE`` (dest ``max_memory``, bytes or ``None``); its help states the default limit now."""
    from caio.io.memory import DEFAULT_SHARE, default_memory_limit, format_size

    allowed = default_memory_limit()
    now = "" if allowed is None else f", now {format_size(allowed)}"
    parser.add_argument(
        "--max-memory",
        type=_size,
        default=default,
        metavar="SIZE",
        help=f"refuse {what} whose working set, estimated from the headers before reading, exceeds SIZE "
        f"(e.g. 8G, 512M; {f'env {env}; ' if env else ''}default: {DEFAULT_SHARE * 100:.0f}%% of the memory "
        f"available at the start{now})",
    )


def max_memory_of(args: argparse.Namespace) -> int | None:
    """``args.max_memory`` in bytes (``None``: the default limit, :func:`caio.io.memory.memory_limit`)."""
    value = getattr(args, "max_memory", None)
    return None if value is None else int(value)


def _larger(*headers):
    return max(headers, key=lambda h: h.voxels)


def _shape_text(shape) -> str:
    return "x".join(map(str, shape))


def check_register_memory(
    fixed_path: str | os.PathLike, moving_path: str | os.PathLike, max_memory: int | None
) -> None:
    """``caio register``: both headers checked (affines used) and the pair's working set
    (:func:`caio.io.memory.register_pair_bytes`) compared with the limit, before a byte of data is read.

    Raises:
        CaioInputError: an unusable file or header, or more memory than allowed (one line: need, limit).
    """
    from caio.io import inspect_image, same_grid
    from caio.io.memory import memory_limit, register_pair_bytes
    from caio.io.volumes import volume_shape

    fixed, moving = inspect_image(fixed_path), inspect_image(moving_path)
    fixed_shape, moving_shape = volume_shape(fixed), volume_shape(moving)
    same = same_grid(fixed_shape, fixed.image.affine, moving_shape, moving.image.affine)
    need = register_pair_bytes(fixed_shape, moving_shape, same)
    what = f"registering {_shape_text(moving_shape)} onto {_shape_text(fixed_shape)}"
    memory_limit(max_memory).check(need, _larger(fixed, moving).path, what)


def check_warp_memory(disp_path: str | os.PathLike, moving_path: str | os.PathLike, max_memory: int | None) -> None:
    """``caio warp``: the displacement's and the moving image's headers checked and the working set
    (:func:`caio.io.memory.warp_bytes`) compared with the limit, before a byte of data is read.

    Raises:
        CaioInputError: an unusable file or header, or more memory than allowed.
    """
    from caio.io import inspect_image
    from caio.io.memory import memory_limit, warp_bytes
    from caio.io.volumes import volume_shape

    disp, moving = inspect_image(disp_path, "displacement"), inspect_image(moving_path)
    grid = disp.shape[1:] if disp.shape[0] == 3 and len(disp.shape) == 4 else disp.shape[:3]
    need = warp_bytes(grid, volume_shape(moving))
    memory_limit(max_memory).check(need, _larger(disp, moving).path, f"warping onto {_shape_text(grid)}")
