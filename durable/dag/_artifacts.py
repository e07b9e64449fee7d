"""Artifacts: large step outputs stored outside the run's history, named by an id.

A step that produces a big body stores it in an `ArtifactStore` and records only the
small `ArtifactRef` in history. `FileArtifactStore` keeps each artifact as files under
one root directory.

Rule: an id maps to its files injectively and always inside the root. The id is split
on ``":"`` into components (empty components are refused); each component is
percent-encoded byte by byte (UTF-8; every byte outside ``[A-Za-z0-9_.-]`` becomes
``%XX`` with uppercase hex, and a component that is exactly ``.`` or ``..`` becomes
``%2E`` or ``%2E%2E``), so an encoded component never contains a separator and is never
a relative link. The suffix tells the entry kinds apart inside a directory:

- ``<component>.d/``: a directory level (every component but the last);
- ``<last>.data``: the body, ``<last>.json``: its sidecar (the `ArtifactRef` as JSON);
- ``*.tmp``: a write in progress, renamed over its target when complete.

So id ``x.json`` (body ``x.json.data``) never lands on the sidecar of id ``x``
(``x.json``), and id ``x.data:y`` (directory ``x.data.d``) never lands on the body of
id ``x``. Writes are atomic (temp file, fsync, ``os.replace``) and the directory is
fsynced, so a ref recorded in history after `FileArtifactStore.put` returns points at
a complete body even after a crash. Encoded names are case-sensitive: on a
case-insensitive filesystem (macOS and Windows defaults) ids that differ only in the
case of ASCII letters share files.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, final

import anyio
import anyio.to_thread
import attrs

from ._errors import DagError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from contextlib import AbstractAsyncContextManager

DEFAULT_CHUNK_SIZE = 64 * 1024  # bytes per chunk when iterating an ArtifactReader

_SAFE_BYTES = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
)
_DIR_SUFFIX = ".d"
_BODY_SUFFIX = ".data"
_SIDECAR_SUFFIX = ".json"
_TEMP_SUFFIX = ".tmp"
_FALLBACK_KIND = "artifact"
_FALLBACK_CONTENT_TYPE = "application/octet-stream"


class ArtifactNotFoundError(DagError, LookupError):
    """No artifact is stored under the requested id."""

    def __init__(self, artifact_id: str, root: str) -> None:
        super().__init__(
            f"no artifact {artifact_id!r} in the store at {root}; check the id, and "
            "that the step that produces it ran with this store"
        )
        self.artifact_id = artifact_id
        self.root = root


# ---------------------------------------------------------------------------
# ArtifactRef


def _copy_metadata(value: Mapping[str, str]) -> dict[str, str]:
    """Copy *value* so that a caller's later changes never reach the ref."""
    copied = dict(value)
    for key, item in copied.items():
        if not isinstance(key, str) or not isinstance(item, str):  # type: ignore[redundant-expr]
            raise TypeError(
                f"artifact metadata maps str to str, but {key!r} maps to {item!r}; "
                "convert keys and values to str"
            )
    return copied


