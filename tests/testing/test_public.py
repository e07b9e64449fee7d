"""The durable.testing surface: sorted `__all__`, docstrings, docs, optional hypothesis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import durable.testing

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def test_all_is_sorted_and_complete() -> None:
    assert durable.testing.__all__ == sorted(durable.testing.__all__)
    public = {n for n in vars(durable.testing) if not n.startswith("_")}
    assert set(durable.testing.__all__) <= public


@pytest.mark.parametrize("name", durable.testing.__all__)
def test_each_name_has_a_docstring_and_is_documented(name: str) -> None:
    obj = getattr(durable.testing, name)
    assert (obj.__doc__ or "").strip()
    assert obj.__module__ == "durable.testing"
    assert f"`{name}" in DOC.read_text(encoding="utf-8")


def test_import_needs_no_hypothesis() -> None:
    code = "import sys, durable.testing\nprint('hypothesis' in sys.modules)\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
