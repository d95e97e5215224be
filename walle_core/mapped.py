"""Read-only file mappings: model weights viewed in place instead of read into memory.

A backend that packs weights into its own layout reads each original once, at compile time.
If the original lies in a read-only mapping of a file, the backend may then let the kernel
drop those pages (they come back from the file if anything reads them again), so the packed
copy is the only one that stays in memory. :func:`is_reclaimable` tells it which arrays
qualify; only mappings made by :func:`map_file` do, as dropping pages of a private or
anonymous mapping would lose data.
"""

from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path

import numpy as np


class FileMapping(mmap.mmap):
    """A whole file mapped read-only and shared: its pages always equal the file's.
    ``stat`` is the file's status when it was mapped."""

    stat: os.stat_result

    def drop_pages(self) -> None:
        """Let the kernel take back every resident page (a hint; reads fault them back in)."""
        if hasattr(mmap, "MADV_DONTNEED"):
            self.madvise(mmap.MADV_DONTNEED)


def map_file(path: str | os.PathLike) -> FileMapping | bytes:
    """``path`` mapped read-only. What cannot be mapped is read instead: a pipe or other
    special file, a file system without mmap, and an empty file (``b""``)."""
    with Path(path).open("rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            return file.read()
        try:
            mapping = FileMapping(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return file.read()
        mapping.stat = info
        return mapping


def mapping_of(array: np.ndarray) -> FileMapping | None:
    """The :class:`FileMapping` whose memory ``array`` views, if any."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, FileMapping) else None


def is_reclaimable(array: np.ndarray) -> bool:
    """Whether ``array``'s memory is a view into a :class:`FileMapping`."""
    return mapping_of(array) is not None
