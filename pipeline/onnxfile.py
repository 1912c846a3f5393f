"""What an ONNX file says about itself, read without loading it into a runtime.

Only ``metadata_props`` (the string map a model's exporter writes: PaddleOCR puts the recognizer's
character dictionary there) is read, by walking the protobuf wire format of ``ModelProto``: field
14 holds ``StringStringEntryProto`` messages of ``key`` (1) and ``value`` (2). Any engine's model
file can be read this way, whatever runs it.
"""

from __future__ import annotations

from pathlib import Path

METADATA_PROPS = 14
"""``ModelProto.metadata_props``'s field number (onnx.proto)."""

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def metadata_props(path: Path) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict; raises ``ValueError`` for a file that is not a
    well-formed protobuf."""
    data = path.read_bytes()
    props: dict[str, str] = {}
    for field, value in _fields(data):
        if field == METADATA_PROPS and isinstance(value, bytes):
            entry = {number: item for number, item in _fields(value) if isinstance(item, bytes)}
            props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    return props


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The top-level fields of one protobuf message: (number, varint or bytes)."""
    fields: list[tuple[int, int | bytes]] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, position = _varint(data, position)
            fields.append((number, value))
        elif wire == _LENGTH:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError(f"field {number} runs past the end of the data")
            fields.append((number, data[position : position + length]))
            position += length
        elif wire in (_FIXED64, _FIXED32):
            position += 8 if wire == _FIXED64 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {position}")
    if position != len(data):
        raise ValueError("the data ends inside a field")
    return fields


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("the data ends inside a varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 64 bits")
