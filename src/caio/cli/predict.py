"""``caio predict`` (and the container's ``python predict.py``): register every pair of a dataset JSON.

With no arguments the LUMIR 2025 container layout is used: ``/app/LUMIR25_dataset.json``,
data root ``/app/input``, outputs into ``/app/output``; when that JSON is absent, the 2024
layout ``/LUMIR_dataset.json``, ``/input``, ``/output``. Flags override every part.
Environment defaults (flags win): ``CAIO_BUDGET_S``, ``CAIO_STEPS``, ``CAIO_DEVICE``,
``CAIO_MODE``, ``CAIO_SHARD``, ``CAIO_WEIGHTS`` -- they let a container run with its
argument-free CMD be tuned (e.g. a short budget for CI validation).

SIGTERM / SIGINT (docker stop, Ctrl-C) remove the temporary file being written, print one line
and exit 143 / 130; finished outputs stay, and ``--resume`` completes the rest.

stdout gets one line per pair; logging and the tqdm bar (when stderr is a terminal) go to stderr. Exit status: 0 when
every pair was registered, 1 when any pair was skipped/failed/degraded (the others are
still written), 2 for a user error that stops the whole run (no dataset, bad flag value).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import caio
from caio.cli.layout import detect_layout, parse_shard, prepare_cache_env, select_shard
from caio.cli.options import add_device, add_max_memory, add_output, add_shape, examples
from caio.errors import CaioInputError
from caio.io import LUMIR_SHAPE, load_pairs, write_json_atomic
from caio.io.atomic import remove_live_temporaries
from caio.pipeline import PipelineConfig, RunSteps
from caio.pipeline import run as run_pipeline

EXAMPLES = examples(
    "python predict.py                      # the container: /app/LUMIR25_dataset.json -> /app/output",
    "caio predict --json LUMIR25_dataset.json --input data/ -o out/ --device cpu --budget-s 120",
    "caio predict --json test_data/LUMIR25_dataset.json --input test_data -o out/ --shape any --resume --qc qc/",
)


def _env(name: str, default: str | None, environ: Mapping[str, str]) -> str | None:
    value = environ.get(name, "").strip()
    return value or default


def _add_where(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    g = parser.add_argument_group("where")
    g.add_argument(
        "--json", type=Path, help="dataset JSON (default: /app/LUMIR25_dataset.json, else /LUMIR_dataset.json)"
    )
    g.add_argument(
        "--input", type=Path, help="data root the JSON paths are relative to (default: /app/input, else /input)"
    )
    add_output(g, "output folder (default: /app/output, else /output)", type=Path)
    g.add_argument(
        "--weights",
        type=Path,
        default=_env("CAIO_WEIGHTS", None, env),
        help="weights folder (env CAIO_WEIGHTS; default: caio.weights' default)",
    )
    g.add_argument(
        "--report",
        type=Path,
        default=_env("CAIO_REPORT", None, env),
        help="write a JSON run report here (env CAIO_REPORT; default: none)",
    )
    g.add_argument("--qc", type=Path, metavar="DIR", help="write quality-control pictures of each pair into DIR")
    g.add_argument(
        "--key",
        action="append",
        dest="keys",
        metavar="KEY",
        help="JSON list(s) to take pairs from (default: every list of fixed/moving entries)",
    )


def _add_methods(h: argparse._ArgumentGroup, env: Mapping[str, str]) -> None:
    h.add_argument(
        "--mode",
        choices=("auto", "vfa", "engine", "training-free"),
        default=_env("CAIO_MODE", "auto", env),
        help="backbone: auto (VFA on a GPU when its weights exist, else the engine), vfa (required), "
        "engine (training-free; 'training-free' is an alias) (env CAIO_MODE)",
    )
    h.add_argument(
        "--refine",
        choices=("auto", "cascade", "engine", "none"),
        default=_env("CAIO_REFINE", "auto", env),
        help="instance optimisation after the backbone: auto (after VFA the cascade on a GPU, the engine on a CPU; "
        "nothing after the engine), or forced (env CAIO_REFINE)",
    )
    h.add_argument(
        "--contrast",
        choices=("auto", "brainid", "none"),
        default="auto",
        help="cross-contrast adapter: auto (Brain-ID on a GPU when its weights exist), brainid (any device), none",
    )
    h.add_argument(
        "--gate",
        choices=("auto", "on", "off"),
        default="auto",
        help="cross-contrast handling: decided by the gate, forced on, or forced off",
    )
    h.add_argument("--no-cascade", action="store_true", help="same as --refine none")


def _add_how(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    h = parser.add_argument_group("how")
    add_device(h, default=_env("CAIO_DEVICE", "auto", env), help="auto | cpu | cuda | cuda:N (env CAIO_DEVICE)")
    h.add_argument(
        "--budget-s",
        type=float,
        default=_env("CAIO_BUDGET_S", None, env),
        help="seconds per pair, reading and writing included (env CAIO_BUDGET_S; default 60)",
    )
    _add_methods(h, env)
    h.add_argument(
        "--steps",
        type=int,
        default=_env("CAIO_STEPS", None, env),
        help="cascade steps per level (env CAIO_STEPS; default: the cascade's)",
    )
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--resample", action="store_true", help="resample volumes of another shape onto --shape")
    add_shape(h, "expected grid, or 'any' (default: LUMIR 160 224 192)", default=LUMIR_SHAPE, allow_any=True)
    add_max_memory(
        h, default=_env("CAIO_MAX_MEMORY", None, env), what="a pair (skipped, the others go on)", env="CAIO_MAX_MEMORY"
    )


def _add_which(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    r = parser.add_argument_group("which pairs")
    r.add_argument("--resume", action="store_true", help="skip pairs whose outputs exist and are valid")
    r.add_argument(
        "--shard",
        default=_env("CAIO_SHARD", None, env),
        metavar="K/N",
        help="only pairs i with i mod N == K (0-based K; env CAIO_SHARD)",
    )


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """The flags of ``predict``; ``environ`` (default ``os.environ``) gives the ``CAIO_*`` defaults."""
    env = os.environ if environ is None else environ
    _add_where(parser, env)
    _add_how(parser, env)
    _add_which(parser, env)
    parser.add_argument(
        "--no-overlap",
        action="store_true",
        help="read, register and write one after the other (default: read and write in background threads)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no tqdm bar (it is shown only when stderr is a terminal, e.g. docker run -t)",
    )


def format_line(index: int, total: int, result) -> str:
    """One stdout line per pair: pair, gate, path, steps, seconds, peak memory, outputs."""
    if result.gate_score is None and result.cross_contrast is None:
        gate = "gate=-"
    else:
        score = "-" if result.gate_score is None else f"{result.gate_score:.3f}"
        decision = "cross" if result.cross_contrast else "same"
        gate = f"gate={score}:{decision}{'(forced)' if result.gate_forced else ''}"
    names = ",".join(Path(p).name for p in result.outputs) or "-"
    line = (
        f"[{index}/{total}] {result.pair.key} {result.status} {gate} path={result.path or '-'} "
        f"steps={'-' if result.steps is None else result.steps} {result.seconds:.1f}s "
        f"io_wait={getattr(result, 'io_wait_s', 0.0):.1f}s "
        f"peak={result.peak_mem_mb:.0f}MB device={result.device or '-'} -> {names}"
    )
    return line + (f" | {result.message}" if result.message else "")  # an ok pair's message: what was ignored


SIGNAL_EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}
"""Exit status per signal: 128 + its number, as a shell reports it."""


def _on_signal(signum: int, frame) -> None:
    """Remove this process's temporary files, say so in one line, exit at once (threads included)."""
    removed = remove_live_temporaries()
    name = signal.Signals(signum).name
    try:
        sys.stdout.flush()
        print(
            f"caio predict: stopped by {name}; removed {len(removed)} temporary file(s); finished outputs are kept"
            " (rerun with --resume to complete)",
            file=sys.stderr,
            flush=True,
        )
    finally:
        os._exit(SIGNAL_EXIT[signum])


