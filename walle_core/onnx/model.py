"""Parse an ONNX model and validate it, so that nothing later has to distrust its structure.

Every inconsistency a file can contain (bad protobuf, dangling names, cycles, lying
initializer sizes, absurd dims) becomes a :class:`~walle_core.errors.ModelError` that names
the node, op type and field at fault; the lowering step then only deals with semantics.
"""

from __future__ import annotations

import functools
import mmap
import os
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from walle_core.errors import ModelError, UnsupportedOpError
from walle_core.mapped import FileMapping, map_file
from walle_core.onnx import functions
from walle_core.onnx.dtypes import onnx_to_numpy
from walle_core.onnx.wire import WireFormatError, split_raw_initializers
from walle_core.shapes import MAX_ELEMENTS, MAX_RANK

ModelSource = str | os.PathLike | bytes | onnx.ModelProto

#: bytes per element of the fixed-size types; 4-bit types pack two per byte
_SUB_BYTE = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_FP4 = getattr(onnx.TensorProto, "FLOAT4E2M1", None)
if _FP4 is not None:
    _SUB_BYTE.add(_FP4)


#: kinds of graph input: a tensor, a sequence of tensors, an optional tensor, an optional sequence
INPUT_KINDS = ("tensor", "sequence", "optional", "optional_sequence")


