"""The one way this package runs an external program (elastix, antsRegistration, BRAINSFit, ...).

It streams the program's output line by line to a callback, honours cancel by killing the whole
process tree, applies a timeout, and never goes through a shell (arguments are a list, so names
with spaces, quotes or metacharacters are passed as they are). Temporary folders come from
:func:`engine_workdir`, which removes them in every case unless ``keep_temp`` is set.

A process that is killed outright (SIGKILL, the out-of-memory killer, a cluster worker stopped by
its nanny) runs no clean-up of its own. For that case the program is started under
``setpriv --pdeathsig KILL`` where util-linux has it, so the kernel ends the program with its
parent, and every work folder names its owner, so the next run on the same host removes the folders
of owners that are gone.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import CancelledError, EngineError, EngineTimeoutError, EngineUnavailableError

LineCallback = Callable[[str], None]
CancelCheck = Callable[[], bool]

TEMP_PREFIX = "oneclickreg-"
LOG_TAIL_LINES = 25
_POLL_S = 0.05
_READER_GRACE_S = 2.0  # how long a stopped run waits for its log reader to see the end of the pipe
_KILL_GRACE_S = 1.0
_OWNER_FILE = ".owner"


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


@lru_cache(maxsize=1)
def _parent_death_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` where it works (Linux, util-linux 2.31 or newer), else nothing."""
    if not sys.platform.startswith("linux"):
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    try:  # an old setpriv without --pdeathsig refuses the option
        probe = subprocess.run([setpriv, "--pdeathsig", "KILL", "--", "true"], capture_output=True,
                               check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--") if probe.returncode == 0 else ()


def _with_parent_death(argv: list[str]) -> list[str]:
    """``argv`` started so that it dies with this process, when the program itself can be found.

    A program that cannot be found is started as it is, so that the error stays "cannot start".
    """
    prefix = _parent_death_prefix()
    if not prefix or shutil.which(argv[0]) is None:
        return argv
    return [*prefix, *argv]


def _pump(stream, lines: queue.Queue[str | None]) -> None:
    try:
        for line in iter(stream.readline, ""):
            lines.put(line.rstrip("\r\n"))
    except (ValueError, OSError):
        pass  # the stream was closed under the reader: the run was stopped (cancel, timeout, a signal)
    finally:
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
            _with_parent_death(argv),
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
        # The tree is gone, so the pipe is at its end and the reader stops by itself; closing the
        # stream under a reader still in readline would make it fail instead.
        reader.join(timeout=_READER_GRACE_S)
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

    ``on_kept`` is told the folder's path when it is kept, so the caller can report it. The folder
    names its owner (host and process), and folders left by owners that were killed outright on this
    host are removed first.
    """
    remove_orphaned_workdirs()
    folder: Path | None = None
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{engine}-"))
        (folder / _OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n", encoding="utf-8")
    except OSError as exc:
        if folder is not None:  # created, but a full disk refused its owner file
            shutil.rmtree(folder, ignore_errors=True)  # a missing, read-only or full temporary folder
        raise EngineError(
            f"Cannot create a temporary folder for {engine} in {tempfile.gettempdir()!r}: "
            f"{exc.strerror or exc}. Expected a writable temporary folder with free space (set TMPDIR "
            "to use another one)."
        ) from None
    try:
        yield folder
    finally:
        if keep_temp:
            # a kept folder belongs to the user now: no later run may take it for an orphan
            with suppress(OSError):
                (folder / _OWNER_FILE).unlink()
            if on_kept is not None:
                on_kept(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _process_gone(pid: int) -> bool:
    """True if no process ``pid`` runs here (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state == "Z"


def remove_orphaned_workdirs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove work folders under ``root`` (the temporary folder) whose owner on this host is gone.

    Folders of live owners, of other hosts (a shared temporary folder) and without an owner file
    (kept with ``keep_temp``, or not ours) are left alone. Returns what was removed.
    """
    base = Path(root if root is not None else tempfile.gettempdir())
    host = socket.gethostname()
    removed = []
    with suppress(OSError):
        for folder in base.glob(f"{TEMP_PREFIX}*"):
            try:
                owner_host, owner_pid = (folder / _OWNER_FILE).read_text(encoding="utf-8").split()
                pid = int(owner_pid)
            except (OSError, ValueError):
                continue
            if owner_host == host and pid != os.getpid() and _process_gone(pid):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


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
