"""The msgpack codec: round trips, decoded forms, refusals and corrupt bytes."""

from __future__ import annotations

import ast
import datetime
import decimal
import enum
import uuid
from pathlib import Path

import msgpack
import pytest
import strategies
from hypothesis import given

import durable
from durable._codec import dump_record, dump_value, load_record, load_value, store_value
from durable._errors import CorruptRecordError, StorageError, UnstorableValueError


def shape(value: object) -> object:
    """A comparable description of *value* that includes every type and UTC offset."""
    if isinstance(value, list):
        return ("list", [shape(item) for item in value])
    if isinstance(value, dict):
        return ("dict", sorted((repr(k), shape(v)) for k, v in value.items()))
    if isinstance(value, datetime.datetime):
        return ("datetime", value.isoformat())  # includes the offset when aware
    return (type(value).__name__, repr(value))


class TestRoundTrip:
    @given(strategies.stored_values())
    def test_load_value_inverts_dump_value(self, value: object) -> None:
        assert shape(load_value(dump_value(value, "v"))) == shape(value)

    @given(strategies.stored_values())
    def test_store_value_returns_what_load_value_returns(self, value: object) -> None:
        data, decoded = store_value(value, "v")
        assert shape(decoded) == shape(load_value(data))

    @given(strategies.stored_values())
    def test_store_value_bytes_equal_dump_value_bytes(self, value: object) -> None:
        data, _ = store_value(value, "v")
        assert data == dump_value(value, "v")

    @given(strategies.stored_values())
    def test_storable_value_is_stored_unchanged(self, value: object) -> None:
        _, decoded = store_value(value, "v")
        assert shape(decoded) == shape(value)

    @pytest.mark.parametrize(
        "value",
        [
            datetime.datetime(2024, 2, 29, 13, 45, 7, 123456),
            datetime.datetime(2024, 2, 29, 13, 45),
            datetime.date(1999, 12, 31),
            datetime.timedelta(days=-3, seconds=5, microseconds=7),
            datetime.timedelta(0),
            decimal.Decimal("1.10"),
            decimal.Decimal("-0"),
            decimal.Decimal("1E+999"),
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            b"\x00\xff",
            b"",
            -(2**63),
            2**64 - 1,
            -0.0,
            float("inf"),
            "",
            None,
            True,
        ],
        ids=repr,
    )
    def test_value_round_trips_with_its_exact_type(self, value: object) -> None:
        decoded = load_value(dump_value(value, "v"))
        assert type(decoded) is type(value)
        assert shape(decoded) == shape(value)

    def test_naive_datetime_stays_naive(self) -> None:
        value = datetime.datetime(2024, 1, 2, 3, 4, 5)
        decoded = load_value(dump_value(value, "v"))
        assert isinstance(decoded, datetime.datetime)
        assert decoded.tzinfo is None
        assert decoded == value

    @pytest.mark.parametrize(
        "offset",
        [
            datetime.timedelta(0),
            datetime.timedelta(hours=5, minutes=30),
            datetime.timedelta(hours=-8),
            datetime.timedelta(hours=23, minutes=59),
        ],
        ids=str,
    )
    def test_aware_datetime_keeps_its_utc_offset(
        self, offset: datetime.timedelta
    ) -> None:
        value = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(offset))
        decoded = load_value(dump_value(value, "v"))
        assert isinstance(decoded, datetime.datetime)
        assert decoded == value
        assert decoded.utcoffset() == offset
        assert decoded.replace(tzinfo=None) == value.replace(tzinfo=None)

    def test_date_does_not_come_back_as_datetime(self) -> None:
        decoded = load_value(dump_value(datetime.date(2024, 1, 2), "v"))
        assert type(decoded) is datetime.date

    def test_decimal_keeps_its_exponent(self) -> None:
        decoded = load_value(dump_value(decimal.Decimal("2.500"), "v"))
        assert str(decoded) == "2.500"

    def test_nested_extension_types_round_trip(self) -> None:
        value = {
            "when": [datetime.date(2020, 1, 1), datetime.timedelta(hours=1)],
            7: {"id": uuid.UUID(int=1), "amount": decimal.Decimal("9.99")},
        }
        assert load_value(dump_value(value, "v")) == value

    def test_str_and_int_dict_keys_keep_their_types(self) -> None:
        decoded = load_value(dump_value({"1": "s", 1: "i", -(2**63): "min"}, "v"))
        assert decoded == {"1": "s", 1: "i", -(2**63): "min"}


