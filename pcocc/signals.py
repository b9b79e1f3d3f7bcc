"""Turn termination signals into exceptions, so that ``finally`` blocks tear down."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

from pcocc.errors import PcoccError

TERMINATING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(PcoccError):
    """A signal asked us to stop (Ctrl-C, scancel, a closed terminal)."""

    exit_status = 130

    def __init__(self, signum: int, what: str = "interrupted by"):
        name = signal.Signals(signum).name
        super().__init__(f"{what} {name}")
        self.signum = signum
        self.exit_status = 128 + signum  # as a shell reports a command killed by it


@contextlib.contextmanager
def raising_on_signals(signals: tuple[int, ...] = TERMINATING) -> Iterator[None]:
    """Raise :class:`Interrupted` in the main thread when one of ``signals`` arrives."""

    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can own signal handlers
        return
    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _recording(signals: tuple[int, ...], then: Callable[[], None]) -> Iterator[list[int]]:
    """In this block, ``signals`` are appended to the yielded list, then ``then()`` runs."""
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        then()

    if threading.current_thread() is not threading.main_thread():
        yield received  # only the main thread can own signal handlers
        return
    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def signals_set(
    event: threading.Event, signals: tuple[int, ...] = TERMINATING
) -> contextlib.AbstractContextManager[list[int]]:
    """In this block, ``signals`` set ``event`` instead of raising; yields those received.

    For loops that block on queues or locks and check ``event`` every tick: an exception
    raised by a signal handler between a lock's acquire and release (inside
    ``queue.get``) leaves the lock broken ("release unlocked lock").
    """
    return _recording(signals, event.set)


def deferred_signals(
    signals: tuple[int, ...] = TERMINATING,
) -> contextlib.AbstractContextManager[list[int]]:
    """Ignore ``signals`` in this block (teardown must finish); yields those received."""
    return _recording(signals, lambda: None)
