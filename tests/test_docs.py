"""The docs: every Python block runs, every link resolves, every CLI command is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from durable._cli import build_parser

if TYPE_CHECKING:
    import argparse

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [*ROOT.glob("docs/*.md"), *ROOT.glob("docs/guide/*.md"), ROOT / "README.md"]
)
NOT_RUN = "# not run"  # a block whose first line is this is only shown, never run
PYTHON_BLOCK = re.compile(
    r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _python_blocks() -> dict[str, str]:
    """Every Python block, keyed by ``page:line``."""
    blocks = {}
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in PYTHON_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks[f"{_relative(page)}:{line}"] = match.group(1)
    return blocks


BLOCKS = _python_blocks()


def _anchors(page: Path) -> set[str]:
    """The heading anchors GitHub generates for *page*."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    anchors: set[str] = set()
    for heading in HEADING.findall(text):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def test_the_docs_have_python_blocks_to_run() -> None:
    pages = {where.split(":")[0] for where in BLOCKS}
    assert {"README.md", "docs/index.md", "docs/tutorial.md"} <= pages


@pytest.mark.parametrize("where", list(BLOCKS))
def test_python_block_runs(where: str, tmp_path: Path) -> None:
    code = BLOCKS[where]
    if code.lstrip().startswith(NOT_RUN):
        pytest.skip("marked '# not run'")
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "DURABLE_STORE": str(tmp_path / "store")}
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (
        f"{where}: exit code {done.returncode}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_relative_links_resolve(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        missing_anchor = (
            linked.exists()
            and bool(anchor)
            and linked.suffix == ".md"
            and anchor not in _anchors(linked)
        )
        if not linked.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{_relative(page)} has broken links: {broken}"


CLI_DOC = ROOT / "docs" / "cli.md"


def _cli_commands() -> dict[str, argparse.ArgumentParser]:
    """The subcommands of ``durable``, by name, from its argparse parser."""
    for action in build_parser()._actions:
        if isinstance(action.choices, dict):
            return dict(action.choices)
    return {}


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


CLI_COMMANDS = _cli_commands()
# options every command but `worker` takes: docs/cli.md explains them once
SHARED_OPTIONS = set.intersection(
    *(_long_options(sub) for name, sub in CLI_COMMANDS.items() if name != "worker")
)


@pytest.mark.parametrize("command", sorted(CLI_COMMANDS))
def test_every_cli_command_and_option_is_documented(command: str) -> None:
    text = FENCE.sub("", CLI_DOC.read_text(encoding="utf-8"))
    heading = re.search(rf"^### `durable {re.escape(command)}`$", text, re.MULTILINE)
    assert heading, f"docs/cli.md has no '### `durable {command}`' heading"
    following = re.search(r"^#{1,3} ", text[heading.end() :], re.MULTILINE)
    section = (
        text[heading.end() : heading.end() + following.start()]
        if following
        else text[heading.end() :]
    )
    own = _long_options(CLI_COMMANDS[command]) - SHARED_OPTIONS
    missing = sorted(option for option in own if f"`{option}" not in section)
    assert not missing, f"docs/cli.md: `durable {command}` leaves out {missing}"


def test_the_options_every_command_takes_are_documented() -> None:
    text = CLI_DOC.read_text(encoding="utf-8")
    missing = sorted(option for option in SHARED_OPTIONS if f"`{option}" not in text)
    assert SHARED_OPTIONS, "no options are shared by the client commands"
    assert not missing, f"docs/cli.md leaves out {missing}"
