"""The docs: every Python block in docs/ and README.md runs, and every link resolves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
