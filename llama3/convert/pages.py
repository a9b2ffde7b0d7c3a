"""Keep the source's memory-mapped pages out of the resident set once a tensor is written.

The readers map the source files; every page a conversion reads stays resident (and counted in
the process's RSS) until the mapping goes away, so a streaming conversion would still end up
"holding" the whole model. Dropping this process's pages of those mappings (MADV_DONTNEED) after
each tensor costs nothing: the files are only read, so a later access just maps the page again
from the page cache. Linux only; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable
from pathlib import Path

_MADV_DONTNEED = 4
_libc: ctypes.CDLL | None | bool = None


def _madvise() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name, use_errno=True) if name else False
    if not _libc:
        return None
    fn = _libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def drop_mapped_pages(files: Iterable[Path]) -> None:
    """Release this process's resident pages of every read-only use of a mapping of `files`."""
    targets = {os.path.realpath(f) for f in files}
    if not targets:
        return
    try:
        with open("/proc/self/maps") as f:
            maps = f.readlines()
    except OSError:
        return
    madvise = _madvise()
    if madvise is None:
        return
    for line in maps:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[5].rstrip("\n") not in targets:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        madvise(start, end - start, _MADV_DONTNEED)
