"""The one way this package runs an external program (elastix, antsRegistration, BRAINSFit, ...).

It streams the program's output line by line to a callback, honours cancel by killing the whole
process tree, applies a timeout, and never goes through a shell (arguments are a list, so names
with spaces, quotes or metacharacters are passed as they are). Temporary folders come from
:func:`engine_workdir`, which removes them in every case unless ``keep_temp`` is set.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from .errors import CancelledError, EngineError, EngineTimeoutError, EngineUnavailableError

LineCallback = Callable[[str], None]
CancelCheck = Callable[[], bool]

TEMP_PREFIX = "oneclickreg-"
LOG_TAIL_LINES = 25
_POLL_S = 0.05
_KILL_GRACE_S = 1.0


@dataclass(frozen=True)
class ProcessOutcome:
    """What a finished (exit code 0) program left: its full log and how long it ran."""

    returncode: int
    log: tuple[str, ...]
    elapsed_s: float


def log_tail(lines: Sequence[str], count: int = LOG_TAIL_LINES) -> tuple[str, ...]:
    """The last ``count`` non-empty lines of a log."""
    return tuple(line for line in lines if line.strip())[-count:]


def _kill_tree(process: subprocess.Popen[str]) -> None:
    """Terminate the program and every child it started, then make sure they are gone."""
    if process.poll() is not None:
        return
    if sys.platform == "win32":  # pragma: no cover - exercised only on Windows Slicer
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
        process.wait()
        return
    # The program runs in its own session, so its process group holds its whole tree.
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=_KILL_GRACE_S)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _pump(stream, lines: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line.rstrip("\r\n"))
    lines.put(None)


def run_process(
    args: Sequence[str],
    *,
    name: str,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    on_line: LineCallback | None = None,
    cancel: CancelCheck | None = None,
    timeout_s: float | None = None,
) -> ProcessOutcome:
    """Run ``args`` (a list; never a shell string) and return its outcome.

    ``name`` names the program in messages. Raises :class:`EngineUnavailableError` if the program
    cannot be started, :class:`CancelledError` if ``cancel()`` turned true, :class:`EngineTimeoutError`
    after ``timeout_s`` seconds, and :class:`EngineError` (with the log's last lines) on a non-zero
    exit. In every one of these cases no process of the tree is left running.
    """
    if isinstance(args, (str, bytes)):
        raise TypeError("run_process takes a list of arguments, never a shell string")
    argv = [os.fspath(a) for a in args]
    popen_kwargs: dict[str, object] = {}
    if sys.platform == "win32":  # pragma: no cover
        popen_kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        popen_kwargs["start_new_session"] = True
    start = time.monotonic()
    try:
        process = subprocess.Popen(
            argv,
            cwd=None if cwd is None else os.fspath(cwd),
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **popen_kwargs,  # type: ignore[arg-type]
        )
    except OSError as exc:
        raise EngineUnavailableError(f"Cannot start {name} ({argv[0]!r}): {exc.strerror or exc}.") from None

    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    reader.start()
    log: list[str] = []
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES * 4)
    stream_open = True
    try:
        while stream_open or process.poll() is None:
            if cancel is not None and cancel():
                _kill_tree(process)
                raise CancelledError(f"{name} was cancelled; its process was stopped.")
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                _kill_tree(process)
                raise EngineTimeoutError(
                    f"{name} did not finish within {timeout_s:g} s and was stopped.",
                    log_tail=log_tail(tail),
                )
            try:
                line = lines.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if line is None:
                stream_open = False
                continue
            log.append(line)
            tail.append(line)
            if on_line is not None:
                on_line(line)
        returncode = process.wait()
    except BaseException:
        _kill_tree(process)
        raise
    finally:
        if process.stdout is not None:
            process.stdout.close()
    if returncode != 0:
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
        raise EngineError(f"{name} failed: it {how}.", log_tail=log_tail(tail))
    return ProcessOutcome(returncode=returncode, log=tuple(log), elapsed_s=time.monotonic() - start)


@contextmanager
def engine_workdir(
    engine: str, *, keep_temp: bool = False, on_kept: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """A fresh temporary folder for one engine run, removed afterwards unless ``keep_temp``.

    ``on_kept`` is told the folder's path when it is kept, so the caller can report it.
    """
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{engine}-"))
    except OSError as exc:  # a missing, read-only or full temporary folder
        raise EngineError(
            f"Cannot create a temporary folder for {engine} in {tempfile.gettempdir()!r}: "
            f"{exc.strerror or exc}. Expected a writable temporary folder with free space (set TMPDIR "
            "to use another one)."
        ) from None
    try:
        yield folder
    finally:
        if keep_temp:
            if on_kept is not None:
                on_kept(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def find_executable(
    name: str,
    *,
    explicit: str | os.PathLike[str] | None = None,
    env_var: str | None = None,
    extra_dirs: Sequence[str | os.PathLike[str]] = (),
) -> Path | None:
    """Locate an engine's executable: explicit path, then ``$env_var``, then ``extra_dirs``, then PATH.

    An explicit path or environment variable that points nowhere is an error, not a silent fallback:
    the user asked for that program.
    """
    for source, value in (("explicit path", explicit), (f"${env_var}", os.environ.get(env_var or ""))):
        if value:
            candidate = Path(value)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
            raise EngineUnavailableError(
                f"The {name} executable given by {source} is not an executable file: {str(candidate)!r}."
            )
    for folder in extra_dirs:
        found = shutil.which(name, path=os.fspath(folder))
        if found:
            return Path(found)
    found = shutil.which(name)
    return Path(found) if found else None
