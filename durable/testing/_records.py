"""The one place durable.testing reads stored records below the public API.

Rule: everything else in durable.testing works through `durable.__all__`; reading a
workflow's history (to describe it, and to audit writes) goes through this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from durable._codec import load_record
from durable._drivers._base import PUT
from durable._engine._queue import MESSAGE
from durable._history import STEP, History
from durable._keys import decode_key
from durable._layout import TAG_NAME

if TYPE_CHECKING:
    from durable import Batch, Driver

_NAME_TAG = decode_key(TAG_NAME)[0]


@attrs.frozen
class Snapshot:
    """A workflow's stored history in a comparable, printable form."""

    entries: tuple[tuple[str, str, str], ...]  # (path, kind, status), replay order
    consumed: tuple[tuple[str, tuple[bytes, ...]], ...]  # queue.next path, bodies
    unconsumed: int  # messages still queued
    state: str

    def render(self) -> str:
        """The history as indented lines, one entry a line."""
        lines = [f"    workflow state: {self.state or '(nothing stored)'}"]
        lines += [f"    {path}: {kind} {status}" for path, kind, status in self.entries]
        if not self.entries:
            lines.append("    (no entries)")
        lines.append(f"    messages not consumed yet: {self.unconsumed}")
        return "\n".join(lines)


async def snapshot(driver: Driver, workflow_id: str) -> Snapshot:
    """Read *workflow_id*'s history from *driver*."""
    history = await History.load(driver, workflow_id)
    entries = []
    consumed = []
    for (_scope, _seq), entry in sorted(history.by_seq.items()):
        path = history.describe(entry.location)
        entries.append((path, entry.kind, entry.full().status))
        if entry.kind == MESSAGE and isinstance(entry.data, list) and entry.data[1]:
            consumed.append((path, tuple(entry.data[1])))
    state = "" if history.meta is None else str(history.meta.state)
    return Snapshot(tuple(entries), tuple(consumed), len(history.messages), state)


async def rewritten_steps(driver: Driver, workflow_id: str, batch: Batch) -> list[str]:
    """Paths of completed steps whose stored result *batch* writes again.

    The engine writes a step as completed once, when its body returned; writing a
    completed step again means its body ran again after its result was recorded.
    """
    puts = {key: value for code, key, value in batch.ops if code == PUT}
    if not puts:
        return []
    history = await History.load(driver, workflow_id)
    rewritten = []
    for entry in history.entries.values():
        if entry.kind != STEP or entry.raw_meta is None:  # only completed steps
            continue
        new_meta = puts.get(entry.raw_meta[0])
        if new_meta is None:
            continue
        entry.full()
        attempts, started_at = load_record(new_meta, entry.location)[1:3]
        # a rollback handler's bookkeeping rewrites the metadata too, but only an
        # execution of the body starts a new attempt
        if (attempts, started_at) != (entry.attempts, entry.started_at):
            rewritten.append(history.describe(entry.location))
    return rewritten


def names_in(batch: Batch) -> set[str]:
    """Entry names that *batch* interns (records for the first time)."""
    names = set()
    for code, key, value in batch.ops:
        if code != PUT or not isinstance(value, bytes):
            continue
        try:
            parts = decode_key(key)
        except (ValueError, TypeError, IndexError):
            continue
        if len(parts) == 4 and parts[2] == _NAME_TAG:
            try:
                names.add(value.decode())
            except UnicodeDecodeError:
                continue
    return names