@dataclass(frozen=True)
class InputSpec:
    """A graph input: ``shape`` holds ints, dim_param strings for symbolic dims, or None.

    For the non-tensor kinds ``dtype`` and ``shape`` describe the (innermost) tensor element;
    the shape is only advisory there, as exporters often declare element shapes loosely.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]
    kind: str = "tensor"


def node_label(node: onnx.NodeProto, index: int) -> str:
    """How errors refer to a node: its name, or its position when it has none."""
    return node.name or f"#{index} ({node.op_type})"


class OnnxModel:
    """A validated ONNX model with its nodes in topological order."""

    def __init__(self, proto: onnx.ModelProto, payloads: RawPayloads | None = None) -> None:
        graph = proto.graph
        self.opsets = _read_opsets(proto)
        self.initializers = _read_initializers(graph, payloads)
        self._payloads = payloads
        #: whether some weights came from files beside the model (set by :func:`load_model`)
        self.external_data = False
        self.inputs = _read_inputs(graph, self.initializers)
        self.output_names = [out.name for out in graph.output]
        ordered = _topological_order(graph, self.opsets, set(self.initializers), [spec.name for spec in self.inputs])
        # Detached copies: a node message keeps its whole parent model alive, initializer bytes
        # included, and those are already decoded into ``initializers``. Without this the
        # weights would stay in memory twice for the session's lifetime.
        self.nodes = [_detached(node) for node in ordered]

    def drop_weight_pages(self) -> None:
        """Once plans are built the weights have been packed or folded into new arrays: let
        the pages of a mapped model file go (re-planning reads them back from the file)."""
        if self._payloads is not None and isinstance(self._payloads.buffer, FileMapping):
            self._payloads.buffer.drop_pages()

    @property
    def mapped_file(self) -> FileMapping | None:
        """The read-only mapping of the model file that the weights view, if it was mapped."""
        buffer = self._payloads.buffer if self._payloads is not None else None
        return buffer if isinstance(buffer, FileMapping) else None

    def opset(self, domain: str) -> int:
        """Imported opset version of ``domain`` ('' and 'ai.onnx' are the same domain)."""
        return self.opsets[_canonical_domain(domain)]

    def op_types(self) -> dict[str, int]:
        """Histogram of op types (domain-qualified for non-default domains)."""
        return dict(Counter(_qualified(node) for node in self.nodes))

    def check_supported(self, rules: Mapping[tuple[str, str], Callable[..., Any]]) -> None:
        """Raise UnsupportedOpError listing every node whose op has neither a decomposition rule
        nor a function body in its ONNX schema (which the importer inlines)."""
        problems = []
        for i, node in enumerate(self.nodes):
            domain = _canonical_domain(node.domain)
            if (domain, node.op_type) not in rules and not functions.has_function(node, self.opsets):
                problems.append(
                    f"unsupported op {node.op_type!r} (domain {domain!r}, opset {self.opsets[domain]}) "
                    f"at node {node_label(node, i)!r}"
                )
        if problems:
            raise UnsupportedOpError("; ".join(problems))


@dataclass(frozen=True)
class RawPayloads:
    """Where the top-level initializers' raw_data lie in the serialized model, which was
    parsed without them (see :mod:`walle_core.onnx.wire`): ``spans[i]`` is ``(offset,
    length)`` in ``buffer`` for ``graph.initializer[i]``, or None."""

    buffer: bytes | mmap.mmap
    spans: list[tuple[int, int] | None]


def load_model(source: ModelSource) -> OnnxModel:
    """Parse ``source`` (a path, serialized bytes or a ModelProto) and validate it.

    From a path the file is memory-mapped read-only and the weights are arrays over the
    mapping, not copies: loading reads only the pages it needs, and the weights count once
    in memory. Replace a model file by writing a new one and renaming it over the old (as
    bundle installs do); truncating a file that a live session maps is not supported.
    """
    payloads, external = None, False
    if isinstance(source, onnx.ModelProto):
        proto = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        proto, payloads = _parse_without_weights(source if isinstance(source, bytes) else bytes(source),
                                                 "model bytes")
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            data = map_file(path)
        except OSError as exc:
            raise ModelError(f"cannot read model file {str(path)!r}: {exc.strerror or exc}") from None
        proto, payloads = _parse_without_weights(data, str(path))
        external = _load_external_data(proto, path.parent)
    else:
        raise ModelError(f"cannot load a model from {type(source).__name__}; "
                         "pass a path, bytes or an onnx.ModelProto")
    if not proto.HasField("graph"):
        raise ModelError("model has no graph")
    model = OnnxModel(proto, payloads)
    model.external_data = external
    return model


def _parse_without_weights(data: bytes | mmap.mmap, what: str) -> tuple[onnx.ModelProto, RawPayloads | None]:
    """Parse ``data`` with its initializers' raw_data left in place; bytes the wire walk
    cannot follow get the ordinary whole parse, and its error message."""
    try:
        stripped, spans = split_raw_initializers(data)
    except WireFormatError:
        return _parse(bytes(data), what), None
    proto = _parse(stripped, what)
    if len(proto.graph.initializer) != len(spans):  # e.g. a graph field repeated: be safe
        return _parse(bytes(data), what), None
    return proto, RawPayloads(data, spans)


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{what} is not a valid ONNX protobuf: {exc}") from None
    _check_text(proto, what)
    return proto


def _check_text(message: Any, what: str) -> None:
    """Every string field must be valid UTF-8: the parser accepts anything in a proto2 string
    field and then hands back ``bytes``, which would surface far away as a TypeError."""
    for name, is_string, repeated in _text_fields(message.DESCRIPTOR):
        if not repeated and not message.HasField(name):
            continue
        value = getattr(message, name)
        values = value if repeated else [value]
        if is_string:
            if any(isinstance(v, bytes) for v in values):
                raise ModelError(f"{what}: field {name!r} of a {message.DESCRIPTOR.name} is not valid UTF-8")
        else:
            for item in values:
                _check_text(item, what)


@functools.cache
def _text_fields(descriptor: Any) -> tuple[tuple[str, bool, bool], ...]:
    """(name, is a string, is repeated) of the string and message fields of a message type;
    read by descriptor rather than ListFields, which would copy every tensor's raw_data."""
    return tuple(
        (f.name, f.type == f.TYPE_STRING, f.is_repeated) for f in descriptor.fields
        if f.type == f.TYPE_STRING or (f.type == f.TYPE_MESSAGE and not f.message_type.GetOptions().map_entry)
    )


