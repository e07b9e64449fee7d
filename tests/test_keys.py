"""The key encoding: round trips, the documented order, prefixes and refusals."""

from __future__ import annotations

import enum

import pytest
import strategies
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import INT_BOUNDARIES, MAX_KEY_INT, model_order

from durable._keys import Key, _encode_int_uncached, decode_key, encode_int, encode_key


def extends(key: Key, prefix: Key) -> bool:
    return key[: len(prefix)] == prefix


def tuple_prefix_range(prefix: Key) -> tuple[bytes, bytes]:
    """The documented byte range holding exactly the keys that extend *prefix*."""
    start = encode_key(prefix)
    return start, start + b"\xff"


class TestRoundTrip:
    @given(strategies.keys())
    def test_decode_inverts_encode(self, key: Key) -> None:
        assert decode_key(encode_key(key)) == key

    @given(strategies.keys())
    def test_decoded_items_keep_their_types(self, key: Key) -> None:
        def shape(item: object) -> object:
            if isinstance(item, tuple):
                return tuple(shape(sub) for sub in item)
            return type(item)

        assert shape(decode_key(encode_key(key))) == shape(key)

    @given(strategies.keys(), strategies.keys())
    def test_different_keys_encode_differently(self, a: Key, b: Key) -> None:
        assert (encode_key(a) == encode_key(b)) == (a == b)

    def test_empty_key_encodes_to_empty_bytes(self) -> None:
        assert encode_key(()) == b""
        assert decode_key(b"") == ()

    @pytest.mark.parametrize(
        "key",
        [
            (None,),
            (None, None),
            ((None,),),
            ((None, None), None),
            (((None,),),),
            ((),),
            ((), ()),
            (b"\x00",),
            (b"\x00\xff",),
            (b"\xff\x00",),
            ("\x00",),
            ("a\x00", None),
            (("a\x00", None), b"\x00"),
        ],
    )
    def test_nul_and_none_edge_cases_round_trip(self, key: Key) -> None:
        assert decode_key(encode_key(key)) == key


class TestOrder:
    @given(a=strategies.keys(), b=strategies.keys())
    @example(a=("a",), b=("a\x00",))
    @example(a=("a", None), b=("a\x00",))
    @example(a=((),), b=((None,),))
    @example(a=(("a",), None), b=(("a", None),))
    @example(a=(b"\xff",), b=(b"\xff\x00",))
    @example(a=("\U0001f600",), b=("\uffff",))
    @example(a=(-(2**64),), b=(-(2**64) + 1,))
    def test_key_bytes_sort_like_keys(self, a: Key, b: Key) -> None:
        assert (encode_key(a) < encode_key(b)) == (model_order(a) < model_order(b))

    def test_types_sort_none_bytes_str_nested_int(self) -> None:
        keys: list[Key] = [(None,), (b"\xff",), ("",), ((),), (-(2**100),)]
        assert sorted(keys, key=encode_key) == keys

    def test_str_sorts_by_utf8_bytes(self) -> None:
        texts = ["\U0001f600", "\uffff", "\ue000", "\u00e9", "z", "a\x00", "a", ""]
        by_key = sorted(texts, key=lambda text: encode_key((text,)))
        assert by_key == sorted(texts, key=lambda text: text.encode("utf-8"))

    def test_shorter_key_sorts_before_its_extension(self) -> None:
        assert encode_key(("a",)) < encode_key(("a", None))
        assert encode_key(((1,),)) < encode_key(((1, None),))

    def test_nested_tuples_compare_item_by_item(self) -> None:
        keys: list[Key] = [((),), ((None,),), ((b"",),), (("",),), (((),),), ((0,),)]
        assert sorted(keys, key=encode_key) == keys

    def test_ints_sort_numerically_across_every_boundary(self) -> None:
        encoded = [encode_key((n,)) for n in INT_BOUNDARIES]
        assert encoded == sorted(encoded)
        assert len(set(encoded)) == len(INT_BOUNDARIES)

    @pytest.mark.parametrize(
        ("smaller", "larger"),
        [
            (-256, -255),
            (-255, -1),
            (-1, 0),
            (0, 1),
            (255, 256),
            (-(2**64), -(2**64) + 1),
            (2**64 - 1, 2**64),
            (-(2**64), 2**64),
            (-MAX_KEY_INT, -(2**2000)),
            (2**2000, MAX_KEY_INT),
        ],
    )
    def test_int_pair_sorts_numerically(self, smaller: int, larger: int) -> None:
        assert encode_key((smaller,)) < encode_key((larger,))

    @given(st.lists(strategies.key_ints(), min_size=2, max_size=20))
    def test_int_keys_sort_like_the_ints(self, numbers: list[int]) -> None:
        by_bytes = sorted(numbers, key=lambda n: encode_key((n,)))
        assert by_bytes == sorted(numbers)


