"""A book-OCR pipeline: convert a book, OCR its pages on a rate-limited queue, index it.

    python examples/book_pipeline.py [DIR]

The package `book` starts with one step, `convert`. It stores the whole book as an
artifact and emits one `book/page` step per page on queue "ocr" (two at a time, at
most 50 a second) plus an `index` step that waits for every page. Each page stores
its text as an artifact and adds a row to the projection "book_index"; the OCR of
page 2 is busy on its first attempt, so that page is retried once, and its row is
still written exactly once. The store, the artifacts and the projection live in DIR
(a temporary directory by default). The OCR is simulated: nothing leaves the process.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import anyio
import attrs

import durable
from durable import dag

RUN_ID = "book-run-1"
OCR_RETRY = dag.RetryPolicy(max_attempts=3, backoff="fixed", initial=0.01)


@attrs.frozen
class Book:
    title: str
    pages: list[str] | None = None  # the page scans, as text
    page_count: int | None = None  # or: this many made-up pages


@attrs.frozen
class Page:
    book: str
    number: int
    scan: str


@attrs.frozen
class PageResult:
    page: int
    words: int
    artifact_id: str


@attrs.frozen
class IndexInput:
    book: str
    pages: list[str]  # the ids of the page steps


@attrs.frozen
class IndexResult:
    book: str
    pages: int
    words: int


@attrs.frozen
class Report:
    """What `run_book` saw, for printing and for tests."""

    run: dag.RunInfo
    results: dict[str, dag.StepResult | None]  # by step id
    rows: list[dict[str, object]]  # the projection's `pages` table


def scans(book: Book) -> list[str]:
    if book.pages is not None:
        return book.pages
    count = book.page_count or 0
    return [
        f"{book.title}, page {n}: " + "lorem ipsum " * n for n in range(1, count + 1)
    ]


async def convert_book(step: dag.StepContext, book: Book) -> None:
    """Store the book, then emit a step per page and the index that waits for them."""
    pages = scans(book)
    body = json.dumps({"title": book.title, "pages": pages}).encode()
    await step.store_artifact("book.json", body, content_type="application/json")
    handles = [
        step.emit(
            f"page-{n}",
            Page(book.title, n, scan),
            kind="book/page",
            queue="ocr",
            retry=OCR_RETRY,
        )
        for n, scan in enumerate(pages, start=1)
    ]
    step.emit(
        "index",
        IndexInput(book.title, [h.id for h in handles]),
        kind="book/index",
        queue="default",
        depends_on=handles,
    )
    step.result({"pages": len(pages)})


async def ocr_page(step: dag.StepContext, page: Page) -> PageResult:
    """OCR one page (simulated): store its text, add its row to the projection."""
    text = " ".join(page.scan.split())
    ref = await step.store_artifact(
        f"page-{page.number}.txt", text.encode(), content_type="text/plain"
    )
    words = len(text.split())
    db = step.projection("book_index")
    await db.execute(
        "CREATE TABLE IF NOT EXISTS pages"
        "(book TEXT, page INTEGER, words INTEGER, artifact_id TEXT)"
    )
    await db.execute(
        "INSERT INTO pages VALUES (?, ?, ?, ?)", (page.book, page.number, words, ref.id)
    )
    if page.number == 2 and step.attempt == 1:
        # The attempt fails after writing: its row is rolled back, not kept twice.
        raise dag.Retryable("ocr_busy", "the OCR service is busy; try again")
    return PageResult(page.number, words, ref.id)


async def index_book(step: dag.StepContext, input: IndexInput) -> IndexResult:
    """Fan in: add up the words of every page."""
    pages = [step.dependency_data(page_id, PageResult) for page_id in input.pages]
    return IndexResult(input.book, len(pages), sum(p.words for p in pages))


def start(run: dag.RunBuilder, book: Book) -> None:
    run.name(f"OCR of {book.title}")
    run.step("convert", book, kind="book/convert")


BOOK = dag.package("book").display_name("Book OCR").entrypoint(start).build()


async def run_book(root: Path, book: Book | None = None) -> Report:
    """Run the pipeline on *book* with workers, everything stored under *root*."""
    book = book or Book("Moby Dick", page_count=6)
    async with durable.LevelDBDriver(root / "store") as driver:
        runtime = dag.Runtime(
            driver,
            artifacts=dag.FileArtifactStore(root / "artifacts"),
            projections=dag.SQLiteProjectionStore(root / "projections"),
            queues={"ocr": dag.QueuePolicy(max_workers=2, rate=50, burst=5)},
        )
        runtime.register_executor("book/convert", convert_book)
        runtime.register_executor("book/page", ocr_page)
        runtime.register_executor("book/index", index_book)
        runtime.register_package(BOOK)
        async with runtime:  # serves runs until the block ends
            await runtime.start_run("book", book, run_id=RUN_ID)
            run = await runtime.wait_run(RUN_ID)
            results = {s: await runtime.get_result(RUN_ID, s) for s in run.steps}
            rows = await runtime.projection("book_index").query(
                "SELECT book, page, words, artifact_id FROM pages ORDER BY page"
            )
    return Report(run, results, rows)


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        report = await run_book(Path(sys.argv[1] if len(sys.argv) > 1 else scratch))
    run = report.run
    print(f"run {run.id}: {run.status}")
    for step in run.steps.values():
        print(f"  {step.id:8} {step.status:10} attempts={step.attempts}")
    index = report.results["index"]
    print(f"index: {index.data if index else None}")
    for row in report.rows:
        print(f"  projection row: {row}")


if __name__ == "__main__":
    anyio.run(main)
