"""One process per run folder: a lock file that holds the owner's pid.

`RunLock(folder).acquire()` creates `folder/.splatdreamer.lock` holding "pid host start-time" and
`release()` removes it. The file appears with its content in one step (written beside it, then
hard-linked into place, which fails if a lock is already there), so a reader never sees it half
written. A lock whose process is gone (killed, machine rebooted; recognised by the pid and, on
Linux, the process's start time, so a reused pid does not count) is stale and is taken over.
A lock written on another host cannot be checked and is refused with the way to remove it.

No third-party lock (filelock's fcntl locks) is used: they do not work on every network file
system, and they do not say who holds the folder, which the message to the user needs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from splatdreamer.errors import RunFolderError

LOCK = ".splatdreamer.lock"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "-" where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "-"
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in parentheses may hold spaces


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    return start == "-" or _start_time(pid) in ("-", start)


class RunLock:
    """The lock of one run folder; a context manager that acquires on entry and releases on exit."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.held = False

    def owner(self) -> str | None:
        """Who holds the lock ("pid N on HOST"), or None when it is free or stale."""
        try:
            words = self.path.read_text().split()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RunFolderError(f"cannot read the lock {self.path} ({e.strerror}); remove it if no run uses "
                                 f"{self.folder}") from None  # fmt: skip
        if len(words) != 3 or not words[0].isdigit():
            return None  # not written by RunLock (the file appears complete): stale
        pid, host, start = int(words[0]), words[1], words[2]
        if host != socket.gethostname():
            return f"pid {pid} on {host}"
        return f"pid {pid}" if _alive(pid, start) else None

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; `RunFolderError` if another process holds it."""
        pid = os.getpid()
        tmp = self.folder / f"{LOCK}.pid{pid}.tmp"
        try:
            tmp.write_text(f"{pid} {socket.gethostname()} {_start_time(pid)}\n")
            for _ in range(2):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    owner = self.owner()
                    if owner is not None:
                        raise RunFolderError(
                            f"{self.folder} is in use by another splatdreamer run ({owner}); wait for it to "
                            f"finish or stop it. If no such run exists, delete {self.path}"
                        ) from None
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
            raise RunFolderError(f"{self.folder}: another run took the lock at the same moment; try again")
        except OSError as e:
            if isinstance(e, RunFolderError):
                raise
            raise RunFolderError(f"cannot write in {self.folder} ({e.strerror or e}); choose a folder you can "
                                 "write to with --output.out-dir") from None  # fmt: skip
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
