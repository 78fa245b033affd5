"""The README stays a short user's page whose set-up commands are the ones CI runs, and its links resolve.

README.md holds the two set-up commands (the main job on ``test_data/`` and the test suite); ``.ci/run``
runs the same install and test command. Everything else lives in ``docs/``; links between these pages are
checked here (files, and ``#anchors`` as GitHub derives them from headings).
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CI_SCRIPT = REPO / ".ci" / "run"
README_LIMIT_BYTES = 15 * 1024
SETUP_HEADING = "## Set-up: the two commands"

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    start = text.index(heading + "\n")
    level = heading.split(" ")[0]
    rest = text[start + len(heading) :]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def setup_commands(readme_text: str) -> list[str]:
    """The one-line ``bash`` blocks of the set-up section that install caio (``pip install ...``)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", section(readme_text, SETUP_HEADING), re.S | re.M)
    return [b.strip() for b in blocks if b.startswith("pip install")]


def ci_commands(script_text: str) -> list[str]:
    """Shell lines of ``.ci/run`` without comments and without their ``|| ...`` error handling."""
    lines = []
    for line in script_text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(line.split(" || ")[0].strip())
    return lines


def github_anchor(heading: str) -> str:
    """The ``#fragment`` GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    """Every heading anchor of a Markdown file (a repeated heading gets ``-1``, ``-2``... as on GitHub)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", markdown.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6} (.+)", line)
        if match:
            slug = github_anchor(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(markdown: Path) -> list[str]:
    """Relative links of ``markdown`` (outside code blocks) whose file or heading anchor does not exist."""
    broken = []
    for target in LINK.findall(FENCE.sub("", markdown.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        resolved = (markdown.parent / path).resolve() if path else markdown
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target} (no such heading)")
    return broken


def test_readme_stays_under_15_kb():
    size = README.stat().st_size
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; move detail into docs/ (limit {README_LIMIT_BYTES})"


def test_readme_setup_commands_are_the_ones_ci_runs():
    main_job, test_command = setup_commands(README.read_text(encoding="utf-8"))
    ci = ci_commands(CI_SCRIPT.read_text(encoding="utf-8"))

    # The test command: CI's install line, then its pytest line, joined by '&&'.
    *install, pytest_call = [part.strip() for part in test_command.split(" && ")]
    assert " && ".join(install) in ci, f"{CI_SCRIPT} does not install as the README does: {install}"
    assert pytest_call in ci, f"{CI_SCRIPT} does not run the README's test command {pytest_call!r}"

    # The main job: the same torch pin, then predict.py on test_data/ with flags predict.py accepts.
    *job_install, job = [part.strip() for part in main_job.split(" && ")]
    assert job_install[0] == install[0], "the two set-up commands pin different torch versions"
    argv = shlex.split(job)
    assert argv[:2] == ["python", "predict.py"], job
    from caio.cli.predict import add_arguments

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    args = parser.parse_args(argv[2:])
    assert (REPO / args.json).is_file(), f"the main job's dataset JSON {args.json} is missing"
    assert (REPO / args.input).is_dir(), f"the main job's input folder {args.input} is missing"


def test_every_docs_link_in_the_readme_exists():
    assert broken_links(README) == []


@pytest.mark.parametrize(
    "page",
    [*sorted((REPO / "docs").glob("*.md")), REPO / "CHANGELOG.md"],
    ids=lambda p: p.relative_to(REPO).as_posix(),
)
def test_every_relative_link_in_the_docs_exists(page: Path):
    assert broken_links(page) == []


def test_broken_links_finds_a_missing_file_and_a_missing_heading(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## A section\n\n[ok](#a-section) [gone](missing.md) [bad](#no-section)\n")
    assert broken_links(page) == ["missing.md (no such file)", "#no-section (no such heading)"]


def readme_caio_commands(text: str) -> list[list[str]]:
    """``caio <command> ...`` lines of the README's code blocks (continuations joined; ``[...]`` optional parts and
    ``$(...)`` substitutions read as one value), as argument lists after ``caio``."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\$\(.*\)", "1", line.split("  #")[0])  # a value; to the last ")": substitutions nest
            while re.search(r"\[[^\[\]]*\]", line):
                line = re.sub(r"\[[^\[\]]*\]", "", line)
            argv = shlex.split(line)
            if argv[:1] == ["caio"] and len(argv) > 1:
                commands.append(argv[1:])
    return commands


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser ``caio <name>`` builds (its module's ``add_arguments``), raising instead of exiting."""
    import importlib

    from caio.cli import COMMANDS

    parser = argparse.ArgumentParser(prog=f"caio {name}", exit_on_error=False)
    importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
    return parser


def test_every_caio_command_in_the_readme_parses_with_that_commands_flags():
    commands = readme_caio_commands(README.read_text(encoding="utf-8"))
    assert {argv[0] for argv in commands} >= {"register", "warp", "evaluate"}, commands
    for name, *rest in commands:
        try:
            command_parser(name).parse_args(rest)
        except (SystemExit, argparse.ArgumentError) as err:
            raise AssertionError(f"README: `caio {name} {' '.join(rest)}` does not parse: {err}") from err


def test_readme_command_check_catches_an_unknown_flag():
    block = "```bash\ncaio warp --disp d.nii.gz --moving m.nii.gz -o w.nii.gz [--x] --nope\n```\n"
    (argv,) = readme_caio_commands(block)
    assert argv == ["warp", "--disp", "d.nii.gz", "--moving", "m.nii.gz", "-o", "w.nii.gz", "--nope"]
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        command_parser(argv[0]).parse_args(argv[1:])
