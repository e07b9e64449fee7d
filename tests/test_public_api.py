"""The public surface: `__all__`, docstrings, the API reference, and import hygiene."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import durable
import durable.server

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
NOT_DOCSTRINGED = {name for name in durable.__all__ if name.isupper()} | {"__version__"}
CLASSES = [
    name for name in durable.__all__ if inspect.isclass(getattr(durable, name, None))
]


def _isort_style_key(name: str) -> tuple[int, list[object]]:
    """Ruff RUF022's isort-style order: CONSTANTS, then CamelCase, then the rest.

    Within each group the order is natural (runs of digits compare as numbers).
    """
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    chunks = re.split(r"(\d+)", name)
    return group, [int(chunk) if chunk.isdigit() else chunk for chunk in chunks]


class TestAll:
    def test_all_is_sorted_isort_style_as_ruff_keeps_it(self) -> None:
        # Plain sorted() would put DEFAULT_* after CriticalError; ruff's RUF022 (which
        # `ruff check` enforces) puts constants first, then classes, then the rest.
        assert durable.__all__ == sorted(durable.__all__, key=_isort_style_key)

    def test_all_has_no_duplicates(self) -> None:
        assert len(durable.__all__) == len(set(durable.__all__))

    def test_all_equals_the_public_attributes(self) -> None:
        public = {
            name
            for name, value in vars(durable).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        }
        assert public == set(durable.__all__) - {"__version__"}

    def test_version_is_exported_as_a_str(self) -> None:
        assert "__version__" in durable.__all__
        assert isinstance(durable.__version__, str)


class TestDocstrings:
    @pytest.mark.parametrize(
        "name", [name for name in durable.__all__ if name not in NOT_DOCSTRINGED]
    )
    def test_exported_object_has_its_own_docstring(self, name: str) -> None:
        obj = getattr(durable, name)
        doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
        assert doc, f"durable.{name} has no docstring"
        assert doc.strip()

    @pytest.mark.parametrize("name", CLASSES)
    def test_public_methods_of_exported_classes_have_docstrings(
        self, name: str
    ) -> None:
        cls = getattr(durable, name)
        missing = []
        for attr, value in vars(cls).items():
            if attr.startswith("_"):
                continue
            function = value.fget if isinstance(value, property) else value
            function = getattr(function, "__func__", function)  # classmethods
            is_method = callable(function) and not inspect.isclass(function)
            if is_method and not (function.__doc__ or "").strip():
                missing.append(attr)
        assert not missing, f"durable.{name} lacks docstrings on {missing}"

    @pytest.mark.parametrize(
        "name", [name for name in durable.__all__ if name not in NOT_DOCSTRINGED]
    )
    def test_exported_object_says_it_lives_in_durable(self, name: str) -> None:
        # Tracebacks and reprs say durable.X, not durable._errors.X.
        assert getattr(durable, name).__module__ == "durable"


class TestApiReference:
    @pytest.mark.parametrize("name", durable.__all__)
    def test_every_exported_name_has_a_heading_in_api_md(self, name: str) -> None:
        text = API_DOC.read_text(encoding="utf-8")
        heading = re.compile(rf"^#{{2,3}} `{re.escape(name)}`\s*$", re.MULTILINE)
        assert heading.search(text), f"docs/api.md has no '## `{name}`' heading"

    def test_api_md_documents_no_name_that_is_not_exported(self) -> None:
        text = API_DOC.read_text(encoding="utf-8")
        documented = re.findall(r"^#{2,3} `([^`]+)`\s*$", text, re.MULTILINE)
        # its last section documents durable.server (tests/server/test_public.py)
        exported = {*durable.__all__, *durable.server.__all__}
        assert set(documented) - exported == set()


class TestImportHygiene:
    def test_import_durable_loads_no_optional_namespace_and_no_pickle(self) -> None:
        code = (
            "import sys, durable\n"
            "unwanted = ['durable.testing', 'durable.dag', 'durable.server',"
            " 'durable._cli', 'pickle']\n"
            "print(sorted(name for name in unwanted if name in sys.modules))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert done.stdout.strip() == "[]"
