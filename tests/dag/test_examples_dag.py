"""The DAG examples run as their docstrings say and do what they claim."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from durable import dag

if TYPE_CHECKING:
    from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.anyio


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (examples are not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"examples_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs resolves the annotations through it
    spec.loader.exec_module(module)
    return module


hello = load_example("dag_hello")
book = load_example("book_pipeline")


# --- hello -------------------------------------------------------------------------


async def test_hello_echoes_the_message_in_the_root_result(tmp_path: Path) -> None:
    run, result = await hello.run_hello(tmp_path / "store", "hi there")
    assert run.status == dag.RunStatus.SUCCEEDED
    assert run.name == "Hello Workflow"
    assert run.metadata == {"source": "getting-started", "requestedBy": "example"}
    assert result is not None
    assert result.data == {"echoed": "hi there"}
    assert result.attempts == 1


async def test_hello_started_again_on_its_store_runs_nothing_again(
    tmp_path: Path,
) -> None:
    await hello.run_hello(tmp_path / "store", "once")
    run, result = await hello.run_hello(tmp_path / "store", "twice")
    assert run.steps["root"].attempts == 1
    assert result.data == {"echoed": "once"}  # the stored run, not a new one


async def test_hello_fails_an_empty_message_for_good(tmp_path: Path) -> None:
    run, result = await hello.run_hello(tmp_path / "store", "")
    assert run.status == dag.RunStatus.FAILED
    assert run.steps["root"].status == dag.StepStatus.FAILED
    assert result.error == dag.ErrorInfo("empty_message", "message is required", False)


# --- book pipeline -------------------------------------------------------------------


PAGES = [f"page-{n}" for n in range(1, 7)]


@pytest.fixture
async def report(tmp_path: Path) -> Any:
    """`book_pipeline.Report` of one run (the example is loaded by path: untyped)."""
    return await book.run_book(tmp_path)


async def test_book_run_succeeds_with_every_page_and_the_index(report: Any) -> None:
    run = report.run
    assert run.status == dag.RunStatus.SUCCEEDED
    assert set(run.steps) == {"convert", *PAGES, "index"}
    assert {s.queue for s in run.steps.values() if s.kind == "book/page"} == {"ocr"}
    assert run.steps["index"].depends_on == tuple(dag.Dependency(p) for p in PAGES)
    assert report.results["convert"].emitted == (*PAGES, "index")


async def test_book_index_totals_the_words_of_every_page(report: Any) -> None:
    results = report.results
    words = [results[p].data["words"] for p in PAGES]
    assert results["index"].data == {
        "book": "Moby Dick",
        "pages": 6,
        "words": sum(words),
    }


async def test_book_page_2_is_retried_once_and_the_others_run_once(report: Any) -> None:
    steps = report.run.steps
    assert {p: steps[p].attempts for p in PAGES} == {
        p: 2 if p == "page-2" else 1 for p in PAGES
    }
    assert report.results["page-2"].attempts == 2


async def test_book_projection_has_exactly_one_row_per_page(
    report: Any, tmp_path: Path
) -> None:
    rows = report.rows
    results = report.results
    assert [row["page"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert rows == [
        {
            "book": "Moby Dick",
            "page": n,
            "words": results[f"page-{n}"].data["words"],
            "artifact_id": results[f"page-{n}"].data["artifact_id"],
        }
        for n in range(1, 7)
    ]
    store = dag.SQLiteProjectionStore(tmp_path / "projections")
    try:
        applied = await store.projection("book_index").query(
            "SELECT count(*) AS n FROM _durable_applied"
        )
    finally:
        await store.close()
    assert applied == [{"n": len(PAGES)}]  # one commit per page: the failed one none


async def test_book_artifacts_are_files_with_json_sidecars(
    report: Any, tmp_path: Path
) -> None:
    store = dag.FileArtifactStore(tmp_path / "artifacts")
    results = report.results
    refs = [a.ref for step in ["convert", *PAGES] for a in results[step].artifacts]
    assert len(refs) == 1 + len(PAGES)
    for ref in refs:
        assert ref is not None
        body = store.path(ref.id)
        assert body.is_file()
        assert body.stat().st_size == ref.size
        assert json.loads(body.with_suffix(".json").read_text()) == ref.to_json()
    async with store.open(refs[2].id) as reader:  # page 2, written twice
        text = (await reader.read()).decode()
    assert len(text.split()) == results["page-2"].data["words"]
    book_json = json.loads(store.path(refs[0].id).read_bytes())
    assert book_json["title"] == "Moby Dick"
    assert len(book_json["pages"]) == len(PAGES)


async def test_book_run_again_on_its_directory_runs_nothing_again(
    report: Any, tmp_path: Path
) -> None:
    again = await book.run_book(tmp_path)
    assert again.rows == report.rows
    assert {s.attempts for s in again.run.steps.values()} == {1, 2}


# --- as scripts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("dag_hello.py", "root: {'echoed': 'hello workflow'}"),
        ("book_pipeline.py", "index: {'book': 'Moby Dick', 'pages': 6, 'words': 66}"),
    ],
)
def test_example_runs_as_a_script(tmp_path: Path, script: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "succeeded" in done.stdout
    assert expected in done.stdout
