"""The ``caio`` command (also ``python -m caio``): one sub-command per module of :mod:`caio.cli`.

Each sub-command module ``caio.cli.<name>`` defines ``add_arguments(parser)``, ``run(args) -> int``
and ``EXAMPLES`` (the epilog of its ``--help``); shared flags are in :mod:`caio.cli.options`.
Modules are imported only when their command runs (start-up stays fast).
A :class:`caio.errors.CaioInputError` (a user mistake) is printed as one line
``caio <command>: error: <message>`` with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from caio.errors import CaioInputError

COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("caio.cli.predict", "register every pair of a LUMIR dataset JSON"),
    "register": ("caio.cli.register", "register one image pair of any shape/orientation (no JSON)"),
    "warp": ("caio.cli.warp", "apply a displacement to an image or a label map"),
    "evaluate": ("caio.cli.evaluate", "Dice / HD95 / TRE / NDV of displacement files, as the official evaluator"),
    "synth": ("caio.cli.synth", "synthetic multi-contrast LUMIR-style data from label maps"),
    "qc": ("caio.cli.qc", "quality-control pictures of a registration"),
    "pretrain": ("caio.cli.pretrain", "pretrain the instance-optimisation cascade"),
    "weights": ("caio.cli.weights", "list, fetch and verify third-party weights"),
    "gate": ("caio.cli.gate", "contrast gate score of an image pair"),
}


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="caio", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose = True
        argv.pop(0)
    name = argv[0]
    if name not in COMMANDS:
        parser.error(f"unknown command '{name}' (choose from {', '.join(COMMANDS)})")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(
        prog=f"caio {name}",
        description=COMMANDS[name][1],
        epilog=getattr(module, "EXAMPLES", None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except CaioInputError as err:
        print(f"caio {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"caio {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
