"""Following one child process: its progress lines, its end, its outcome; stopping its whole tree.

:class:`ChildJob` has no transport of its own: the panel feeds it what ``qt.QProcess`` reads, and
:func:`runChild` (console, batch scripts, tests) feeds it from files the child writes to, polling from
the calling thread. Either way, progress and cancel callbacks run in the caller's thread, and there
is no Python thread.

Stopping: the child first gets SIGINT, which the core turns into a clean stop (its engines' processes
ended, its temporary folders removed); if it is still there after :data:`STOP_GRACE_S`, it and every
process below it are killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from OneClickRegistrationLib import errors
from OneClickRegistrationLib.progress_lines import parse_event

from .command import ChildCommand
from .outcome import RegistrationOutcome, judgementFromScoreOutput, readRegistrationOutputs

STOP_GRACE_S = 5.0
STDERR_TAIL_LINES = 20

ProgressCallback = Callable[[float, str], None]


class ChildJob:
    """The state of one child run, built from the bytes it prints; turns its end into an outcome."""

    def __init__(self, command: ChildCommand, *, progress: ProgressCallback | None = None) -> None:
        self.command = command
        self.progress = progress
        self.fraction, self.stage = 0.0, ""
        self.done: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.cancelled = False
        self.timedOut = False
        self._partial = b""
        self._stdout: list[bytes] = []
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._stderrPartial = b""

    def feedStdout(self, data: bytes) -> None:
        self._stdout.append(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            event = parse_event(line)
            if event is None:
                continue
            if event["event"] == "progress":
                self.fraction, self.stage = float(event.get("fraction", 0.0)), str(event.get("stage", ""))
                if self.progress is not None:
                    self.progress(self.fraction, self.stage)
            elif event["event"] == "done":
                self.done = event
            else:
                self.error = event

    def feedStderr(self, data: bytes) -> None:
        lines = (self._stderrPartial + data).split(b"\n")
        self._stderrPartial = lines.pop()
        self._stderr.extend(line.decode("utf-8", "replace").rstrip() for line in lines if line.strip())

    def stderrTail(self) -> tuple[str, ...]:
        tail = [*self._stderr, self._stderrPartial.decode("utf-8", "replace").strip()]
        return tuple(line for line in tail if line)

    def outcome(self, exitCode: int) -> RegistrationOutcome:
        """The outcome of a child that exited with ``exitCode``; raises the core's error otherwise."""
        what = "registration" if self.command.kind == "register" else "judgement"
        if self.cancelled:
            raise errors.CancelledError(f"The {what} was cancelled; the scene was not changed.")
        if self.timedOut:
            raise errors.EngineTimeoutError(f"The {what} did not finish in time and was stopped.",
                                            log_tail=self.stderrTail())
        if self.error is not None:
            raise _errorFromEvent(self.error)
        if exitCode != 0:
            tail = self.stderrTail()
            if exitCode == 2 and tail:  # the command line's one-line message for bad input
                raise errors.InputError(tail[-1].split("error: ", 1)[-1])
            raise errors.EngineError(f"The {what} process exited with code {exitCode}.", log_tail=tail)
        if self.command.kind == "judge":
            return judgementFromScoreOutput(b"".join(self._stdout).decode("utf-8", "replace"))
        if self.done is None:
            raise errors.EngineError("The registration process ended without saying it was done.",
                                     log_tail=self.stderrTail())
        return readRegistrationOutputs(self.command.outdir)


def _errorFromEvent(event: dict[str, Any]) -> errors.OneClickError:
    kind = getattr(errors, str(event.get("error_type", "")), None)
    if not (isinstance(kind, type) and issubclass(kind, errors.OneClickError)):
        kind = errors.EngineError
    return kind(str(event.get("message", "The registration failed.")))


# ---------------------------------------------------------------------------------------------------
# Stopping a process tree
# ---------------------------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...), from ``ps`` (Linux and macOS)."""
    try:
        listing = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True,
                                 check=False, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    children: dict[int, list[int]] = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(fields[0]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def askToStop(pid: int) -> None:
    """Ask the child to stop cleanly (SIGINT: the core ends its engines and removes its temporary files)."""
    if sys.platform == "win32":  # pragma: no cover - no gentle signal for a console child there
        killProcessTree(pid)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)


def killProcessTree(pid: int) -> None:
    """Kill ``pid`` and every process below it (the engines it started in their own sessions)."""
    if sys.platform == "win32":  # pragma: no cover
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        return
    for target in [*descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------
# Running it synchronously (console, batch scripts)
# ---------------------------------------------------------------------------------------------------

def _readNew(path: str, offset: int) -> tuple[bytes, int]:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return b"", offset
    return data, offset + len(data)


def runChild(command: ChildCommand, *, progress: ProgressCallback | None = None,
             cancel: Callable[[], bool] | None = None, timeoutS: float | None = None,
             idle: Callable[[], Any] | None = None, pollS: float = 0.05) -> RegistrationOutcome:
    """Run the child to its end from this thread and return its outcome (or raise its error).

    The child writes to two files in its folder, read as they grow, so no pipe and no thread is needed.
    ``progress`` and ``cancel`` are called from this thread; ``idle`` (Slicer: ``slicer.app.processEvents``)
    keeps the application responsive. No process of the child's tree is left when this returns.
    """
    job = ChildJob(command, progress=progress)
    stdoutPath, stderrPath = str(command.folder / "child.out"), str(command.folder / "child.err")
    with open(stdoutPath, "wb") as stdout, open(stderrPath, "wb") as stderr:
        try:
            process = subprocess.Popen(list(command.argv), env=dict(command.env), stdin=subprocess.DEVNULL,
                                       stdout=stdout, stderr=stderr)
        except OSError as error:
            raise errors.EngineUnavailableError(
                f"Cannot start the registration process ({command.argv[0]!r}): {error.strerror or error}.") from None
    start, stopDeadline = time.monotonic(), None
    outOffset = errOffset = 0
    try:
        while True:
            exitCode = process.poll()
            data, outOffset = _readNew(stdoutPath, outOffset)
            if data:
                job.feedStdout(data)
            data, errOffset = _readNew(stderrPath, errOffset)
            if data:
                job.feedStderr(data)
            if exitCode is not None:
                break
            if stopDeadline is None:
                if cancel is not None and cancel():
                    job.cancelled = True
                elif timeoutS is not None and time.monotonic() - start > timeoutS:
                    job.timedOut = True
                if job.cancelled or job.timedOut:
                    askToStop(process.pid)
                    stopDeadline = time.monotonic() + STOP_GRACE_S
            elif time.monotonic() > stopDeadline:
                killProcessTree(process.pid)
            if idle is not None:
                idle()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=pollS)
    except BaseException:
        job.cancelled = True
        killProcessTree(process.pid)
        process.wait()
        raise
    finally:
        if process.poll() is None:
            killProcessTree(process.pid)
            process.wait()
    return job.outcome(exitCode)
