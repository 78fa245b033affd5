"""``caio weights``: list, fetch and verify the third-party weights of the manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from caio.cli.options import examples
from caio.errors import CaioInputError
from caio.pipeline.models import check_loadable
from caio.weights.fetch import Downloader, fetch
from caio.weights.manifest import default_weights_dir, load_manifest, manifest_path, select, verify

EXAMPLES = examples(
    "caio weights list", "caio weights fetch VFA-LUMIR25-MultiModal", "caio weights verify --weights-dir /app/weights"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``caio weights [--weights-dir DIR] {list,fetch,verify} [--weights-dir DIR]``."""
    help_dir = "weights folder (default: $CAIO_WEIGHTS, else the repository's weights/)"
    parser.add_argument("--weights-dir", type=Path, default=None, help=help_dir)
    common = argparse.ArgumentParser(add_help=False)  # also accepted after the action
    common.add_argument("--weights-dir", type=Path, default=argparse.SUPPRESS, help=help_dir)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", parents=[common], help="manifest entries with present/missing/hash status")
    p = sub.add_parser("fetch", parents=[common], help="download weights (all, or the named ones); needs gdown")
    p.add_argument("names", nargs="*", metavar="NAME")
    p = sub.add_parser(
        "verify",
        parents=[common],
        help="exit 1 unless every (named) weights file is present, matches its hash and loads into its network",
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--no-load", action="store_true", help="only check presence and hashes")


def run(args: argparse.Namespace, *, downloader: Downloader | None = None) -> int:
    """Run ``caio weights`` with parsed ``args``; ``downloader``: what ``fetch`` downloads with (``None``: gdown)."""
    weights_dir = args.weights_dir if args.weights_dir is not None else default_weights_dir()
    if args.action == "fetch":
        entries = select(load_manifest(manifest_path(weights_dir)), args.names)
        failed = 0
        for entry in entries:  # one failure does not stop the others
            try:
                print(f"{entry.name}: {fetch(entry.name, weights_dir, downloader)}")
            except CaioInputError as err:
                failed += 1
                print(f"{entry.name}: FAILED: {err}")
        return 1 if failed else 0
    statuses = verify(weights_dir, getattr(args, "names", ()))
    print(f"weights folder: {weights_dir}")
    bad = 0
    for st in statuses:
        problem = None
        if args.action == "verify" and st.usable and not args.no_load:
            problem = check_loadable(st.entry, st.path)
        state = "unloadable" if problem else st.state
        bad += state in ("missing", "mismatch", "unloadable")
        print(
            f"{st.entry.name:24} {st.entry.role:17} {state:10} {st.entry.file}" + (f"  ({problem})" if problem else "")
        )
    return 1 if args.action == "verify" and bad else 0
