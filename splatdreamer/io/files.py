"""Files a user names are regular files: never a device, a FIFO or a folder.

A device named by mistake (/dev/zero) would be read until memory runs out, a FIFO would wait for a writer
forever. A file is opened without blocking, checked, and only then read as usual; `atomic_write` refuses to
put a new file in the place of anything that is not one (it would replace /dev/null for root).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


class NotARegularFile(Exception):
    """The path names a folder, a FIFO or a device; `kind` says which, in words ("a FIFO")."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def kind_of(mode: int) -> str | None:
    """What a path with this st_mode is, in words, when it is not a regular file ("a folder", "a FIFO",
    "a device"); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
    """Open `path` for binary reading, only if it is a regular file: else `NotARegularFile`, for the caller
    to word. OSError (a missing file, no permission) is the caller's too."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotARegularFile(kind)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def blocking_file(folder: str | os.PathLike) -> Path | None:
    """The first of `folder` and its parents that exists and is not a folder: what stops `folder` from being
    made (or written into); None when nothing does."""
    folder = Path(folder)
    return next((a for a in (folder, *folder.parents) if a.exists() and not a.is_dir()), None)
