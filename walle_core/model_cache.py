"""The compiled-model cache: loading an ONNX file a second time skips the ONNX import,
the parse and the lowering.

A device restarts its tasks far more often than their models change, and a cold session
spends most of its time importing ``onnx`` and lowering the graph. So the first session on
a static ONNX model file saves the graph it lowered and optimised as a compiled model (see
:mod:`walle_core.compiled`) under ``$WALLE_CACHE_DIR/models/`` (default
``~/.cache/walle``), with its weights left in the ONNX file as offsets: the entry is a few
kilobytes and the weights stay in memory once. Later loads of that path, from any process,
open the entry instead.

An entry is named by the model's real path and by walle's own code (the sizes and times of
``walle_core``'s modules, the installed ``walle`` plugins, ``WALLE_PLUGINS``); one entry per
model path is kept. Every load checks the entry against the model file, so a changed model
or a changed walle is lowered afresh and its entry replaced. The check compares the file's
size, inode and times: any write changes the change time (ctime), which no program can
set. Only when the file changed within two seconds of the entry being written could a
later write leave the same times (file times are coarse), so such an entry also holds the
file's CRC-32, compared on load (git treats its index the same way). Models whose weights
lie in other files (ONNX external data), with symbolic input shapes, or whose graph
depends on input values are not cached. The cache keeps the 256 most recently used
entries. ``WALLE_MODEL_CACHE=0`` turns it off.
"""

from __future__ import annotations

import functools
import os
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from walle_core.caches import cache_root
from walle_core.compiled import CompiledModel, save_graph
from walle_core.entry_points import entry_points
from walle_core.errors import ModelError, WalleError
from walle_core.mapped import FileMapping, map_file

if TYPE_CHECKING:
    from walle_core.ir import Graph
    from walle_core.onnx.model import OnnxModel

SWITCH = "WALLE_MODEL_CACHE"
#: a model file changed less than this before its entry was written gets a content check
_RACY_NS = 2_000_000_000
#: entries kept (a few kB each); the least recently used go first
MAX_ENTRIES = 256
_CORE = Path(__file__).resolve().parent


def enabled() -> bool:
    return os.environ.get(SWITCH, "1") != "0"


def open_cached(source: Any) -> CompiledModel | None:
    """The cached compiled form of the ONNX file ``source``, if there is a current one."""
    entry = _entry_path(source)
    if entry is None or not entry.is_file():
        return None
    try:
        mapping = map_file(source)
    except OSError:
        return None
    if not isinstance(mapping, FileMapping):
        return None
    try:
        model = CompiledModel(entry, source=mapping)
    except ModelError:  # damaged, or written by another format version: lower afresh
        return None
    stored = model.header.get("source_check")
    if not isinstance(stored, dict) or stored.get("stamp") != _stamp(mapping.stat):
        return None
    if "crc32" in stored and stored["crc32"] != _crc32(source):
        return None
    try:
        os.utime(entry)  # recently used: kept by _evict
    except OSError:
        pass
    return model


def store(source: Any, model: OnnxModel, graph: Graph, layout: Any) -> None:
    """Save ``graph``, lowered from ``model`` (loaded from ``source``) for its static input
    shapes, if the model can be cached; a cache that cannot be written is no error."""
    entry = _entry_path(source)
    mapping = model.mapped_file
    if entry is None or mapping is None or model.external_data or graph.value_inputs:
        return
    if layout is not None and any(slot.kind != "tensor" for slot in layout):
        return
    if [spec.name for spec in model.inputs] != list(graph.inputs):
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        stamp = _stamp(mapping.stat)
        if _stamp(os.stat(source)) != stamp:
            return  # replaced or written to since it was loaded
        check: dict[str, Any] = {"stamp": stamp}
        if mapping.stat.st_ctime_ns > time.time_ns() - _RACY_NS:
            check["crc32"] = _crc32(source)
        save_graph(graph, entry, source=Path(source).name, source_mapping=mapping,
                   extra={"source_check": check, "onnx_ops": model.op_types()})
        model_key = entry.name.split("-")[0]
        for older in entry.parent.glob(f"{model_key}-*.walle"):  # made by another walle
            if older != entry:
                older.unlink(missing_ok=True)
        _evict(entry.parent)
    except (OSError, WalleError):
        pass


def _evict(folder: Path) -> None:
    """Keep the MAX_ENTRIES most recently used entries (a hit refreshes its entry's mtime):
    releases install each model version at a new path, so old paths' entries would pile up."""
    entries = []
    for path in folder.glob("*.walle"):
        try:
            entries.append((path.stat().st_mtime_ns, path))
        except OSError:  # removed meanwhile by another process
            pass
    for _, path in sorted(entries)[: max(0, len(entries) - MAX_ENTRIES)]:
        path.unlink(missing_ok=True)


def _entry_path(source: Any) -> Path | None:
    if not enabled() or not isinstance(source, (str, os.PathLike)):
        return None
    try:
        model_path = os.path.realpath(source)
    except OSError:
        return None
    try:
        root = cache_root()
    except RuntimeError:  # no home directory to put it in (e.g. a user without a passwd entry)
        return None
    plugins = os.environ.get("WALLE_PLUGINS", "<all>")  # which plugins' rules lower the model
    return root / "models" / f"{_digest(model_path)}-{_digest(plugins + chr(0) + _code_stamp())}.walle"


def _digest(text: str) -> str:
    """64 bits of ``text`` for a file name (not hashlib: its import costs 5 ms). Two model paths
    that clash share an entry, which the stamp check rejects for the other one; two code
    stamps clash with a chance of 2^-64."""
    data = text.encode()
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def _crc32(path: Any) -> int:
    """Of the file's bytes, read through the page cache rather than the session's mapping,
    whose pages would then count as the process's memory."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _stamp(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_ino, info.st_dev, info.st_mtime_ns, info.st_ctime_ns]


@functools.cache
def _code_stamp() -> str:
    """What the lowered graph depends on besides the model: walle_core's code and the plugins
    that may register decompositions. Once per process: the code that lowers is the code
    imported, whatever happens to the files later."""
    parts = sorted(f"{ep.name}={ep.value}" for ep in entry_points("walle"))
    stack = [_CORE]
    while stack:
        for item in os.scandir(stack.pop()):
            if item.is_dir():
                if item.name != "__pycache__":
                    stack.append(Path(item.path))
            elif item.name.endswith(".py"):
                info = item.stat()
                parts.append(f"{item.path}:{info.st_size}:{info.st_mtime_ns}")
    return "\n".join(sorted(parts))