class TestPrefixes:
    @given(strategies.keys(), strategies.keys())
    def test_encoding_of_a_tuple_prefix_is_a_byte_prefix(
        self, prefix: Key, rest: Key
    ) -> None:
        assert encode_key(prefix + rest).startswith(encode_key(prefix))

    @given(strategies.keys(), strategies.keys())
    def test_encoding_of_a_tuple_is_the_concatenation_of_its_parts(
        self, a: Key, b: Key
    ) -> None:
        assert encode_key(a + b) == encode_key(a) + encode_key(b)

    @given(strategies.keys(), strategies.keys())
    def test_every_extension_lies_in_the_tuple_prefix_range(
        self, prefix: Key, rest: Key
    ) -> None:
        start, end = tuple_prefix_range(prefix)
        assert start <= encode_key(prefix + rest) < end

    @given(strategies.keys(), strategies.keys())
    @example(prefix=("a",), key=("a\x00",))
    @example(prefix=("a",), key=("a\x00", 1))
    @example(prefix=(b"a",), key=(b"a\x00\x00",))
    @example(prefix=((),), key=((None,),))
    @example(prefix=(("a",),), key=(("a", None),))
    def test_only_extensions_lie_in_the_tuple_prefix_range(
        self, prefix: Key, key: Key
    ) -> None:
        start, end = tuple_prefix_range(prefix)
        assert (start <= encode_key(key) < end) == extends(key, prefix)


class TestNamesDoNotAlias:
    NAMES = (
        "a",
        "a/b",
        "a~b",
        "a\x00b",
        "a/",
        "a~",
        "a\x00",
        "a\x00\x00",
        "/",
        "~",
        "",
    )

    def test_names_encode_to_distinct_bytes(self) -> None:
        encoded = {encode_key((1, name)) for name in self.NAMES}
        assert len(encoded) == len(self.NAMES)

    @pytest.mark.parametrize("name", NAMES)
    def test_name_round_trips(self, name: str) -> None:
        assert decode_key(encode_key((1, name, 3))) == (1, name, 3)

    @pytest.mark.parametrize("name", NAMES)
    def test_range_of_a_name_holds_only_that_names_keys(self, name: str) -> None:
        start, end = tuple_prefix_range((1, name))
        for other in self.NAMES:
            for child in [(), (0,), (3, 7), ("\x00",), (None,)]:
                inside = start <= encode_key((1, other, *child)) < end
                assert inside == (other == name), (name, other, child)

    def test_slash_and_tilde_do_not_act_as_separators(self) -> None:
        assert encode_key(("a/b",)) != encode_key(("a", "b"))
        assert encode_key(("a~b",)) != encode_key(("a", "b"))
        assert decode_key(encode_key(("a/b",))) == ("a/b",)


