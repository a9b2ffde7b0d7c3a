"""Outputs appear under their final name only when complete.

Everything is written under a temporary sibling name (`OUT.partial-PID`, which no reader takes
for a checkpoint) and renamed into place at the end; an exception removes the temporary output.
A killed process can leave the `.partial-*` sibling behind, never something that looks finished.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InvalidRequestError

PARTIAL = ".partial-"


def check_new_output(out: Path) -> None:
    """A conversion never overwrites: `out` must not exist (an empty directory is fine)."""
    if out.is_dir() and not any(out.iterdir()):
        return
    if out.exists() or out.is_symlink():
        raise InvalidRequestError(
            f"the output {out} already exists",
            "choose a new --out path, or remove the old one first",
        )
    if not out.parent.is_dir():
        raise InvalidRequestError(
            f"the output's folder {out.parent} does not exist",
            "create it first or pick another --out",
        )


def _temporary(out: Path) -> Path:
    return out.with_name(f"{out.name}{PARTIAL}{os.getpid()}")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A fresh temporary directory that becomes `out` when the block ends without an error."""
    check_new_output(out)
    tmp = _temporary(out)
    _remove(tmp)  # a leftover of an earlier run with the same pid
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        if out.is_dir():
            out.rmdir()  # the empty directory the user made for it
        os.rename(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """A temporary file path that becomes `out` when the block ends without an error."""
    check_new_output(out)
    if out.is_dir():
        raise InvalidRequestError(
            f"the output {out} is a directory", "give a file name such as model.gguf"
        )
    tmp = _temporary(out)
    _remove(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.rename(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        _remove(tmp)
        raise


def _fsync_dir(d: Path) -> None:
    for f in [*(p for p in d.iterdir() if p.is_file()), d] if d.is_dir() else []:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