def _load_external_data(proto: onnx.ModelProto, base_dir: Path) -> bool:
    """Read the initializers stored in files beside the model; whether there were any."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if not any(uses_external_data(t) for t in proto.graph.initializer):
        return False
    try:
        load_external_data_for_model(proto, str(base_dir))
    except Exception as exc:  # noqa: BLE001 -- onnx raises several kinds for a missing or escaping file
        raise ModelError(f"cannot load external initializer data: {type(exc).__name__}: {exc}") from None
    return True


def _canonical_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def _qualified(node: onnx.NodeProto) -> str:
    domain = _canonical_domain(node.domain)
    return f"{domain}::{node.op_type}" if domain else node.op_type


def _read_opsets(proto: onnx.ModelProto) -> dict[str, int]:
    opsets: dict[str, int] = {}
    for imp in proto.opset_import:
        domain = _canonical_domain(imp.domain)
        if domain in opsets:
            raise ModelError(f"opset for domain {domain!r} is imported twice")
        if imp.version <= 0:
            raise ModelError(f"opset import for domain {domain!r} has invalid version {imp.version}")
        opsets[domain] = int(imp.version)
    latest = onnx.defs.onnx_opset_version()
    if opsets.get("", 0) > latest:
        raise ModelError(f"default-domain opset {opsets['']} is newer than the newest known ({latest})")
    return opsets


def _check_dims(dims: list[int], where: str) -> tuple[int, ...]:
    if len(dims) > MAX_RANK:
        raise ModelError(f"{where}: rank {len(dims)} exceeds {MAX_RANK}")
    for d in dims:
        if d < 0:
            raise ModelError(f"{where}: negative dimension {d} in {list(dims)}")
    if int(np.prod(dims, dtype=np.float64)) > MAX_ELEMENTS:
        raise ModelError(f"{where}: shape {list(dims)} is too large")
    return tuple(int(d) for d in dims)


def _read_initializers(graph: onnx.GraphProto, payloads: RawPayloads | None) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(graph.initializer):
        where = f"initializer {tensor.name!r}"
        if not tensor.name:
            raise ModelError("an initializer has no name")
        if tensor.name in values:
            raise ModelError(f"{where} is defined twice")
        dims = _check_dims(list(tensor.dims), where)
        dtype = onnx_to_numpy(tensor.data_type, where)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelError(f"{where}: external data was not loaded (load the model from its file path)")
        span = payloads.spans[index] if payloads is not None else None
        if span is not None:
            offset, length = span
            if tensor.data_type in _PLAIN_RAW:
                values[tensor.name] = _plain_raw_array(payloads.buffer, offset, length, dims, dtype, where)
                continue
            tensor.raw_data = bytes(payloads.buffer[offset:offset + length])  # rare types: the general path
        elif tensor.data_type in _PLAIN_RAW and tensor.HasField("raw_data"):
            raw = tensor.raw_data
            values[tensor.name] = _plain_raw_array(raw, 0, len(raw), dims, dtype, where)
            continue
        _check_payload(tensor, dims, dtype, where)
        try:
            values[tensor.name] = np.asarray(numpy_helper.to_array(tensor), order="C")
        except Exception as exc:  # noqa: BLE001 -- numpy_helper raises several kinds on bad payloads
            raise ModelError(f"{where}: cannot decode: {exc}") from None
    return values


# Element types whose raw_data is exactly the little-endian NumPy array: they are decoded with a
# single copy (every read of ``raw_data`` copies the bytes, and weights are most of a model).
_PLAIN_RAW = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
              onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
              onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}


def _plain_raw_array(buffer: bytes | mmap.mmap, offset: int, length: int, dims: tuple[int, ...],
                     dtype: np.dtype, where: str) -> np.ndarray:
    """The ``length`` bytes at ``offset`` in ``buffer`` as an array, without a copy on a
    little-endian machine; read-only, like every constant: nothing may change a model's
    weights in place."""
    count = int(np.prod(dims, dtype=np.int64))
    if length != count * dtype.itemsize:
        raise ModelError(f"{where}: raw_data has {length} bytes, dims {list(dims)} of {dtype} need "
                         f"{count * dtype.itemsize}")
    array = np.frombuffer(buffer, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
    return array.reshape(dims).astype(dtype, copy=False)


def _check_payload(tensor: onnx.TensorProto, dims: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """The stored element count must match ``dims`` before anything reshapes it."""
    count = int(np.prod(dims, dtype=np.int64))
    if tensor.data_type == onnx.TensorProto.STRING:
        if len(tensor.string_data) != count:
            raise ModelError(f"{where}: string_data holds {len(tensor.string_data)} strings, dims {list(dims)} "
                             f"need {count}")
        return
    if tensor.HasField("raw_data"):
        if tensor.data_type in _SUB_BYTE:
            expected = (count + 1) // 2
        else:
            expected = count * dtype.itemsize
        if len(tensor.raw_data) != expected:
            raise ModelError(f"{where}: raw_data has {len(tensor.raw_data)} bytes, dims {list(dims)} "
                             f"of {dtype} need {expected}")
        return
    field = _typed_field(tensor)
    if field is None:
        if count:
            raise ModelError(f"{where}: no data for dims {list(dims)}")
        return
    stored = len(getattr(tensor, field))
    per_value = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
    expected = count * per_value
    if tensor.data_type in _SUB_BYTE:
        expected = (count + 1) // 2
    if stored != expected:
        raise ModelError(f"{where}: {field} holds {stored} values, dims {list(dims)} need {expected}")


def _typed_field(tensor: onnx.TensorProto) -> str | None:
    for field in ("float_data", "double_data", "int32_data", "int64_data", "uint64_data"):
        if len(getattr(tensor, field)):
            return field
    return None


def _read_inputs(graph: onnx.GraphProto, initializers: Mapping[str, np.ndarray]) -> list[InputSpec]:
    specs: list[InputSpec] = []
    seen: set[str] = set()
    for value in graph.input:
        where = f"graph input {value.name!r}"
        if not value.name:
            raise ModelError("a graph input has no name")
        if value.name in seen:
            raise ModelError(f"{where} is declared twice")
        seen.add(value.name)
        if value.name in initializers:
            continue  # old IR versions list initializers as inputs too; they are constants here
        kind, ttype = _input_kind(value.type, where)
        dtype = onnx_to_numpy(ttype.elem_type, where)
        if not ttype.HasField("shape"):
            if kind != "tensor":
                specs.append(InputSpec(value.name, dtype, (), kind))
                continue
            raise ModelError(f"{where}: has no shape (rank is needed to plan the model)")
        dims: list[int | str | None] = []
        for dim in ttype.shape.dim:
            which = dim.WhichOneof("value")
            if which == "dim_value":
                dims.append(_check_dims([dim.dim_value], where)[0])
            elif which == "dim_param":
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        if len(dims) > MAX_RANK:
            raise ModelError(f"{where}: rank {len(dims)} exceeds {MAX_RANK}")
        specs.append(InputSpec(value.name, dtype, tuple(dims), kind))
    return specs


def _input_kind(tp: onnx.TypeProto, where: str) -> tuple[str, onnx.TypeProto.Tensor]:
    """(kind, tensor type of the element) of a graph input's type."""
    kind = ""
    if tp.WhichOneof("value") == "optional_type":
        kind, tp = "optional", tp.optional_type.elem_type
    if tp.WhichOneof("value") == "sequence_type":
        kind, tp = ("optional_sequence" if kind else "sequence"), tp.sequence_type.elem_type
    if tp.WhichOneof("value") != "tensor_type":
        raise UnsupportedOpError(f"{where}: only tensors, sequences of tensors and optionals of those "
                                 "are supported as inputs")
    return kind or "tensor", tp.tensor_type


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def outer_names(node: onnx.NodeProto) -> set[str]:
    """Tensors that ``node``'s subgraphs (recursively) read from the enclosing scope."""
    free: set[str] = set()
    for graph in subgraphs(node):
        defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
        for inner in graph.node:
            used = {name for name in inner.input if name} | outer_names(inner)
            free |= used - defined
            defined |= {name for name in inner.output if name}
        free |= {out.name for out in graph.output} - defined
    return free


