"""The compiled model format (``.walle``): an already lowered and optimised atomic graph for
one input-shape signature, loaded by memory-mapping so that opening a model costs neither the
ONNX import nor a copy of its weights.

Layout (all integers little-endian)::

    magic  b"WALLEMDL"          8 bytes
    format version (uint32)     4 bytes
    header length (uint64)      8 bytes
    header                      UTF-8 JSON: inputs, outputs, constants, nodes
    zero padding to a multiple of 64, then the data section: each constant's raw C-order
    bytes at a 64-byte-aligned offset (stored in the header, relative to the section)

Attributes are the frozen dataclasses of :mod:`walle_core.ops`; they are written field by
field (enums by value, dtypes by name) and read back against the dataclass's type hints, so
a wrong field type is an error naming the node and field rather than a surprise in a
backend. Everything read from the file is validated and every node is re-inferred with
:func:`walle_core.shapes.infer_types`: a corrupt file gives a :class:`ModelError`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import mmap
import os
import struct
import types
import typing
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from walle_core import ops
from walle_core.caches import replace_atomically
from walle_core.errors import ModelError, WalleError
from walle_core.ir import Graph, Node, TensorType
from walle_core.mapped import FileMapping, map_file, mapping_of
from walle_core.shapes import MAX_ELEMENTS, MAX_RANK, infer_types

MAGIC = b"WALLEMDL"
FORMAT_VERSION = 1
ALIGNMENT = 64  # a cache line, and enough for any SIMD load of a weight
_PREAMBLE = struct.Struct("<8sIQ")
#: a header larger than this is not a header (a 100k-node graph is ~50 MB of JSON)
MAX_HEADER_BYTES = 1 << 30


# --- attributes <-> JSON ------------------------------------------------------------------

def encode_attrs(attrs: Any) -> Any:
    """JSON-ready form of an attribute record (or of one of its field values)."""
    if dataclasses.is_dataclass(attrs) and not isinstance(attrs, type):
        return {f.name: encode_attrs(getattr(attrs, f.name)) for f in dataclasses.fields(attrs)}
    if isinstance(attrs, enum.Enum):
        return attrs.value
    if isinstance(attrs, np.dtype):
        return attrs.name
    if isinstance(attrs, (tuple, list)):
        return [encode_attrs(item) for item in attrs]
    if attrs is None or isinstance(attrs, (bool, int, float, str)):
        return attrs
    raise WalleError(f"[compiled] cannot store an attribute value of type {type(attrs).__name__}")


def decode_attrs(cls: type, data: Any, where: str) -> Any:
    """The ``cls`` record described by ``data``; ``where`` names the node for errors."""
    return _decode(cls, data, where)


@functools.cache
def _origin_args(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    return typing.get_origin(hint), typing.get_args(hint)


def _decode(hint: Any, data: Any, where: str) -> Any:
    origin, options = _origin_args(hint)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in options:
            return None
        (inner,) = [opt for opt in options if opt is not type(None)]
        return _decode(inner, data, where)
    if origin is tuple:
        if not isinstance(data, list):
            raise ModelError(f"{where}: expected a list, got {type(data).__name__}")
        args = options
        if len(args) == 2 and args[1] is Ellipsis:
            if args[0] is int and all(type(item) is int for item in data):  # shapes, strides: the bulk
                return tuple(data)
            return tuple(_decode(args[0], item, f"{where}[{i}]") for i, item in enumerate(data))
        if len(data) != len(args):
            raise ModelError(f"{where}: expected {len(args)} values, got {len(data)}")
        return tuple(_decode(arg, item, f"{where}[{i}]") for i, (arg, item) in enumerate(zip(args, data)))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected an object for {hint.__name__}, got {type(data).__name__}")
        hints = _field_types(hint)
        names = hints.keys()
        if data.keys() != names:
            raise ModelError(f"{where}: {hint.__name__} fields {sorted(data)} instead of {sorted(names)}")
        return hint(**{name: _decode(hints[name], data[name], f"{where}.{name}") for name in names})
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(data)
        except ValueError:
            raise ModelError(f"{where}: {data!r} is not a {hint.__name__}") from None
    if hint is np.dtype:
        return _dtype(data, where)
    if hint is bool:
        if not isinstance(data, bool):
            raise ModelError(f"{where}: expected a bool, got {data!r}")
        return data
    if hint is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise ModelError(f"{where}: expected an integer, got {data!r}")
        return data
    if hint is float:
        if not isinstance(data, (int, float)) or isinstance(data, bool):
            raise ModelError(f"{where}: expected a number, got {data!r}")
        return float(data)
    raise ModelError(f"{where}: no decoder for field type {hint!r}")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> evaluated annotation of an attribute record (slow to compute, so cached)."""
    hints = typing.get_type_hints(cls, vars(ops))
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dtype(name: Any, where: str) -> np.dtype:
    """A dtype by name; ``ml_dtypes`` registers bfloat16, float8 and int4 with NumPy."""
    if not isinstance(name, str):
        raise ModelError(f"{where}: dtype must be a name, got {name!r}")
    try:
        dtype = np.dtype(name)
    except TypeError:
        import ml_dtypes  # noqa: F401  (registration side effect; a 10 ms import, so only when needed)

        try:
            dtype = np.dtype(name)
        except TypeError:
            raise ModelError(f"{where}: unknown dtype {name!r}") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise ModelError(f"{where}: dtype {name!r} cannot be stored as raw bytes")
    return dtype


