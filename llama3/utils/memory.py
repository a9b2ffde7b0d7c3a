"""Handing freed heap memory back to the operating system; reading the kernel's memory figures.

glibc keeps memory a process frees for its own reuse; resident memory then stays at its high-water
mark. Loading (one converted tensor at a time) and prompt processing (activations that die with
the prompt) free far more than decoding ever reuses, so both hand it back at their end.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_libc: ctypes.CDLL | bool | None = None


def release_freed_memory() -> None:
    """`malloc_trim(0)` where the C library has it (glibc); elsewhere nothing. ~1-2 ms."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


def proc_kib_field(path: str, key: str) -> int | None:
    """Bytes of a "Key:  N kB" line of a /proc file (`/proc/meminfo`, `/proc/self/status`), or
    None where the file or the line is missing (not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