class TestInts:
    def test_cached_encoding_equals_uncached(self) -> None:
        for value in range(-300, 4200):  # the cache covers 0..4095
            assert encode_int(value) == _encode_int_uncached(value), value

    @given(strategies.key_ints())
    def test_encode_int_is_the_encoding_of_a_one_int_key(self, value: int) -> None:
        assert encode_int(value) == encode_key((value,))

    @pytest.mark.parametrize(
        "value",
        [2**64 - 1, 2**64, -(2**64) + 1, -(2**64), MAX_KEY_INT, -MAX_KEY_INT],
    )
    def test_boundary_int_round_trips(self, value: int) -> None:
        assert decode_key(encode_key((value,))) == (value,)

    @pytest.mark.parametrize(
        ("value", "size"),
        [
            (0, 1),
            (1, 2),
            (-1, 2),
            (255, 2),
            (-255, 2),
            (256, 3),
            (-256, 3),
            (2**64 - 1, 9),
        ],
    )
    def test_small_ints_use_a_type_byte_and_their_bytes(
        self, value: int, size: int
    ) -> None:
        assert len(encode_int(value)) == size

    @pytest.mark.parametrize("value", [2**64, -(2**64)])
    def test_ints_over_eight_bytes_carry_a_length_byte(self, value: int) -> None:
        assert len(encode_int(value)) == 2 + 9

    @pytest.mark.parametrize("value", [MAX_KEY_INT + 1, -MAX_KEY_INT - 1, 2**3000])
    def test_int_over_255_bytes_is_refused(self, value: int) -> None:
        with pytest.raises(ValueError, match="255 bytes"):
            encode_key((value,))

    def test_intenum_encodes_as_its_int(self) -> None:
        class Tag(enum.IntEnum):
            SEVEN = 7

        assert encode_key((Tag.SEVEN,)) == encode_key((7,))


class TestRefusals:
    @pytest.mark.parametrize("item", [True, False])
    def test_bool_is_refused(self, item: bool) -> None:
        with pytest.raises(TypeError, match="bool"):
            encode_key((item,))

    def test_bool_inside_a_nested_tuple_is_refused(self) -> None:
        with pytest.raises(TypeError, match="bool"):
            encode_key(((1, True),))

    @pytest.mark.parametrize(
        "item",
        [1.5, [1], {"a": 1}, {1}, bytearray(b"x"), memoryview(b"x"), object(), 1j],
        ids=lambda item: type(item).__name__,
    )
    def test_unsupported_type_is_refused(self, item: object) -> None:
        with pytest.raises(TypeError, match=type(item).__name__):
            encode_key((item,))  # type: ignore[arg-type]

    def test_unsupported_type_inside_a_nested_tuple_is_refused(self) -> None:
        with pytest.raises(TypeError, match="float"):
            encode_key(((1, 2.0),))  # type: ignore[arg-type]


class TestMalformedBytes:
    @pytest.mark.parametrize(
        "data",
        [
            b"\x03",  # unknown type byte
            b"\xff",  # reserved
            b"\x00\xff",  # escaped None outside a nested tuple
            b"\x02abc",  # unterminated str
            b"\x01abc",  # unterminated bytes
            b"\x02\xff\xfe\x00",  # str that is not UTF-8
            b"\x15",  # 1-byte int missing its byte
            b"\x1c\x01\x02",  # 8-byte int cut short
            b"\x0c\x01",  # negative 8-byte int cut short
            b"\x1d",  # big int missing its length
            b"\x1d\x09\x01",  # big int cut short
            b"\x0b\xf6\x01",  # big negative int cut short
            b"\x05",  # unterminated nested tuple
            b"\x05\x02a\x00",  # nested tuple missing its end
            b"\x05\x03\x00",  # bad type byte inside a nested tuple
            b"\x05" * 10_000,  # nesting deeper than the recursion limit
        ],
    )
    def test_malformed_bytes_raise_value_error(self, data: bytes) -> None:
        with pytest.raises(ValueError, match=r"malformed|invalid|not found"):
            decode_key(data)

    @given(st.binary(max_size=40))
    def test_arbitrary_bytes_decode_or_raise_value_error(self, data: bytes) -> None:
        try:
            key = decode_key(data)
        except ValueError:
            return
        assert isinstance(key, tuple)

    @given(strategies.keys(), st.data())
    def test_truncated_encoding_is_refused_or_decodes_to_another_key(
        self, key: Key, data: st.DataObject
    ) -> None:
        encoded = encode_key(key)
        cut = data.draw(st.integers(0, max(len(encoded) - 1, 0)))
        try:
            decoded = decode_key(encoded[:cut])
        except ValueError:
            return
        assert decoded != key or cut == len(encoded)
