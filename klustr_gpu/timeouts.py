"""Time limits on work that may hang (a stuck disk, a codec caught in a loop).

:func:`deadline` interrupts its block with ``SIGALRM`` after ``seconds``, raising the error
``make_error()`` returns; it works in a process's main thread only (signals reach no other),
elsewhere it does nothing and the caller needs another way (``klustr_gpu.features.decode``
runs such work in a helper thread it can abandon). A leaf module: the scan's worker processes
import it without pandas or torch.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator


def alarm_usable(seconds: float) -> bool:
    """Whether :func:`deadline` can enforce ``seconds`` here (a positive limit, in the main thread)."""
    return bool(seconds) and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deadline(seconds: float, make_error: Callable[[], BaseException]) -> Iterator[None]:
    """Raise ``make_error()`` in the block once ``seconds`` have passed (main thread only; 0 or
    another thread: no limit)."""
    if not alarm_usable(seconds):
        yield
        return

    def expired(_signum, _frame):
        raise make_error()

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
