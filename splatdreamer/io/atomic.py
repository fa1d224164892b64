"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written one.

Every file splatdreamer writes (checkpoints, exports, previews, configs) goes through
`atomic_write`, so a crash, Ctrl-C or full disk mid-write leaves the previous version intact.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from splatdreamer.errors import ConfigError
from splatdreamer.io.files import kind_of

_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # the names atomic_write writes to


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on success it replaces `path` atomically.

    `mode` is "wb" (bytes) or "w" (UTF-8 text with "\\n" line endings). Missing parent
    directories are created. The temporary file (`.<name>.<random>.tmp` in the same directory,
    so `os.replace` never crosses filesystems) is flushed and fsynced before the rename, and
    removed if the block raises anything, KeyboardInterrupt included. The new file gets the
    permissions a plain `open(path, "w")` would give it (0o666 minus the umask). A symbolic link is
    written through (its target is replaced, the link kept); a device, FIFO or folder at `path` is refused
    with a ConfigError before anything is written.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    if path.is_symlink():  # write where the link points and keep the link, as open(path, "w") would
        path = Path(os.path.realpath(path))
    with contextlib.suppress(FileNotFoundError):
        kind = kind_of(path.stat().st_mode)
        if kind is not None:  # os.replace would put a file in place of a device, a FIFO or an empty folder
            raise ConfigError(f"cannot write {path}: it is {kind}, not a file; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open with O_EXCL and mode 0o666 applies the umask, unlike tempfile's private 0o600.
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # matches _TEMPORARY
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with open(fd, mode, encoding="utf-8" if mode == "w" else None, newline="\n" if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable on POSIX. Best effort: Windows cannot open directories and
    some network filesystems reject fsync on them, and the file is already complete by then."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` through `atomic_write`, so an interrupted save keeps the old checkpoint."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files `atomic_write` left in `directory` and its subfolders when the process was
    killed mid-write (a cut-short checkpoint is megabytes). Only for a folder no other process writes to
    (a locked run folder). Returns what was deleted."""
    removed = []
    for path in Path(directory).rglob(".*.tmp"):
        if _TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
