"""Take the weights out of a serialized ONNX model before protobuf parses it.

Weights are nearly all of a model's bytes. Parsed the usual way they exist three times at
once (the file's bytes, the parsed message, the decoded arrays), which sets both the load
time and the peak memory of a session. This module walks the protobuf wire format just far
enough to find the ``raw_data`` of each top-level initializer (ModelProto.graph = 7,
GraphProto.initializer = 5, TensorProto.raw_data = 9) and returns a copy of the model without
those payloads plus where each one lies in the original buffer, so the caller can parse the
small remainder and view the weights in place (for a file: in a read-only memory map).

Anything unexpected in the bytes (truncation, group wire types, lengths past the end) raises
:class:`WireFormatError`; the caller then parses the whole buffer the ordinary way, which
reports the problem in protobuf's own terms.
"""

from __future__ import annotations

import mmap

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class WireFormatError(ValueError):
    """The bytes are not a protobuf message this module can walk."""


def split_raw_initializers(data: bytes | memoryview | mmap.mmap) -> tuple[bytes, list[tuple[int, int] | None]]:
    """(the model without its initializers' raw_data, one ``(offset, length)`` span into
    ``data`` per top-level initializer in order, or None for one without raw_data)."""
    view = memoryview(data).cast("B")
    spans: list[tuple[int, int] | None] = []
    out = bytearray()
    for number, start, body, end in _fields(view, 0, len(view)):
        if number == _MODEL_GRAPH and body >= 0:
            _put_message(out, number, _strip_graph(view, body, end, spans))
        else:
            out += view[start:end]
    return bytes(out), spans


def _strip_graph(view: memoryview, start: int, end: int, spans: list[tuple[int, int] | None]) -> bytearray:
    out = bytearray()
    for number, field_start, body, field_end in _fields(view, start, end):
        if number != _GRAPH_INITIALIZER or body < 0:
            out += view[field_start:field_end]
            continue
        tensor = bytearray()
        raw: tuple[int, int] | None = None
        for inner, inner_start, inner_body, inner_end in _fields(view, body, field_end):
            if inner == _TENSOR_RAW_DATA and inner_body >= 0:
                raw = (inner_body, inner_end - inner_body)  # the last occurrence wins, as in protobuf
            else:
                tensor += view[inner_start:inner_end]
        spans.append(raw)
        _put_message(out, _GRAPH_INITIALIZER, tensor)
    return out


def _fields(view: memoryview, pos: int, end: int):
    """(field number, field start, payload start or -1 unless length-delimited, field end)."""
    while pos < end:
        start = pos
        tag, pos = _varint(view, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireFormatError(f"field number 0 at byte {start}")
        body = -1
        if wire_type == _VARINT:
            _, pos = _varint(view, pos, end)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        elif wire_type == _LENGTH:
            length, body = _varint(view, pos, end)
            pos = body + length
        else:
            raise WireFormatError(f"wire type {wire_type} at byte {start}")
        if pos > end:
            raise WireFormatError(f"field {number} at byte {start} runs past its message")
        yield number, start, body, pos


def _varint(view: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    raise WireFormatError(f"bad varint before byte {pos}")


def _put_message(out: bytearray, number: int, body: bytes | bytearray) -> None:
    out += _encode_varint(number << 3 | _LENGTH)
    out += _encode_varint(len(body))
    out += body


def _encode_varint(value: int) -> bytes:
    parts = bytearray()
    while value >= 0x80:
        parts.append(value & 0x7F | 0x80)
        value >>= 7
    parts.append(value)
    return bytes(parts)
