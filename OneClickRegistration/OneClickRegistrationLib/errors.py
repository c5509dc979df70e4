"""The project's documented errors.

Every failure a user can cause or meet raises a subclass of :class:`OneClickError`, with a message
that says what was expected and what was received. Callers (the command line, the Slicer logic)
catch ``OneClickError`` and show its message; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Callable


class OneClickError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(OneClickError, ValueError):
    """An input (file, image, mask, option) is not what the operation needs."""


class EngineUnavailableError(OneClickError):
    """A registration engine is not installed or cannot be found."""


class EngineError(OneClickError):
    """A registration engine ran and failed; ``log_tail`` holds its last log lines."""

    def __init__(self, message: str, *, log_tail: tuple[str, ...] = ()) -> None:
        if log_tail:
            message = message + "\nLast lines of the engine log:\n" + "\n".join(log_tail)
        super().__init__(message)
        self.log_tail = log_tail


class EngineTimeoutError(EngineError):
    """A registration engine ran longer than its time limit and was stopped."""


class CancelledError(OneClickError):
    """The user cancelled the operation; nothing was written or changed."""


CANCELLED_MESSAGE = "The registration was cancelled; nothing was changed."


def raise_if_cancelled(cancel: Callable[[], bool] | None) -> None:
    """Raise :class:`CancelledError` (one wording everywhere) once ``cancel()`` returns True."""
    if cancel is not None and cancel():
        raise CancelledError(CANCELLED_MESSAGE)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when the message is empty).

    Errors of this package put their point on the first line (an engine error appends its log);
    a one-line display (command line, batch summary, attempt list) shows that line.
    """
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def itk_reason(error: BaseException) -> str:
    """The reason line of an ITK exception: ITK puts file and line first and the reason last."""
    text = str(error).strip()
    return text.splitlines()[-1].strip().removeprefix("Reason: ") if text else type(error).__name__