@attrs.frozen
class ArtifactRef:
    """Where an artifact stored outside the run's history lives.

    This small record is what a step returns and history stores; the body stays in
    the `ArtifactStore` and is read back with ``store.open(ref.id)``.
    """

    id: str
    uri: str
    name: str
    kind: str
    content_type: str
    size: int  # bytes
    metadata: Mapping[str, str] = attrs.field(
        factory=dict,
        converter=_copy_metadata,
        hash=False,  # a dict is unhashable; equal refs still hash equal
    )

    def to_json(self) -> dict[str, object]:
        """Return the ref as a JSON-ready dict (``metadata`` left out when empty)."""
        data: dict[str, object] = {
            "id": self.id,
            "uri": self.uri,
            "name": self.name,
            "kind": self.kind,
            "contentType": self.content_type,
            "size": self.size,
        }
        if self.metadata:
            data["metadata"] = dict(self.metadata)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ArtifactRef:
        """Build a ref from what `to_json` returned; unknown keys are ignored.

        Raises:
            ValueError: *data* is not a mapping, misses a key, or has a value of the
                wrong type.
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"an artifact ref must be a JSON object, not {type(data).__name__}"
            )
        fields: dict[str, str] = {}
        for key in ("id", "uri", "name", "kind", "contentType"):
            value = data.get(key)
            if not isinstance(value, str):
                raise ValueError(
                    f"artifact ref {dict(data)!r} needs {key!r} as a string, "
                    f"found {value!r}"
                )
            fields[key] = value
        size = data.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(
                f"artifact ref {dict(data)!r} needs 'size' as an integer >= 0, "
                f"found {size!r}"
            )
        metadata = data.get("metadata", {})
        if not isinstance(metadata, Mapping) or not all(
            isinstance(key, str) and isinstance(value, str)
            for key, value in metadata.items()
        ):
            raise ValueError(
                f"artifact ref {dict(data)!r} needs 'metadata' as an object of "
                f"strings, found {metadata!r}"
            )
        return cls(
            id=fields["id"],
            uri=fields["uri"],
            name=fields["name"],
            kind=fields["kind"],
            content_type=fields["contentType"],
            size=size,
            metadata=metadata,
        )


# ---------------------------------------------------------------------------
# Reading


@final
class ArtifactReader:
    """Reads one artifact's body: `read`, or ``async for chunk in reader``.

    Every read runs in a worker thread, so a slow disk never blocks the event loop.
    Iterating yields chunks of at most *chunk_size* bytes and never holds the whole
    body in memory. The reader does not own *file*: whoever opened it closes it.
    """

    __slots__ = ("_chunk_size", "_file", "_lock", "ref")

    def __init__(
        self,
        ref: ArtifactRef,
        file: IO[bytes],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        _check_chunk_size(chunk_size)
        self.ref = ref
        self._file = file
        self._chunk_size = chunk_size
        self._lock = anyio.Lock()  # one read at a time keeps chunks in order

    async def read(self, size: int = -1) -> bytes:
        """Return up to *size* bytes (all the rest when negative); ``b""`` at the end."""
        async with self._lock:
            return await anyio.to_thread.run_sync(self._file.read, size)

    def __aiter__(self) -> ArtifactReader:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read(self._chunk_size)
        if not chunk:
            raise StopAsyncIteration
        return chunk


# ---------------------------------------------------------------------------
# Stores


class ArtifactStore(Protocol):
    """Stores artifact bodies by id; what a DAG runtime writes large outputs to."""

    async def put(
        self,
        artifact_id: str,
        body: bytes,
        *,
        name: str,
        kind: str,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactRef:
        """Store *body* under *artifact_id* (replacing any earlier one); return its ref."""
        ...

    def open(self, artifact_id: str) -> AbstractAsyncContextManager[ArtifactReader]:
        """Open the artifact for reading; raise `ArtifactNotFoundError` if missing."""
        ...

    async def close(self) -> None:
        """Release what the store holds (connections, clients)."""
        ...


def encode_component(component: str) -> str:
    """Percent-encode one path component so that it is a safe, distinct file name.

    Every UTF-8 byte outside ``[A-Za-z0-9_.-]`` becomes ``%XX`` (uppercase hex), and
    ``.``/``..`` become ``%2E``/``%2E%2E``. Distinct inputs give distinct outputs,
    which never contain a path separator. The caller refuses empty components.
    """
    if component in {".", ".."}:
        return "%2E" * len(component)
    return "".join(
        chr(byte) if byte in _SAFE_BYTES else f"%{byte:02X}"
        for byte in component.encode("utf-8", "surrogatepass")
    )


def _check_chunk_size(chunk_size: int) -> None:
    if (
        not isinstance(chunk_size, int)  # type: ignore[redundant-expr]
        or isinstance(chunk_size, bool)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, not {chunk_size!r}")


@final
class FileArtifactStore:
    """Keeps artifacts as files under one root directory (see the module docstring).

    Each artifact is a body file plus a JSON sidecar holding its `ArtifactRef`. All
    file work runs in worker threads, so the store works under asyncio and trio.

    Example:
        store = FileArtifactStore("artifacts")
        ref = await store.put("run-1:report", body, name="report.csv",
                              kind="table", content_type="text/csv")
        async with store.open(ref.id) as reader:
            async for chunk in reader:
                sink.write(chunk)
    """

    def __init__(
        self, root: str | os.PathLike[str], *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> None:
        _check_chunk_size(chunk_size)
        self._root = Path(root).resolve()
        self._chunk_size = chunk_size

    @property
    def root(self) -> Path:
        """The absolute directory everything is stored under."""
        return self._root

    def path(self, artifact_id: str) -> Path:
        """Return the body file of *artifact_id*; its sidecar is ``.with_suffix(".json")``.

        Raises:
            ValueError: *artifact_id* is empty or has an empty ``:`` component.
        """
        if not isinstance(artifact_id, str):
            raise TypeError(
                f"an artifact id is a str, not {type(artifact_id).__name__}"
            )
        if not artifact_id:
            raise ValueError("an artifact id must not be empty; pass a non-empty str")
        components = artifact_id.split(":")
        if not all(components):
            raise ValueError(
                f"artifact id {artifact_id!r} has an empty component (a leading, "
                "trailing or doubled ':'); separate non-empty parts with single ':'"
            )
        *directories, last = (encode_component(part) for part in components)
        path = self._root.joinpath(*(part + _DIR_SUFFIX for part in directories))
        return path / (last + _BODY_SUFFIX)

    async def put(
        self,
        artifact_id: str,
        body: bytes,
        *,
        name: str,
        kind: str,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> ArtifactRef:
        """Store *body* under *artifact_id* atomically, replacing any earlier one.

        The body is durable (fsynced) when this returns. A failure to write the
        sidecar is raised, not ignored: the artifact would otherwise lose its ref.

        Raises:
            ValueError: *artifact_id* is empty or has an empty ``:`` component.
        """
        path = self.path(artifact_id)
        ref = ArtifactRef(
            id=artifact_id,
            uri=path.as_uri(),
            name=name,
            kind=kind,
            content_type=content_type,
            size=len(body),
            metadata={} if metadata is None else metadata,
        )
        sidecar = (json.dumps(ref.to_json(), indent=2) + "\n").encode("utf-8")
        await anyio.to_thread.run_sync(_write_artifact, path, bytes(body), sidecar)
        return ref

    def open(self, artifact_id: str) -> AbstractAsyncContextManager[ArtifactReader]:
        """Open *artifact_id* for reading; the file is closed when the block exits.

        The reader's ``ref`` comes from the sidecar. If the sidecar is missing,
        unreadable or does not describe this body (a crash between the two writes),
        a plain ref is built from the body file instead.

        Raises:
            ArtifactNotFoundError: nothing is stored under *artifact_id*.
            ValueError: *artifact_id* is empty or has an empty ``:`` component.
        """
        return self._open(artifact_id, self.path(artifact_id))

    @contextlib.asynccontextmanager
    async def _open(
        self, artifact_id: str, path: Path
    ) -> AsyncIterator[ArtifactReader]:
        opened = await anyio.to_thread.run_sync(_open_artifact, artifact_id, path)
        if opened is None:
            raise ArtifactNotFoundError(artifact_id, str(self._root))
        file, ref = opened
        try:
            yield ArtifactReader(ref, file, chunk_size=self._chunk_size)
        finally:
            with anyio.CancelScope(shield=True):  # never leak the file on cancellation
                await anyio.to_thread.run_sync(file.close)

    async def close(self) -> None:
        """Do nothing: files are opened per call, so the store holds nothing open.

        It exists because `ArtifactStore` stores that do hold resources (a client of
        an object store) release them here, and callers close every store alike.
        """


# ---------------------------------------------------------------------------
# Blocking helpers, run in worker threads


def _write_atomically(path: Path, data: bytes) -> None:
    """Write *data* to a temp file beside *path*, fsync it, then rename it over."""
    fd, temp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX
    )
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        Path(temp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temp).unlink()
        raise


def _fsync_directory(directory: Path) -> None:
    """Make renames in *directory* durable (POSIX; Windows cannot open directories)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_artifact(path: Path, body: bytes, sidecar: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, body)
    _write_atomically(path.with_suffix(_SIDECAR_SUFFIX), sidecar)
    _fsync_directory(path.parent)


def _open_artifact(
    artifact_id: str, path: Path
) -> tuple[IO[bytes], ArtifactRef] | None:
    try:
        file = path.open("rb")
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        size = os.fstat(file.fileno()).st_size
        return file, _read_sidecar(artifact_id, path, size)
    except BaseException:
        file.close()
        raise


def _read_sidecar(artifact_id: str, path: Path, size: int) -> ArtifactRef:
    uri = path.as_uri()
    try:
        ref = ArtifactRef.from_json(
            json.loads(path.with_suffix(_SIDECAR_SUFFIX).read_bytes())
        )
    except (OSError, ValueError):  # missing, unreadable, not JSON, not a ref
        ref = None
    if ref is None or ref.id != artifact_id or ref.size != size:
        return ArtifactRef(
            id=artifact_id,
            uri=uri,
            name=artifact_id.rsplit(":", 1)[-1],
            kind=_FALLBACK_KIND,
            content_type=_FALLBACK_CONTENT_TYPE,
            size=size,
        )
    # The uri says where the body is now, even if the root was moved since put().
    return attrs.evolve(ref, uri=uri)
