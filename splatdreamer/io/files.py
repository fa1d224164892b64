"""Opening a file a user named, safely: only a regular file, never a device or a FIFO.

A device named by mistake (/dev/zero) would be read until memory runs out, a FIFO would wait for a writer
forever. The file is opened without blocking, checked, and only then read as usual.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO


class NotARegularFile(Exception):
    """The path names a folder, a FIFO or a device; `kind` says which, in words ("a FIFO")."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
    """Open `path` for binary reading, only if it is a regular file: else `NotARegularFile`, for the caller
    to word. OSError (a missing file, no permission) is the caller's too."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            if stat.S_ISDIR(mode):
                raise NotARegularFile("a folder")
            if stat.S_ISFIFO(mode):
                raise NotARegularFile("a FIFO")
            raise NotARegularFile("a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
