"""The durable.server namespace: its surface, its docs, and the optional extra."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import durable.server

ROOT = Path(__file__).resolve().parent.parent.parent
API_DOC = ROOT / "docs" / "api.md"


def test_all_is_sorted_and_equals_the_public_attributes() -> None:
    public = {
        name
        for name, value in vars(durable.server).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("durable")
    }
    assert durable.server.__all__ == sorted(
        durable.server.__all__, key=lambda name: (not name.isupper(), name)
    )
    assert public == set(durable.server.__all__) - {"DEFAULT_MAX_BODY_SIZE"}


@pytest.mark.parametrize("name", ["create_app", "serve"])
def test_exported_functions_have_docstrings_and_say_where_they_live(
    name: str,
) -> None:
    obj = getattr(durable.server, name)
    assert (obj.__doc__ or "").strip()
    assert obj.__module__ == "durable.server"


@pytest.mark.parametrize("name", durable.server.__all__)
def test_every_exported_name_has_a_heading_in_api_md(name: str) -> None:
    text = API_DOC.read_text(encoding="utf-8")
    section = text[text.index("\n## durable.server\n") :]
    assert re.search(rf"^### `{re.escape(name)}`\s*$", section, re.MULTILINE)


def _import_without(module: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        f"sys.modules[{module!r}] = None  # as if it were not installed\n"
        "import durable\n"
        "try:\n"
        "    import durable.server\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@pytest.mark.parametrize("module", ["starlette", "hypercorn"])
def test_without_the_extra_the_import_error_names_it(module: str) -> None:
    done = _import_without(module)
    assert done.stdout.startswith("ImportError durable.server needs")
    assert "durable[server]" in done.stdout
    assert f"({module} is missing)" in done.stdout
