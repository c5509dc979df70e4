"""process_runner: streaming a child's lines, failures with the log tail, cancel/timeout of the whole
process tree, and engine work folders (also when the owning process is killed outright)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from OneClickRegistrationLib.errors import CancelledError, EngineError, EngineTimeoutError
from OneClickRegistrationLib.process_runner import engine_workdir, remove_orphaned_workdirs, run_process

# Generous: only a machine under heavy load gets near it, and a passing run never waits for it.
DEADLINE_S = 60.0


def test_runner_streams_lines_and_reports_failures_with_the_log_tail() -> None:
    lines: list[str] = []
    outcome = run_process([sys.executable, "-c", "print('a'); print('b')"], name="echo", on_line=lines.append)
    assert lines == ["a", "b"] and outcome.log == ("a", "b")
    with pytest.raises(EngineError, match="boom") as info:
        run_process([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], name="failing")
    assert "code 3" in str(info.value)
    with pytest.raises(TypeError):
        run_process("echo hi", name="shell string")  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {DEADLINE_S:g} s"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_and_timeout_kill_the_whole_process_tree(tmp_path: Path, how: str) -> None:
    # The child starts a grandchild, writes its pid, then says "started": the cancel waits for that
    # line (an event, not a number of seconds), so the grandchild always exists when it is stopped.
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
              f"open({str(pid_file)!r}, 'w').write(str(c.pid)); print('started', flush=True); time.sleep(600)")
    lines: list[str] = []
    expected = CancelledError if how == "cancel" else EngineTimeoutError
    with pytest.raises(expected):
        # The timeout case: 600 s of work against a limit of a few seconds; the limit is what ends it.
        run_process([sys.executable, "-c", script], name="sleeper", on_line=lines.append,
                    cancel=(lambda: "started" in lines) if how == "cancel" else None,
                    timeout_s=5.0 if how == "timeout" else None)
    if how == "timeout" and not pid_file.exists():
        pytest.fail("the child did not start its grandchild before the time limit (machine overloaded)")
    grandchild = int(pid_file.read_text())
    _wait_until(lambda: not _alive(grandchild), "the grandchild's end")


def test_stopping_a_program_in_the_middle_of_its_output_leaves_no_reader_error(monkeypatch) -> None:
    # The log reader thread was inside readline when the stopped run closed the pipe, and printed
    # "ValueError: I/O operation on closed file" with a traceback under the user's "interrupted"
    # (seen in an interrupted CLI run; here 3-4 of 20 stops did it before the fix).
    failures: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: failures.append(repr(hook.exc_value)))
    printer = "import sys\nwhile True:\n    sys.stdout.write('x' * 50 + '\\n'); sys.stdout.flush()"
    for _ in range(20):
        lines: list[str] = []
        with pytest.raises(CancelledError):
            run_process([sys.executable, "-c", printer], name="printer", on_line=lines.append,
                        cancel=lambda lines=lines: len(lines) > 3)
    time.sleep(0.5)  # a reader still running would report now
    assert failures == []


def test_workdir_is_removed_unless_kept() -> None:
    with engine_workdir("probe") as folder:
        (folder / "x.txt").write_text("x")
    assert not folder.exists()
    kept: list = []
    with engine_workdir("probe", keep_temp=True, on_kept=kept.append) as folder:
        pass
    assert kept == [folder] and folder.exists()
    folder.rmdir()


# A stand-in for a cluster worker: it opens an engine work folder, starts a long program through the runner,
# says where both are, then waits for it.
_OWNER = """
import sys, time
from OneClickRegistrationLib.process_runner import engine_workdir, run_process
with engine_workdir("probe") as work:
    (work / "data.txt").write_text("partial output")
    run_process([sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(600)"],
                name="long program", on_line=lambda line: print(work, line, flush=True))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("setpriv") is None,
                    reason="the parent-death signal is Linux's (util-linux setpriv)")
def test_a_process_killed_outright_leaves_no_program_running_and_its_folder_is_removed_next_time(
        tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": str(temp)})
    try:
        work, program = owner.stdout.readline().split()  # the program has started
        os.kill(owner.pid, signal.SIGKILL)  # no clean-up of its own can run
        owner.wait(DEADLINE_S)
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.stdout.close()
    _wait_until(lambda: not _alive(int(program)), "the orphaned program's end")
    assert Path(work).is_dir()  # nothing could remove it ...

    alive_owner = temp / "oneclickreg-live-1"  # ... while a live owner's folder ...
    alive_owner.mkdir()
    (alive_owner / ".owner").write_text(f"{socket.gethostname()} {os.getpid()}\n")
    elsewhere = temp / "oneclickreg-other-host-1"  # ... another host's ...
    elsewhere.mkdir()
    (elsewhere / ".owner").write_text(f"not-{socket.gethostname()} {owner.pid}\n")
    foreign = temp / "oneclickreg-no-owner-1"  # ... and one that names no owner stay
    foreign.mkdir()
    assert remove_orphaned_workdirs(temp) == [Path(work)]
    assert sorted(p.name for p in temp.iterdir()) == sorted([alive_owner.name, elsewhere.name, foreign.name])


def test_a_kept_folder_is_never_taken_for_an_orphan(tmp_path: Path) -> None:
    # kept by a process that has ended since: the folder is the user's now, not a dead run's
    keeper = ("from OneClickRegistrationLib.process_runner import engine_workdir\n"
              "with engine_workdir('probe', keep_temp=True) as work:\n"
              "    (work / 'elastix.log').write_text('log')\n"
              "print(work)\n")
    kept = Path(subprocess.run([sys.executable, "-c", keeper], capture_output=True, text=True, check=True,
                               env={**os.environ, "TMPDIR": str(tmp_path)}).stdout.strip())
    assert kept.parent == tmp_path and sorted(p.name for p in kept.iterdir()) == ["elastix.log"]
    assert remove_orphaned_workdirs(tmp_path) == []
    assert kept.is_dir()
