"""FileArtifactStore: round trips, sidecars, fallbacks, and the id to path mapping."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable.dag._artifacts import ArtifactNotFoundError, ArtifactRef, FileArtifactStore

BODY = bytes(range(256)) * 40  # 10,240 bytes: ten full 1,000-byte chunks and a tail

# Ids with ":" mixed in but no empty component (those are refused).
components = st.text(alphabet=st.characters(exclude_characters=":"), min_size=1)
artifact_ids = st.lists(components, min_size=1, max_size=4).map(":".join)

TRAVERSAL_IDS = [
    "../x",
    "..",
    ".",
    "a:..:b",
    "..:..:..:etc:passwd",
    "/etc/passwd",
    "C:\\x",
    "a/../../b",
    "\\\\server\\share",
    "nul\x00byte",
    "~:x",
]


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def files_under(root: Path) -> list[Path]:
    """Every file below *root*, symlinks resolved."""
    return [
        (Path(directory) / name).resolve()
        for directory, _, files in os.walk(root)
        for name in files
    ]


def sidecar_of(store: FileArtifactStore, artifact_id: str) -> Path:
    return store.path(artifact_id).with_suffix(".json")


async def put(store: FileArtifactStore, artifact_id: str, body: bytes) -> ArtifactRef:
    return await store.put(
        artifact_id, body, name="out.bin", kind="blob", content_type="text/plain"
    )


async def read_all(store: FileArtifactStore, artifact_id: str) -> bytes:
    async with store.open(artifact_id) as reader:
        return b"".join([chunk async for chunk in reader])


class TestRoundTrip:
    async def test_open_streams_the_body_in_chunks_of_chunk_size(
        self, tmp_path: Path
    ) -> None:
        store = FileArtifactStore(tmp_path, chunk_size=1000)
        await put(store, "run-1:out", BODY)
        async with store.open("run-1:out") as reader:
            chunks = [chunk async for chunk in reader]
        assert [len(chunk) for chunk in chunks] == [1000] * 10 + [240]
        assert b"".join(chunks) == BODY

    async def test_read_returns_at_most_size_then_the_rest_then_nothing(
        self, tmp_path: Path
    ) -> None:
        store = FileArtifactStore(tmp_path)
        await put(store, "a", b"0123456789")
        async with store.open("a") as reader:
            assert await reader.read(3) == b"012"
            assert await reader.read() == b"3456789"
            assert await reader.read() == b""

    async def test_put_returns_a_ref_describing_the_body(self, tmp_path: Path) -> None:
        store = FileArtifactStore(tmp_path)
        ref = await store.put(
            "run-1:report",
            BODY,
            name="report.csv",
            kind="table",
            content_type="text/csv",
            metadata={"rows": "40"},
        )
        assert (ref.id, ref.name, ref.kind, ref.content_type) == (
            "run-1:report",
            "report.csv",
            "table",
            "text/csv",
        )
        assert ref.size == len(BODY)
        assert ref.metadata == {"rows": "40"}

    async def test_reader_ref_equals_the_ref_put_returned(self, tmp_path: Path) -> None:
        store = FileArtifactStore(tmp_path)
        ref = await store.put(
            "a:b", b"x", name="b", kind="k", content_type="c/d", metadata={"m": "1"}
        )
        async with store.open("a:b") as reader:
            assert reader.ref == ref

    async def test_empty_body_round_trips(self, tmp_path: Path) -> None:
        store = FileArtifactStore(tmp_path)
        ref = await put(store, "empty", b"")
        assert ref.size == 0
        assert await read_all(store, "empty") == b""

    async def test_uri_is_a_file_uri_of_the_body_inside_root(
        self, tmp_path: Path
    ) -> None:
        store = FileArtifactStore(tmp_path)
        ref = await put(store, "run-1:out", BODY)
        parsed = urlparse(ref.uri)
        assert parsed.scheme == "file"
        path = Path(url2pathname(parsed.path))
        assert path == store.path("run-1:out")
        assert path.is_relative_to(store.root)
        assert await anyio.Path(path).read_bytes() == BODY

    async def test_sidecar_holds_the_ref_as_indented_json(self, tmp_path: Path) -> None:
        store = FileArtifactStore(tmp_path)
        ref = await store.put(
            "a", b"x", name="a", kind="k", content_type="c/d", metadata={"m": "1"}
        )
        text = sidecar_of(store, "a").read_text()
        assert json.loads(text) == ref.to_json()
        assert "\n  " in text

    async def test_putting_an_id_again_replaces_body_and_ref(
        self, tmp_path: Path
    ) -> None:
        store = FileArtifactStore(tmp_path)
        await put(store, "a", b"first version")
        second = await store.put(
            "a", b"second", name="v2", kind="k2", content_type="c/2"
        )
        async with store.open("a") as reader:
            assert reader.ref == second
            assert await reader.read() == b"second"

    async def test_put_leaves_no_temporary_files(self, tmp_path: Path) -> None:
        store = FileArtifactStore(tmp_path)
        await put(store, "a", b"1")
        await put(store, "a", b"2")
        assert names_in(tmp_path) == [
            "a.data",
            "a.json",
        ]

    async def test_reader_file_is_closed_when_the_block_exits(
        self, tmp_path: Path
    ) -> None:
        store = FileArtifactStore(tmp_path)
        await put(store, "a", b"body")
        async with store.open("a") as reader:
            pass
        with pytest.raises(ValueError, match="closed file"):
            await reader.read()

    async def test_close_can_be_called_and_the_store_still_reads(
        self, tmp_path: Path
    ) -> None:
        store = FileArtifactStore(tmp_path)
        await put(store, "a", b"body")
        await store.close()
        await store.close()
        assert await read_all(store, "a") == b"body"


class TestMissingAndBroken:
    async def test_missing_id_raises_artifact_not_found_naming_id_and_root(
        self, tmp_path: Path
    ) -> None:
        store = FileArtifactStore(tmp_path)
        with pytest.raises(ArtifactNotFoundError) as caught:
            async with store.open("run-1:nothing"):
                pass
        message = str(caught.value)
        assert "'run-1:nothing'" in message
        assert str(store.root) in message
        assert isinstance(caught.value, LookupError)

    async def test_missing_sidecar_falls_back_to_a_plain_ref(
        self, tmp_path: Path
    ) -> None:
        store = FileArtifactStore(tmp_path)
        ref = await put(store, "run-1:report", BODY)
        sidecar_of(store, "run-1:report").unlink()
        async with store.open("run-1:report") as reader:
            assert reader.ref == ArtifactRef(
                id="run-1:report",
                uri=ref.uri,
                name="report",
                kind="artifact",
                content_type="application/octet-stream",
                size=len(BODY),
            )

    @pytest.mark.parametrize(
        "sidecar",
        [b"not json", b"[1, 2]", b'{"id": "a"}', b"\xff\xfe", b'{"size": -1}'],
    )
    async def test_unreadable_sidecar_falls_back_to_a_plain_ref(
        self, tmp_path: Path, sidecar: bytes
    ) -> None:
        store = FileArtifactStore(tmp_path)
        await put(store, "a", b"body")
        sidecar_of(store, "a").write_bytes(sidecar)
        async with store.open("a") as reader:
            assert reader.ref.kind == "artifact"
            assert reader.ref.size == 4
            assert await reader.read() == b"body"

    async def test_sidecar_of_an_older_body_is_not_trusted(
        self, tmp_path: Path
    ) -> None:
        # A crash between the body's rename and the sidecar's leaves the old sidecar.
        store = FileArtifactStore(tmp_path)
        await put(store, "a", b"old")
        store.path("a").write_bytes(b"newer body")
        async with store.open("a") as reader:
            assert reader.ref.size == len(b"newer body")
            assert reader.ref.kind == "artifact"

    async def test_sidecar_write_failure_is_raised(self, tmp_path: Path) -> None:
        store = FileArtifactStore(tmp_path)
        sidecar_of(store, "a").mkdir(parents=True)  # os.replace cannot overwrite it
        with pytest.raises(OSError):  # noqa: PT011 - the platform picks the subclass
            await put(store, "a", b"body")

    @pytest.mark.parametrize("bad_id", ["", ":", "a:", ":a", "a::b"])
    async def test_empty_ids_and_components_are_refused(
        self, tmp_path: Path, bad_id: str
    ) -> None:
        store = FileArtifactStore(tmp_path)
        with pytest.raises(ValueError, match="empty"):
            await put(store, bad_id, b"x")
        with pytest.raises(ValueError, match="empty"):
            store.open(bad_id)
        assert names_in(tmp_path) == []

    @pytest.mark.parametrize("chunk_size", [0, -1])
    def test_chunk_size_must_be_positive(self, tmp_path: Path, chunk_size: int) -> None:
        with pytest.raises(ValueError, match="chunk_size"):
            FileArtifactStore(tmp_path, chunk_size=chunk_size)


class TestIdsToPaths:
    def test_components_become_directories_and_the_last_the_body(
        self, tmp_path: Path
    ) -> None:
        store = FileArtifactStore(tmp_path)
        root = tmp_path.resolve()
        assert store.path("run-1:report.csv") == root / "run-1.d" / "report.csv.data"
        assert store.path("a b/ü") == root / "a%20b%2F%C3%BC.data"
        assert store.path("..:.") == root / "%2E%2E.d" / "%2E.data"

    async def test_an_id_and_its_would_be_sidecar_name_coexist(
        self, tmp_path: Path
    ) -> None:
        store = FileArtifactStore(tmp_path)
        for artifact_id in ["x", "x.json", "x.data", "x.data:y", "x.json:y", "x.d"]:
            await put(store, artifact_id, artifact_id.encode())
        for artifact_id in ["x", "x.json", "x.data", "x.data:y", "x.json:y", "x.d"]:
            assert await read_all(store, artifact_id) == artifact_id.encode()

    @pytest.mark.parametrize("artifact_id", TRAVERSAL_IDS)
    async def test_traversal_ids_stay_inside_root(
        self, tmp_path: Path, artifact_id: str
    ) -> None:
        root = tmp_path / "root"
        store = FileArtifactStore(root)
        await put(store, artifact_id, b"payload")
        assert names_in(tmp_path) == ["root"]
        assert all(path.is_relative_to(store.root) for path in files_under(root))
        assert await read_all(store, artifact_id) == b"payload"

    @given(artifact_id=artifact_ids)
    def test_path_is_always_strictly_under_root(self, artifact_id: str) -> None:
        store = FileArtifactStore("artifact-root")
        path = store.path(artifact_id)
        assert path.is_relative_to(store.root)
        assert os.path.normpath(path) == str(path)  # no ".", "..", or doubled "/"
        assert len(path.relative_to(store.root).parts) == artifact_id.count(":") + 1

    @given(a=artifact_ids, b=artifact_ids)
    def test_distinct_ids_never_share_or_nest_files(self, a: str, b: str) -> None:
        store = FileArtifactStore("artifact-root")
        if a == b:
            assert store.path(a) == store.path(b)
            return
        files_a = {store.path(a), sidecar_of(store, a)}
        files_b = {store.path(b), sidecar_of(store, b)}
        assert files_a.isdisjoint(files_b)
        for file_a in files_a:  # a file is never a directory of another id
            for file_b in files_b:
                assert file_a not in file_b.parents
                assert file_b not in file_a.parents


class TestRefJson:
    def test_to_json_uses_camel_case_and_omits_empty_metadata(self) -> None:
        ref = ArtifactRef("a", "file:///a", "n", "k", "c/t", 3)
        assert ref.to_json() == {
            "id": "a",
            "uri": "file:///a",
            "name": "n",
            "kind": "k",
            "contentType": "c/t",
            "size": 3,
        }

    def test_from_json_inverts_to_json(self) -> None:
        ref = ArtifactRef("a", "file:///a", "n", "k", "c/t", 3, {"x": "y"})
        assert ArtifactRef.from_json(ref.to_json()) == ref
        assert ArtifactRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref

    @pytest.mark.parametrize(
        "change",
        [
            {"id": None},
            {"size": "3"},
            {"size": True},
            {"size": -1},
            {"contentType": 1},
            {"metadata": {"x": 1}},
            {"metadata": ["x"]},
        ],
    )
    def test_from_json_refuses_a_malformed_mapping(
        self, change: dict[str, object]
    ) -> None:
        data = ArtifactRef("a", "file:///a", "n", "k", "c/t", 3).to_json() | change
        data = {key: value for key, value in data.items() if value is not None}
        with pytest.raises(ValueError, match="artifact ref"):
            ArtifactRef.from_json(data)

    def test_metadata_is_copied_so_later_changes_do_not_leak_in(self) -> None:
        metadata = {"x": "1"}
        ref = ArtifactRef("a", "file:///a", "n", "k", "c/t", 3, metadata)
        metadata["x"] = "2"
        assert ref.metadata == {"x": "1"}

    def test_refs_are_hashable_and_compare_by_value(self) -> None:
        one = ArtifactRef("a", "file:///a", "n", "k", "c/t", 3, {"x": "1"})
        two = ArtifactRef("a", "file:///a", "n", "k", "c/t", 3, {"x": "1"})
        assert one == two
        assert hash(one) == hash(two)
        assert one != ArtifactRef("a", "file:///a", "n", "k", "c/t", 3, {"x": "2"})