class TestDecodedForm:
    def test_tuple_is_stored_as_a_list(self) -> None:
        _, decoded = store_value((1, (2, "x")), "v")
        assert decoded == [1, [2, "x"]]

    def test_intenum_is_stored_as_an_int(self) -> None:
        class Colour(enum.IntEnum):
            RED = 1

        _, decoded = store_value(Colour.RED, "v")
        assert type(decoded) is int
        assert decoded == 1

    def test_str_subclass_is_stored_as_str(self) -> None:
        class Name(str):
            __slots__ = ()

        _, decoded = store_value(Name("ada"), "v")
        assert type(decoded) is str
        assert decoded == "ada"

    def test_bool_stays_bool(self) -> None:
        _, decoded = store_value(True, "v")
        assert decoded is True

    def test_mutating_the_input_after_storing_does_not_change_the_decoded_form(
        self,
    ) -> None:
        value = {"items": [1, 2]}
        _, decoded = store_value(value, "v")
        value["items"].append(3)
        assert decoded == {"items": [1, 2]}

    def test_decoded_form_equals_a_later_load(self) -> None:
        data, decoded = store_value(
            {"t": (1, 2), "when": datetime.date(2020, 5, 1)}, "v"
        )
        assert (
            decoded
            == load_value(data)
            == {"t": [1, 2], "when": datetime.date(2020, 5, 1)}
        )


def _function() -> None:
    pass


class _Plain:
    pass


UNSTORABLE = [
    pytest.param(object(), id="object"),
    pytest.param({1, 2}, id="set"),
    pytest.param(frozenset(), id="frozenset"),
    pytest.param(_function, id="function"),
    pytest.param(_Plain(), id="instance"),
    pytest.param(2**70, id="int-2**70"),
    pytest.param(-(2**63) - 1, id="int-below-int64"),
    pytest.param(2**64, id="int-2**64"),
    pytest.param({(1, 2): "x"}, id="dict-with-tuple-keys"),
    pytest.param([1, {"deep": object()}], id="nested-object"),
    pytest.param(datetime.time(12, 0), id="time"),
    pytest.param(1j, id="complex"),
    pytest.param("\ud800", id="lone-surrogate"),
]


class TestUnstorable:
    @pytest.mark.parametrize("value", UNSTORABLE)
    def test_store_value_raises_unstorable_value_error(self, value: object) -> None:
        with pytest.raises(UnstorableValueError):
            store_value(value, "step 'charge'")

    @pytest.mark.parametrize("value", UNSTORABLE)
    def test_unstorable_value_error_is_a_type_error(self, value: object) -> None:
        with pytest.raises(TypeError):
            store_value(value, "step 'charge'")

    @pytest.mark.parametrize("value", UNSTORABLE)
    def test_message_names_what_produced_the_value(self, value: object) -> None:
        with pytest.raises(UnstorableValueError, match="step 'charge'") as info:
            store_value(value, "step 'charge'")
        assert info.value.what == "step 'charge'"

    def test_error_names_the_outer_value_type(self) -> None:
        with pytest.raises(UnstorableValueError) as info:
            store_value({"a": {1, 2}}, "the output of workflow 'w'")
        assert info.value.value_type == "dict"
        assert "dict" in str(info.value)

    def test_self_referencing_list_is_refused(self) -> None:
        loop: list[object] = []
        loop.append(loop)
        with pytest.raises(UnstorableValueError):
            store_value(loop, "v")

    @pytest.mark.parametrize(
        "value",
        [object(), {1}, 2**70, "\ud800"],
        ids=["object", "set", "int-2**70", "surrogate"],
    )
    def test_dump_value_raises_unstorable_value_error(self, value: object) -> None:
        with pytest.raises(UnstorableValueError, match="input of 'w'"):
            dump_value(value, "the input of 'w'")

    def test_failed_dump_leaves_no_bytes_behind(self) -> None:
        with pytest.raises(UnstorableValueError):
            dump_value([1, 2, 3, object()], "v")
        assert dump_value(7, "v") == msgpack.packb(7)