# --- writing ------------------------------------------------------------------------------

def _align(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def save_graph(graph: Graph, path: str | os.PathLike, source: str = "", *,
               source_mapping: FileMapping | None = None, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``graph`` (fully typed, static shapes) as a compiled model at ``path``.

    Constants that are views of ``source_mapping`` (the mapped model file the graph was
    lowered from) are stored as offsets into that file instead of copies; such a file
    opens only with the same source (see :mod:`walle_core.model_cache`). ``extra`` adds
    header fields. The file appears whole or not at all (written aside, then renamed).
    """
    for name, value in graph.constants.items():
        if value.dtype.hasobject:
            raise WalleError(f"[compiled] constant {name!r} has dtype {value.dtype}; strings cannot be compiled")
    for name in graph.inputs:
        if graph.types[name].dtype.hasobject:
            raise WalleError(f"[compiled] input {name!r} has dtype object; string models cannot be compiled")
    header: dict[str, Any] = {
        "source": source,
        "inputs": [_type_entry(name, graph.types[name]) for name in graph.inputs],
        "outputs": list(graph.outputs),
        "output_names": list(graph.output_names or graph.outputs),
        "constants": [],
        "nodes": [
            {"op": node.op.value, "inputs": node.inputs, "outputs": node.outputs,
             "attrs": encode_attrs(node.attrs), "origin": node.origin, "origin_op": node.origin_op}
            for node in graph.nodes
        ],
    }
    header.update(extra or {})
    stored = []  # (entry, array) of the constants the data section holds
    offset = 0  # relative to the data section, so the header's length does not move them
    for name, value in graph.constants.items():
        entry = {**_type_entry(name, TensorType(value.dtype, value.shape)), "nbytes": value.nbytes}
        in_source = _offset_in(source_mapping, value) if source_mapping is not None else None
        if in_source is not None:
            entry["source_offset"] = in_source
        else:
            entry["offset"] = offset
            stored.append((entry, value))
            offset = _align(offset + value.nbytes)
        header["constants"].append(entry)
    blob = json.dumps(header).encode()
    data_start = _align(_PREAMBLE.size + len(blob))

    def write(f: BinaryIO) -> None:
        f.write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(blob)))
        f.write(blob)
        for entry, value in stored:
            f.write(b"\0" * (data_start + entry["offset"] - f.tell()))
            f.write(np.ascontiguousarray(value).data)

    replace_atomically(Path(path), write)


def _offset_in(mapping: FileMapping, array: np.ndarray) -> int | None:
    """Where ``array``'s bytes start in ``mapping``, if it is a contiguous view of it."""
    if mapping_of(array) is not mapping or not array.flags.c_contiguous or array.size == 0:
        return None
    start = array.__array_interface__["data"][0] - np.frombuffer(mapping, np.uint8).__array_interface__["data"][0]
    return start if 0 <= start and start + array.nbytes <= len(mapping) else None


def _type_entry(name: str, ttype: TensorType) -> dict[str, Any]:
    return {"name": name, "dtype": np.dtype(ttype.dtype).name, "shape": [int(d) for d in ttype.shape]}


# --- reading ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CompiledInput:
    """A compiled model's input: always a tensor of one fixed shape."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    kind: str = "tensor"


class CompiledModel:
    """A ``.walle`` file, validated, with its constants memory-mapped read-only.

    It stands in for the ONNX model in :class:`walle_core.session.Session`: the session asks
    it for the graph instead of lowering one.
    """

    def __init__(self, path: str | os.PathLike, source: FileMapping | bytes | None = None) -> None:
        """``source``: the mapped model file that a cache entry's constants lie in, if any."""
        self.path = str(path)
        try:
            mapping = map_file(path)
        except OSError as exc:
            raise ModelError(f"cannot open compiled model {self.path}: {exc}") from None
        if len(mapping) < _PREAMBLE.size:
            raise ModelError(f"{self.path}: truncated compiled model ({len(mapping)} bytes)")
        self._map, self._source = mapping, source
        self.graph, self.header = _read_graph(self._map, self.path, source)
        self.inputs = [CompiledInput(n, self.graph.types[n].dtype, self.graph.types[n].shape)
                       for n in self.graph.inputs]
        self.output_names = list(self.graph.output_names)

    def check_supported(self, rules: Mapping[Any, Callable[..., Any]]) -> None:
        """Nothing to check: the graph holds atomic ops only."""

    def drop_weight_pages(self) -> None:
        """Plans are built and backends hold their own copies: let the mapped pages go."""
        for mapping in (self._map, self._source):
            if isinstance(mapping, FileMapping):
                mapping.drop_pages()

    def op_types(self) -> dict[str, int]:
        """Histogram of the front-end op types: as the ONNX model had them if the header says
        (a cache entry does), else counted over the nodes' origins."""
        stored = self.header.get("onnx_ops")
        if isinstance(stored, dict) and all(isinstance(n, int) for n in stored.values()):
            return dict(stored)
        return dict(Counter(node.origin_op or "?" for node in self.graph.nodes))

    def lowered(self, input_types: Mapping[str, Any]) -> Graph:
        """The stored graph, if ``input_types`` is the signature it was compiled for."""
        for spec in self.inputs:
            given = input_types.get(spec.name)
            if not isinstance(given, TensorType) or tuple(given.shape) != spec.shape:
                shape = getattr(given, "shape", given)
                raise WalleError(f"{self.path}: compiled for input {spec.name!r} of shape {spec.shape}, "
                                 f"got {shape}; convert the ONNX model again for other shapes")
        return self.graph


def is_compiled(source: Any) -> bool:
    """Whether ``source`` is a path to a file that starts with the compiled-model magic."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    try:
        with open(source, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _read_graph(buf: mmap.mmap | bytes, where: str, source: FileMapping | bytes | None = None
                ) -> tuple[Graph, dict[str, Any]]:
    """The graph and the raw header. ``source`` holds the constants stored by source offset."""
    magic, version, header_len = _PREAMBLE.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ModelError(f"{where}: not a compiled walle model (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise ModelError(f"{where}: compiled model format version {version}, this walle reads {FORMAT_VERSION}")
    if header_len > min(MAX_HEADER_BYTES, len(buf) - _PREAMBLE.size):
        raise ModelError(f"{where}: header length {header_len} runs past the end of the file ({len(buf)} bytes)")
    try:
        header = json.loads(bytes(buf[_PREAMBLE.size:_PREAMBLE.size + header_len]).decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{where}: header is not valid JSON: {exc}") from None
    _expect(header, dict, f"{where}: header")
    data_start = _align(_PREAMBLE.size + header_len)
    graph = Graph(inputs=[], outputs=[], types={}, constants={})
    for i, entry in enumerate(_list(header, "inputs", where)):
        name, ttype = _read_type(entry, f"{where}: inputs[{i}]")
        _define(graph, name, ttype, f"{where}: input")
        graph.inputs.append(name)
    for i, entry in enumerate(_list(header, "constants", where)):
        label = f"{where}: constants[{i}]"
        name, ttype = _read_type(entry, label)
        nbytes = _field(entry, "nbytes", int, label)
        if nbytes != ttype.nbytes:
            raise ModelError(f"{label} {name!r}: {nbytes} bytes stored for {ttype} ({ttype.nbytes} bytes)")
        if "source_offset" in entry:
            if source is None:
                raise ModelError(f"{label} {name!r}: stored in the source model file, which was not given")
            holder, start = source, _field(entry, "source_offset", int, label)
            if start < 0 or start + nbytes > len(source):
                raise ModelError(f"{label} {name!r}: source offset {start} ({nbytes} bytes) is past the end "
                                 f"of the source model ({len(source)} bytes)")
        else:
            offset = _field(entry, "offset", int, label)
            if offset % ALIGNMENT or offset < 0 or data_start + offset + nbytes > len(buf):
                raise ModelError(f"{label} {name!r}: data at section offset {offset} ({nbytes} bytes) is "
                                 f"misaligned or past the end of the file ({len(buf)} bytes)")
            holder, start = buf, data_start + offset
        _define(graph, name, ttype, f"{where}: constant")
        if ttype.size == 0:
            graph.constants[name] = np.empty(ttype.shape, ttype.dtype)
        else:  # a read-only view of the mapping: the weights are not copied
            array = np.frombuffer(holder, dtype=ttype.dtype, count=ttype.size, offset=start)
            graph.constants[name] = array.reshape(ttype.shape)
    for i, entry in enumerate(_list(header, "nodes", where)):
        graph.nodes.append(_read_node(graph, entry, f"{where}: nodes[{i}]"))
    graph.outputs = [_expect(n, str, f"{where}: outputs") for n in _list(header, "outputs", where)]
    graph.output_names = [_expect(n, str, f"{where}: output_names") for n in _list(header, "output_names", where)]
    if len(graph.output_names) != len(graph.outputs):
        raise ModelError(f"{where}: {len(graph.outputs)} outputs but {len(graph.output_names)} output names")
    for name in graph.outputs:
        if name not in graph.types:
            raise ModelError(f"{where}: graph output {name!r} is never produced")
    return graph, header


def _read_node(graph: Graph, entry: Any, label: str) -> Node:
    _expect(entry, dict, label)
    try:
        op = ops.Op(_field(entry, "op", str, label))
    except ValueError:
        raise ModelError(f"{label}: unknown atomic op {entry['op']!r}") from None
    label = f"{label} ({op.value}, from {entry.get('origin_op', '?')} {entry.get('origin', '')!r})"
    inputs = [_expect(n, str, f"{label} inputs") for n in _field(entry, "inputs", list, label)]
    outputs = [_expect(n, str, f"{label} outputs") for n in _field(entry, "outputs", list, label)]
    attrs = decode_attrs(ops.ATTRS_TYPE[op], entry.get("attrs"), f"{label} attrs")
    for name in inputs:
        if name not in graph.types:
            raise ModelError(f"{label}: input {name!r} is not defined before this node")
    try:
        out_types = infer_types(op, [graph.types[n] for n in inputs], attrs)
    except WalleError as exc:
        raise ModelError(f"{label}: {exc}") from None
    if len(out_types) != len(outputs):
        raise ModelError(f"{label}: {len(outputs)} outputs stored, the op has {len(out_types)}")
    for name, (dtype, shape) in zip(outputs, out_types):
        _define(graph, name, TensorType(np.dtype(dtype), tuple(int(d) for d in shape)), label)
    return Node(op, inputs, outputs, attrs, _field(entry, "origin", str, label),
                _field(entry, "origin_op", str, label))


def _read_type(entry: Any, label: str) -> tuple[str, TensorType]:
    _expect(entry, dict, label)
    name = _field(entry, "name", str, label)
    dtype = _dtype(entry.get("dtype"), f"{label} {name!r}")
    shape = tuple(_expect(d, int, f"{label} {name!r} shape") for d in _field(entry, "shape", list, label))
    if len(shape) > MAX_RANK or any(d < 0 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise ModelError(f"{label} {name!r}: invalid shape {shape}")
    return name, TensorType(dtype, shape)


def _define(graph: Graph, name: str, ttype: TensorType, label: str) -> None:
    if name in graph.types:
        raise ModelError(f"{label}: name {name!r} is defined twice")
    graph.types[name] = ttype


def _list(header: dict, key: str, where: str) -> list:
    return _field(header, key, list, f"{where}: header")


def _field(entry: dict, key: str, kind: type, label: str) -> Any:
    if key not in entry:
        raise ModelError(f"{label}: missing field {key!r}")
    return _expect(entry[key], kind, f"{label} field {key!r}")


def _expect(value: Any, kind: type, label: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelError(f"{label}: expected {kind.__name__}, got {type(value).__name__}")
    return value


# --- conversion ---------------------------------------------------------------------------

def convert(model: Any, output: str | os.PathLike,
            shapes: Mapping[str, tuple[int, ...]] | None = None) -> Graph:
    """Lower and optimise ONNX ``model`` at ``shapes`` (needed for every symbolic dimension)
    exactly as a session plans it, and save the result at ``output``. Returns the graph."""
    from walle_core import plugins
    from walle_core.onnx import load_model, lower_with_layout
    from walle_core.optimize import optimize

    onnx_model = load_model(model)
    rules = plugins.decomposition_rules()
    onnx_model.check_supported(rules)
    shapes = dict(shapes or {})
    unknown = set(shapes) - {spec.name for spec in onnx_model.inputs}
    if unknown:
        raise WalleError(f"[compiled] --shape for unknown inputs {sorted(unknown)}")
    input_types: dict[str, Any] = {}
    for spec in onnx_model.inputs:
        if spec.kind != "tensor":
            raise WalleError(f"[compiled] input {spec.name!r} is a {spec.kind}; only tensor inputs compile")
        shape = shapes.get(spec.name, spec.shape)
        if not all(isinstance(d, int) for d in shape):
            raise WalleError(f"[compiled] input {spec.name!r} has symbolic shape {spec.shape}; "
                             f"give it with --shape {spec.name}=D0,D1,...")
        input_types[spec.name] = TensorType(np.dtype(spec.dtype), tuple(shape))
    graph, layout = lower_with_layout(onnx_model, input_types, rules)
    if layout is not None and any(slot.kind != "tensor" for slot in layout):
        raise WalleError("[compiled] the model has sequence or optional outputs; only tensor outputs compile")
    if graph.value_inputs:
        raise WalleError(f"[compiled] the graph depends on the values of inputs {graph.value_inputs}")
    graph = optimize(graph)
    source = Path(model).name if isinstance(model, (str, os.PathLike)) else ""
    save_graph(graph, output, source=source)
    return graph
