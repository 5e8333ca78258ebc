"""A protocol buffer decoder with no proto compiler: the wire format read against small
hand-written schemas (`Message`, `Field`) that list only the fields a reader needs.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


# --------------------------------------------------------------------------------------------
# Protocol buffer wire format
#
# A message is a sequence of (key, value) records; key = field_number << 3 | wire_type.
# Wire types: 0 varint (int32/64, uint32/64, bool, enum; negative int32/64 take ten bytes, two's
# complement), 1 fixed 64-bit (double, fixed64), 2 length-delimited (string, bytes, a nested
# message, or a packed repeated scalar field), 5 fixed 32-bit (float, fixed32). Types 3 and 4
# (groups) are obsolete and not used by these schemas. A repeated scalar may arrive packed (one
# length-delimited record) or unpacked (one record per element); readers must accept both.
# --------------------------------------------------------------------------------------------

class WireError(ValueError):
    """The bytes are not a valid protocol buffer of the expected message."""


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The unsigned varint at `pos` and the position after it."""
    result = shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise WireError(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than ten bytes at byte {pos}")


def signed64(value: int) -> int:
    """A varint read as a two's-complement int64 (how int32 and int64 fields store negatives)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def iter_records(buf: bytes | memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, raw value) of each record of one message, in order. The raw
    value is an int for wire types 0, 1 and 5 (fixed widths as unsigned little-endian) and a
    memoryview of the payload for type 2."""
    view = memoryview(buf)
    pos, end = 0, len(view)
    while pos < end:
        start = pos
        key, pos = read_varint(view, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {start}")
        if wire == 0:
            value, pos = read_varint(view, pos)
        elif wire == 2:
            size, pos = read_varint(view, pos)
            if pos + size > end:
                raise WireError(f"field {number}: {size} bytes announced at byte {start}, "
                                f"only {end - pos} left (truncated?)")
            value, pos = view[pos:pos + size], pos + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise WireError(f"field {number}: truncated fixed{width * 8} at byte {start}")
            value, pos = int.from_bytes(view[pos:pos + width], "little"), pos + width
        else:
            raise WireError(f"field {number}: unsupported wire type {wire} at byte {start}")
        yield number, wire, value


# Scalar kinds: the wire type each arrives in, how its raw value is converted, and its default.
_SCALARS: dict[str, tuple[int, Any, Any]] = {
    "int64": (0, signed64, 0),  # also int32: same encoding
    "uint64": (0, int, 0),  # also uint32 and enums
    "bool": (0, bool, False),
    "double": (1, lambda v: struct.unpack("<d", v.to_bytes(8, "little"))[0], 0.0),
    "float": (5, lambda v: struct.unpack("<f", v.to_bytes(4, "little"))[0], 0.0),
    "string": (2, lambda v: bytes(v).decode("utf-8", errors="replace"), ""),
    "bytes": (2, bytes, b""),
}


@dataclass(frozen=True)
class Field:
    """One field of a schema: its name, a scalar kind of `_SCALARS` or a nested `Message`."""

    name: str
    kind: str | Message
    repeated: bool = False


@dataclass(frozen=True)
class Message:
    """A message schema: field number -> Field. Fields not listed are skipped when decoding."""

    name: str
    fields: dict[int, Field] = field(default_factory=dict)


def decode(buf: bytes | memoryview, schema: Message) -> dict[str, Any]:
    """Decode one message into a dict keyed by field name. Every listed field is present:
    repeated fields as lists, absent messages as None, absent scalars as their proto3 default.
    Raises WireError when the bytes do not fit the schema (bad wire type, truncation)."""
    out: dict[str, Any] = {}
    for number, wire, raw in iter_records(buf):
        spec = schema.fields.get(number)
        if spec is None:
            continue
        if isinstance(spec.kind, Message):
            if wire != 2:
                raise WireError(f"{schema.name}.{spec.name} (field {number}): wire type {wire}, "
                                "expected 2 (a nested message)")
            try:
                value = decode(raw, spec.kind)
            except WireError as e:
                raise WireError(f"in {schema.name}.{spec.name}: {e}") from None
            if spec.repeated:
                out.setdefault(spec.name, []).append(value)
            else:  # a message seen twice is merged; these schemas never need it
                out[spec.name] = value
            continue
        expected, convert, _ = _SCALARS[spec.kind]
        if wire == expected:
            value = convert(raw)
            if spec.repeated:
                out.setdefault(spec.name, []).append(value)
            else:
                out[spec.name] = value
        elif wire == 2 and spec.repeated and expected != 2:
            out.setdefault(spec.name, []).extend(_unpack(raw, expected, convert))
        else:
            raise WireError(f"{schema.name}.{spec.name} (field {number}): wire type {wire}, "
                            f"expected {expected}")
    for spec in schema.fields.values():
        if spec.name not in out:
            out[spec.name] = ([] if spec.repeated else None if isinstance(spec.kind, Message)
                              else _SCALARS[spec.kind][2])
    return out


def _unpack(payload: memoryview, wire: int, convert: Any) -> list:
    """The elements of a packed repeated scalar field."""
    values, pos = [], 0
    if wire == 0:
        while pos < len(payload):
            raw, pos = read_varint(payload, pos)
            values.append(convert(raw))
        return values
    width = 8 if wire == 1 else 4
    if len(payload) % width:
        raise WireError(f"packed fixed{width * 8} payload of {len(payload)} bytes")
    return [convert(int.from_bytes(payload[i:i + width], "little"))
            for i in range(0, len(payload), width)]