class exit_cleanly_on_signals:
    """Context manager: SIGTERM and SIGINT run :func:`_on_signal` (main thread only)."""

    def __enter__(self) -> exit_cleanly_on_signals:
        in_main = threading.current_thread() is threading.main_thread()
        self._old = {s: signal.signal(s, _on_signal) for s in SIGNAL_EXIT} if in_main else {}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace, *, steps: RunSteps | None = None) -> int:
    """Run ``predict`` with parsed ``args``; ``steps``: the pipeline's per-pair steps (``None``: the real ones)."""
    with exit_cleanly_on_signals():
        return _run(args, steps)


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The :class:`PipelineConfig` of parsed ``predict`` arguments."""
    return PipelineConfig(
        device=args.device,
        budget_s=args.budget_s,
        weights_dir=args.weights,
        mode=args.mode,
        gate={"auto": None, "on": True, "off": False}[args.gate],
        refine="none" if args.no_cascade else args.refine,
        contrast=args.contrast,
        steps=args.steps,
        seed=args.seed,
        resample=args.resample,
        expected_shape=args.shape,
        max_memory=getattr(args, "max_memory", None),
    )


class _Lines:
    """stdout of a run: the progress bar (on a terminal only) and one line per pair, in order."""

    def __init__(self, total: int, no_progress: bool) -> None:
        self.total, self.no_progress, self.done = total, no_progress, 0
        self.bar = None

    def progress(self, items):
        # only on a terminal: in captured logs the bar's redraws would tear every line
        disable = self.no_progress or not sys.stderr.isatty()
        self.bar = tqdm(items, total=self.total, file=sys.stderr, unit="pair", disable=disable)
        return self.bar

    def on_result(self, result) -> None:
        self.done += 1
        text = format_line(self.done, self.total, result)
        if self.bar is not None and not self.no_progress:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text)
        sys.stdout.flush()

    @staticmethod
    def on_models_loaded(seconds: float) -> None:
        print(f"caio predict: models loaded in {seconds:.1f} s (once, outside every pair's clock)", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_report(args: argparse.Namespace, summary, layout, shard, cfg: PipelineConfig) -> None:
    report = summary.to_json()
    report.update(
        caio_version=caio.__version__,
        torch_version=torch.__version__,
        layout={k: str(v) for k, v in vars(layout).items()},
        shard=shard,
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
    )
    write_json_atomic(args.report, report)


def _print_unregistered(summary) -> None:
    bad = [r for r in summary.results if r.status not in ("ok", "resumed")]
    print(
        f"caio predict: {len(bad)} pair(s) without a proper registration: "
        + "; ".join(f"{r.pair.key} {r.status} ({r.message})" for r in bad),
        file=sys.stderr,
    )


def _run(args: argparse.Namespace, steps: RunSteps | None = None) -> int:
    prepare_cache_env()  # before matplotlib is imported (by a QC picture)
    layout = detect_layout(json=args.json, input=args.input, output=args.output)
    pairs = load_pairs(layout.json, layout.input, keys=args.keys, check_files=False)
    total_in_json = len(pairs)
    shard = parse_shard(args.shard) if args.shard else None
    if shard is not None:
        pairs = select_shard(pairs, *shard)
    cfg = config_from_args(args)
    print(
        f"caio predict: {len(pairs)} of {total_in_json} pairs from {layout.json} (layout {layout.source}"
        f"{f', shard {shard[0]}/{shard[1]}' if shard else ''}); data {layout.input}; output {layout.output}",
        flush=True,
    )
    lines = _Lines(len(pairs), args.no_progress)
    with logging_redirect_tqdm():  # log lines do not tear the progress bar
        summary = run_pipeline(
            pairs,
            layout.output,
            cfg,
            resume=args.resume,
            qc_dir=args.qc,
            on_result=lines.on_result,
            progress=lines.progress,
            overlap=not args.no_overlap,
            on_models_loaded=lines.on_models_loaded,
            steps=steps,
        )
    lines.close()
    print(f"caio predict: {summary.line()}", flush=True)
    if args.report is not None:
        _write_report(args, summary, layout, shard, cfg)
    if summary.exit_code:
        _print_unregistered(summary)
    return summary.exit_code


def main(
    argv: Sequence[str] | None = None, default_weights: Path | None = None, *, steps: RunSteps | None = None
) -> int:
    """Entry point of ``predict.py``: caches first, then arguments, logging and the run.

    ``steps`` replaces the pipeline's per-pair steps (tools and tests; ``None``: the real ones).
    """
    prepare_cache_env()
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description=__doc__.splitlines()[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    if default_weights is not None and parser.get_default("weights") is None:
        parser.set_defaults(weights=default_weights)
    args = parser.parse_args(None if argv is None else list(argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return run(args, steps=steps)
    except CaioInputError as err:
        print(f"caio predict: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("caio predict: interrupted", file=sys.stderr)
        return 130
