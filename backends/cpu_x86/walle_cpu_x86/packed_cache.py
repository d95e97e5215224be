"""The packed-weight cache: each op's weights as its kernel packed them (GEMM panels, Winograd
transforms), saved once and mapped read-only by later loads of the same op.

Packing is most of a plan's build, and its output is fresh memory: ResNet-50's packed weights
are 153 MB, and on a virtual machine a process's fresh pages can cost several times more than
the packing itself (its load took 0.45-0.55 s right after another engine's, 0.12 s alone, nearly
all of the difference system time spent on page faults). After the first build, an op's packed
buffers lie in a file of their own under ``$WALLE_CACHE_DIR/cpu_x86_packed/`` (default
``~/.cache/walle``). A later load maps that file instead: it neither packs nor reads the original
weights, its pages come from the page cache, and every process running the model shares them.

A file is named by a digest of everything its buffers depend on: the format, the native
module's build, the instruction set, the op's code and attributes (the algorithm chosen is one),
the types of the tensors it reads and writes, and each constant it reads. A constant of up to
64 KiB is named by its bytes; a larger one only if it is viewed in a file (:mod:`walle_core.mapped`:
a model's weights), by that file's size, inode, device and times and its place in it. An op that
reads a larger constant of no file (one computed at load, such as weights with a batch norm
folded in, which the compiled-model cache then keeps in a file for the next load), or of a file
changed in the last two seconds (a second write within the file system's timestamp granularity
could leave the same times), is not cached. Files are written whole and
renamed into place; one that does not parse, or whose buffers are not the sizes the kernel asks
for, is packed afresh and replaced. The most recently used 2 GiB are kept;
``WALLE_PACKED_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from walle_core.caches import cache_root, replace_atomically
from walle_core.mapped import mapping_of
from walle_cpu_x86.lowering import EncodedSegment

SWITCH = "WALLE_PACKED_CACHE"
#: bytes of packed weights kept on disk; the least recently used files go first
MAX_BYTES = 2 << 30
#: constants up to this size are named by their bytes, larger ones by their place in a file
MAX_HASHED_BYTES = 64 << 10
#: a model file changed less than this before the load is not trusted to keep its times
_RACY_NS = 2_000_000_000
#: temporary files older than this were left by a writer that died
_STALE_TMP_S = 3600

_MAGIC = b"WLPACK01"
_HEAD = struct.Struct("<8sQ")  # magic, buffer count
_ENTRY = struct.Struct("<QQ")  # offset from the file's start (a multiple of 64), bytes
_MAX_BUFFERS = 64
_SUFFIX = ".pack"

_CONSTANT = 3  # tensor kind code of a constant (the native module's table)


def enabled() -> bool:
    return os.environ.get(SWITCH, "1") != "0"


def folder() -> Path | None:
    try:
        return cache_root() / "cpu_x86_packed"
    except RuntimeError:  # no home directory to put it in
        return None


def op_keys(enc: EncodedSegment, isa: str, module_file: str) -> list[str | None]:
    """Per op of ``enc``: the name of its packed buffers' file, or None when it reads no
    constant or one it cannot be named by (see the module docstring)."""
    base = f"{_MAGIC!r}|{isa}|{_stamp(os.stat(module_file))}"
    bases: dict[int, int] = {}  # id(mapping) -> its address
    identities: dict[int, Any] = {}  # constant index -> its name, or None
    now = time.time_ns()

    def identity(index: int) -> Any:
        if index not in identities:
            identities[index] = _constant_identity(enc.constants[index], bases, now)
        return identities[index]

    def describe(tid: int) -> tuple[Any, ...]:
        dtype, itemsize, shape, kind, where = enc.tensors[tid]
        return (dtype, itemsize, shape, kind, identity(where) if kind == _CONSTANT else "")

    keys: list[str | None] = []
    for code, _index, _label, ins, outs, ints, floats in enc.ops:
        inputs = [describe(tid) for tid in ins]
        constants = [d[-1] for d in inputs if d[3] == _CONSTANT]
        if not constants or None in constants:
            keys.append(None)
            continue
        parts = (base, code, ints, floats, inputs, [describe(tid) for tid in outs])
        keys.append(hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest())
    return keys


def _stamp(info: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced or written to."""
    return (info.st_size, info.st_ino, info.st_dev, info.st_mtime_ns, info.st_ctime_ns)


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def _constant_identity(data: np.ndarray, bases: dict[int, int], now: int) -> Any:
    if data.nbytes <= MAX_HASHED_BYTES:
        return ("bytes", hashlib.blake2b(data, digest_size=16).hexdigest())
    mapping = mapping_of(data)
    if mapping is not None:
        info = mapping.stat
        if info.st_ctime_ns > now - _RACY_NS:
            return None
        if id(mapping) not in bases:
            bases[id(mapping)] = _address(np.frombuffer(mapping, np.uint8, count=0))
        return ("file", _stamp(info), _address(data) - bases[id(mapping)], int(data.nbytes))
    return None


