"""Ctrl-C (SIGINT) and termination (SIGTERM) as one exception path.

Python turns SIGINT into :class:`KeyboardInterrupt` but lets SIGTERM (what ``kill`` and job
schedulers send) end the process on the spot, skipping every ``finally``: engine processes would
outlive the command and temporary folders stay behind. Inside :func:`signals_interrupt` both
signals raise :class:`Interrupted`, a ``KeyboardInterrupt``, so the same clean-up runs for both:
the process runner kills the engine's process tree, temporary folders are removed and staged
outputs are dropped. Only the first signal raises; later ones are recorded but do not interrupt
the clean-up the first one started.

Code that C++ calls back (SimpleITK's iteration callbacks) must not let the exception cross the
C++ frames (SimpleITK prints it and turns it into "There was an error executing the Python
Callable"); it runs inside :func:`deferred`, stops when a signal is held, and the signal is raised
when the block ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)

# Signals received while :func:`signals_interrupt` is active (first one first).
_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(interrupt: BaseException) -> int:
    """The exit status for an interrupt: 130 for Ctrl-C, 143 for SIGTERM (shell convention)."""
    return 128 + int(getattr(interrupt, "signum", signal.SIGINT))


def _on_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    _received.append(signum)
    if len(_received) == 1:
        raise Interrupted(signum)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    _received.clear()
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()


@contextmanager
def deferred(held: list[int] | None = None) -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM during steps that must not be cut (C++ calling back into Python,
    renaming outputs into place).

    The block receives the list of signals held so far (``held``, when given), so a long step can
    stop early; when the block ends, the first held signal does what it would have done (raise :class:`Interrupted` or
    ``KeyboardInterrupt``), taking precedence over any error of the block.
    """
    held = [] if held is None else held
    if threading.current_thread() is not threading.main_thread():
        yield held  # signals are delivered to the main thread only
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            _deliver(held[0], previous[held[0]])


def _deliver(signum: int, handler: object) -> None:
    if callable(handler):
        handler(signum, None)  # what the signal would have done (ours raises Interrupted)
    elif handler == signal.SIG_DFL:
        raise Interrupted(signum)