class TestCorruptBytes:
    @pytest.mark.parametrize(
        "data",
        [
            b"",  # nothing
            b"\xc1",  # never-used msgpack byte
            b"\x92\x01",  # array cut short
            b"\x01\x02",  # extra data after a value
            b"\xd4\x63\x00",  # unknown extension code 99
            b"\xc7\x03\x01abc",  # datetime extension that is not ISO text
            b"\xc7\x02\x03\xc1\xc1",  # timedelta extension that is not msgpack
            b"\xc7\x02\x05ab",  # UUID extension of the wrong length
            b"\xc7\x03\x04abc",  # Decimal extension that is not a number
            b"\xa2\xff\xfe",  # str that is not UTF-8
        ],
        ids=repr,
    )
    def test_load_value_on_garbage_raises_corrupt_record_error(
        self, data: bytes
    ) -> None:
        with pytest.raises(CorruptRecordError) as info:
            load_value(data, b"wf/step")
        assert info.value.key == b"wf/step"
        assert repr(b"wf/step") in str(info.value)

    @pytest.mark.parametrize(
        "data", [b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xa2\xff\xfe"], ids=repr
    )
    def test_load_record_on_garbage_raises_corrupt_record_error(
        self, data: bytes
    ) -> None:
        with pytest.raises(CorruptRecordError) as info:
            load_record(data, b"wf/meta")
        assert info.value.key == b"wf/meta"
        assert repr(b"wf/meta") in str(info.value)

    @pytest.mark.parametrize(
        "record",
        [{"kind": 1}, 1, "list", None, b"\x90"],
        ids=["dict", "int", "str", "none", "bytes"],
    )
    def test_load_record_on_a_non_list_raises_corrupt_record_error(
        self, record: object
    ) -> None:
        with pytest.raises(CorruptRecordError, match="record list") as info:
            load_record(msgpack.packb(record), b"wf/meta")
        assert info.value.key == b"wf/meta"

    def test_corrupt_record_error_is_a_storage_error(self) -> None:
        with pytest.raises(StorageError):
            load_value(b"\xc1", b"k")


class TestRecords:
    def test_record_round_trips(self) -> None:
        record: list[object] = [1, "name", None, b"\x00nested", [2, 3], {"k": 1.5}]
        assert load_record(dump_record(record), b"k") == record

    def test_nested_value_bytes_are_not_decoded_by_load_record(self) -> None:
        inner = dump_value(datetime.date(2020, 1, 1), "v")
        record = load_record(dump_record([7, inner]), b"k")
        assert record == [7, inner]
        assert load_value(record[1]) == datetime.date(2020, 1, 1)

    def test_empty_record_round_trips(self) -> None:
        assert load_record(dump_record([]), b"k") == []


BANNED_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "shelve",
    "marshal",
}


def _imported_modules(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


class TestNoPickle:
    def test_no_durable_module_imports_pickle(self) -> None:
        package = Path(durable.__file__).parent
        sources = sorted(package.rglob("*.py"))
        assert sources
        offenders = {
            str(path.relative_to(package)): banned
            for path in sources
            if (banned := _imported_modules(path.read_text("utf-8")) & BANNED_MODULES)
        }
        assert offenders == {}

    def test_no_durable_module_calls_import_of_pickle_by_name(self) -> None:
        package = Path(durable.__file__).parent
        for path in package.rglob("*.py"):
            text = path.read_text("utf-8")
            assert '__import__("pickle")' not in text, path
            assert 'import_module("pickle")' not in text, path

    def test_pickle_bytes_are_not_unpickled(self) -> None:
        pickled = b"\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."
        with pytest.raises(CorruptRecordError):
            load_value(pickled, b"k")  # pickle.dumps({"a": 1}, protocol=4)
