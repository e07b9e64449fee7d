"""Leases: which worker owns a workflow's run, and the fencing token that enforces it.

When several workers share a store, a worker claims a due workflow (moving its alarm
to the end of its lease), then takes the lease record at ``(4, id)`` with a `check`
on the record it read, adding one to the token. Every write of the run then checks
that record, so after another worker takes over (the lease ran out while the owner
was paused, partitioned, or dead) the old owner's writes fail with
`WriteConflictError` and never reach the history. Renewals move both the record's
expiry and the alarm; a finished run releases the record.

Rule: the token only grows; anything that must stop a run owned elsewhere (a cancel
from another process) bumps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ._codec import dump_record, load_record
from ._errors import CorruptRecordError
from ._keys import encode_key

if TYPE_CHECKING:
    from ._drivers import Batch, Driver

LEASES = 4  # key space of lease records: (4, workflow_id)


def lease_key(workflow_id: str) -> bytes:
    """Where the lease record of *workflow_id* lives."""
    return encode_key((LEASES, workflow_id))


@attrs.frozen
class Lease:
    """A lease record: who owns the run, its fencing token, until when."""

    owner: str | None  # None: released (or revoked by a cancel)
    token: int
    expires_at: float  # epoch s; 0 once released

    def to_bytes(self) -> bytes:
        """Encode the record."""
        return dump_record([self.owner, self.token, self.expires_at])

    @classmethod
    def from_bytes(cls, data: bytes, key: bytes) -> Lease:
        """Decode a record."""
        record = load_record(data, key)
        try:
            owner, token, expires_at = record[:3]
            if not isinstance(token, int) or (
                owner is not None and not isinstance(owner, str)
            ):
                raise TypeError("bad field types")
            return cls(owner, token, float(expires_at))
        except (ValueError, TypeError) as exc:
            raise CorruptRecordError(key, f"bad lease record ({exc})") from None

    def is_held(self, now: float) -> bool:
        """Whether a worker owns the run now (taken, not released, not expired)."""
        return self.owner is not None and self.expires_at > now


async def read_lease(
    driver: Driver, workflow_id: str
) -> tuple[Lease | None, bytes | None]:
    """The lease of *workflow_id* and its stored bytes (for a `check`), or Nones."""
    key = lease_key(workflow_id)
    raw = await driver.get(key)
    return (None if raw is None else Lease.from_bytes(raw, key)), raw


async def revoke_lease(driver: Driver, batch: Batch, workflow_id: str) -> None:
    """Add to *batch* what makes the owner of a running workflow stop writing.

    Bumps the token (checked against the record read), so the owner's next write
    fails its fence; nothing happens if the workflow never had a lease.
    """
    lease, raw = await read_lease(driver, workflow_id)
    if lease is None:
        return
    key = lease_key(workflow_id)
    batch.check(key, raw)
    batch.put(key, Lease(None, lease.token + 1, 0.0).to_bytes())
