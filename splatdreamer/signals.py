"""Stop signals: which ones end a run as Ctrl-C does, and how a block of code takes them over.

`timeout`, `kill`, `docker stop` and job schedulers send SIGTERM, a closed terminal SIGHUP. A run that died on
them would leave no checkpoint and a stale lock, so `generate` takes them between steps and the CLI turns them
into KeyboardInterrupt for the length of a command (`batch` then cancels its runs and writes its manifest).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

TERMINATION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
STOP_SIGNALS = (signal.SIGINT, *TERMINATION_SIGNALS)

Handler = Callable[[int, object], None]


@contextlib.contextmanager
def handled(signals: tuple[int, ...], handler: Handler) -> Iterator[bool]:
    """Install `handler` for each of `signals` while the block runs, then put back the handlers there were.

    Yields whether the handler is in place: Python sets signal handlers only from the main thread, so in
    any other thread (a Ray worker, a notebook's background thread) the block runs with the handlers as
    they are and the value is False.
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield True
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: a handler not set from Python