def load_saved(keys: Sequence[str | None]) -> list[list[np.ndarray]]:
    """Per op, read-only views of its saved packed buffers (empty where none is saved or the
    file does not parse); an empty list when no op has any."""
    where = folder()
    if where is None:
        return []
    saved: list[list[np.ndarray]] = []
    for key in keys:
        buffers = _read(where / f"{key}{_SUFFIX}") if key else None
        saved.append(buffers or [])
    return saved if any(saved) else []


def _read(path: Path) -> list[np.ndarray] | None:
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEAD.size:
                return None
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    magic, count = _HEAD.unpack_from(mapping, 0)
    if magic != _MAGIC or count > _MAX_BUFFERS or _HEAD.size + count * _ENTRY.size > size:
        return None
    buffers = []
    for i in range(count):
        offset, nbytes = _ENTRY.unpack_from(mapping, _HEAD.size + i * _ENTRY.size)
        if offset % 64 or offset + nbytes > size:
            return None
        buffers.append(np.frombuffer(mapping, np.uint8, count=nbytes, offset=offset))
    try:
        os.utime(path)  # recently used: kept by _evict
    except OSError:
        pass
    return buffers


def save(keys: Sequence[str | None], saved: Sequence[Sequence[np.ndarray]],
         packed: Sequence[tuple[int, int, np.ndarray]]) -> None:
    """Write the buffers a plan packed itself (its ``packed()``: op position, slot, bytes) for
    every op with a key and no saved buffers. A cache that cannot be written is no error."""
    where = folder()
    if where is None:
        return
    by_op: dict[int, list[np.ndarray]] = {}
    for op, _slot, buffer in packed:  # slots come in order
        if keys[op] and not (saved and saved[op]):
            by_op.setdefault(op, []).append(buffer)
    if not by_op:
        return
    try:
        where.mkdir(parents=True, exist_ok=True)
        for op, buffers in by_op.items():
            replace_atomically(where / f"{keys[op]}{_SUFFIX}", lambda f, b=buffers: _write(f, b))
        _evict(where)
    except OSError:
        pass


def _write(f: Any, buffers: list[np.ndarray]) -> None:
    offset = _HEAD.size + len(buffers) * _ENTRY.size
    entries = []
    for b in buffers:
        offset = (offset + 63) // 64 * 64
        entries.append((offset, b.nbytes))
        offset += b.nbytes
    f.write(_HEAD.pack(_MAGIC, len(buffers)))
    for entry in entries:
        f.write(_ENTRY.pack(*entry))
    for (start, _), b in zip(entries, buffers):
        f.write(b"\0" * (start - f.tell()))
        f.write(memoryview(b))


def _evict(where: Path) -> None:
    """Keep the most recently used MAX_BYTES (a hit refreshes its file's mtime), and remove
    what writers that died left behind."""
    files, now = [], time.time()
    for path in where.iterdir():
        try:
            info = path.stat()
        except OSError:  # removed meanwhile by another process
            continue
        if path.name.endswith(".tmp"):
            if now - info.st_mtime > _STALE_TMP_S:
                path.unlink(missing_ok=True)
        elif path.name.endswith(_SUFFIX):
            files.append((info.st_mtime_ns, info.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= MAX_BYTES:
            break
        path.unlink(missing_ok=True)
        total -= size