def _detached(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _topological_order(graph: onnx.GraphProto, opsets: Mapping[str, int], initializers: set[str],
                       inputs: list[str]) -> list[onnx.NodeProto]:
    """Check names and return the nodes sorted so every tensor is produced before its use."""
    producer: dict[str, int] = {}
    for name in [*inputs, *initializers]:
        producer[name] = -1
    nodes = list(graph.node)
    for i, node in enumerate(nodes):
        label = node_label(node, i)
        domain = _canonical_domain(node.domain)
        if domain not in opsets:
            raise ModelError(f"node {label!r} ({node.op_type}) uses domain {domain!r}, "
                             "which the model does not import")
        if not node.op_type:
            raise ModelError(f"node {label!r} has no op_type")
        for name in node.output:
            if not name:
                continue
            if name in producer:
                other = "a graph input/initializer" if producer[name] < 0 else \
                    f"node {node_label(nodes[producer[name]], producer[name])!r}"
                raise ModelError(f"node {label!r} ({node.op_type}) output {name!r} is already "
                                 f"produced by {other}")
            producer[name] = i
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        # a control-flow body may read outer tensors by name: those are inputs of the node too
        implicit = [name for name in sorted(outer_names(node)) if name in producer]
        for slot, name in enumerate([*node.input, *implicit]):
            if not name:
                continue
            if name not in producer:
                raise ModelError(f"node {node_label(node, i)!r} ({node.op_type}) input {slot} reads "
                                 f"{name!r}, which no node, input or initializer produces")
            src = producer[name]
            if src >= 0:
                waiting[i] += 1
                users.setdefault(src, []).append(i)
    for name in (out.name for out in graph.output):
        if name not in producer:
            raise ModelError(f"graph output {name!r} is not produced by any node, input or initializer")
    ready = deque(i for i in range(len(nodes)) if waiting[i] == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for j in users.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if len(order) != len(nodes):
        stuck = [node_label(nodes[i], i) for i in range(len(nodes)) if waiting[i] > 0]
        raise ModelError(f"graph has a cycle through nodes {stuck[:10]}")
    return [nodes[i] for i in order]
