"""Ctrl-C and SIGTERM, for real, in every stage of a run and for every engine.

Each test starts ``python -m OneClickRegistrationLib.cli`` as its own process with a private
TMPDIR, waits for the progress line that marks the stage, sends the signal, and then checks what a
user and a job scheduler see: ``oneclick-register: interrupted`` on stderr and no traceback, exit
130 (SIGINT) or 143 (SIGTERM), no engine process left, TMPDIR empty and no output written.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

import OneClickRegistrationLib
from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.engines import get_engine

pytestmark = pytest.mark.engine

PACKAGE_PARENT = str(Path(OneClickRegistrationLib.__file__).resolve().parent.parent)
MARKER_TIMEOUT_S = 240.0
EXIT_TIMEOUT_S = 60.0
PROGRESS = re.compile(r"^\s*\d+% (.*)$")


@dataclass(frozen=True)
class Pair:
    fixed: Path
    moving: Path


def _write_pair(folder: Path, pair: synthetic.SyntheticPair, suffix: str) -> Pair:
    fixed, moving = folder / f"fixed_T1{suffix}", folder / f"moving_CT{suffix}"
    sitk.WriteImage(pair.fixed, str(fixed), True)
    sitk.WriteImage(pair.moving, str(moving), True)
    return Pair(fixed, moving)


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory: pytest.TempPathFactory, t1_ct_pair: synthetic.SyntheticPair) -> Pair:
    return _write_pair(tmp_path_factory.mktemp("small"), t1_ct_pair, ".nrrd")


@pytest.fixture(scope="module")
def large_pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """1 mm heads in compressed NIfTI: reading, preparing and writing each take a visible moment."""
    pair = synthetic.make_pair("T1", "CT", rotation_deg=(8.0, -6.0, 10.0), translation_mm=(6.0, -8.0, 5.0),
                               moving_fov_shift_mm=(5.0, -3.0, 4.0), coarsen=1.0, seed=3)
    return _write_pair(tmp_path_factory.mktemp("large"), pair, ".nii.gz")


@pytest.fixture(scope="module")
def hard_pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """No result can be good (the moving image's voxels are shuffled), so recovery runs."""
    pair = synthetic.make_pair("T1", "CT", rotation_deg=(0.0, 0.0, 150.0), translation_mm=(6.0, -8.0, 5.0),
                               coarsen=3.0, seed=3)
    values = sitk.GetArrayFromImage(pair.moving)
    shuffled = sitk.GetImageFromArray(np.random.default_rng(3).permutation(values.ravel()).reshape(values.shape))
    shuffled.CopyInformation(pair.moving)
    return _write_pair(tmp_path_factory.mktemp("hard"), replace(pair, moving=shuffled), ".nrrd")


@dataclass(frozen=True)
class Stopped:
    returncode: int
    stderr: str
    stage_line: str  # the last progress line before the signal
    progress_after: list[str]  # progress lines printed after the signal was sent
    engine_processes: list[psutil.Process]  # the command's descendants when the signal was sent
    tmpdir: Path
    output: Path


def _pump(stream, lines: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line.rstrip("\n"))
    lines.put(None)


COMMAND_LINE = [sys.executable, "-m", "OneClickRegistrationLib.cli"]


def interrupt_run(args: list[str], marker: str, signum: int, tmp_path: Path,
                  extra_env: dict[str, str] | None = None, command: list[str] = COMMAND_LINE) -> Stopped:
    """Run the command line until a progress line matching ``marker`` appears, then send ``signum``."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    output = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([PACKAGE_PARENT, os.environ.get("PYTHONPATH", "")]),
           **(extra_env or {})}
    process = subprocess.Popen([*command, *args, "-o", str(output)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process.stderr, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + MARKER_TIMEOUT_S
    try:
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                pytest.fail(f"the run ended before {marker!r}; it printed:\n" + "\n".join(seen))
            seen.append(line)
            if re.search(marker, line):
                break
        stage_line = line
        engine_processes = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signum)
        process.wait(timeout=EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    rest: list[str] = []
    while (line := lines.get(timeout=10)) is not None:
        rest.append(line)
    return Stopped(process.returncode, "\n".join([*seen, *rest]), stage_line,
                   [m.group(1) for m in map(PROGRESS.match, rest) if m], engine_processes, tmpdir, output)


def assert_clean_stop(stopped: Stopped, signum: int) -> None:
    expected = 130 if signum == signal.SIGINT else 143
    assert stopped.returncode == expected, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == "oneclick-register: interrupted", stopped.stderr
    assert "Traceback" not in stopped.stderr and "Python Callable" not in stopped.stderr, stopped.stderr
    alive = [p for p in stopped.engine_processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"engine processes outlived the command: {alive}"
    strays = [p.info for p in psutil.process_iter(["pid", "cmdline"])
              if str(stopped.tmpdir) in " ".join(p.info["cmdline"] or ())]
    assert not strays, f"processes working in the command's TMPDIR are still running: {strays}"
    assert list(stopped.tmpdir.iterdir()) == [], "the engine's temporary folder was left behind"
    assert not stopped.output.exists() or list(stopped.output.iterdir()) == [], (
        f"partial outputs: {sorted(p.name for p in stopped.output.iterdir())}")


SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


@pytest.mark.parametrize("signum", SIGNALS)
@pytest.mark.parametrize(("stage", "marker"), [
    ("reading", r"% Reading "),
    ("preparation", r"% Preparing the images"),
    ("writing", r"% Writing the outputs"),
])
def test_interrupt_in_each_stage(stage: str, marker: str, signum: int, large_pair: Pair, tmp_path: Path) -> None:
    stopped = interrupt_run([str(large_pair.fixed), str(large_pair.moving), "--engine", "simpleitk"],
                            marker, signum, tmp_path)
    assert_clean_stop(stopped, signum)
    assert stopped.progress_after == [], f"the {stage} stage went on after the signal: {stopped.progress_after}"


def _skip_unless_available(engine: str) -> None:
    availability = get_engine(engine).availability()
    if not availability.available:
        pytest.skip(f"{engine} is not installed here: {availability.detail}")


ENGINE_MARKERS = {
    # Any level: from the initial search's start the coarse level may have nothing left to do.
    "simpleitk": r"% SimpleITK level \d/\d+, iteration [1-9]",
    "elastix": r"% elastix: level",
    "ants": r"% ANTs \w+ stage",
    "brainsfit": r"% BRAINSFit: level \d+/\d+",
}


@pytest.mark.parametrize("signum", SIGNALS)
@pytest.mark.parametrize("engine", list(ENGINE_MARKERS))
def test_interrupt_while_the_engine_runs(engine: str, signum: int, small_pair: Pair, tmp_path: Path) -> None:
    _skip_unless_available(engine)
    stopped = interrupt_run([str(small_pair.fixed), str(small_pair.moving), "--engine", engine],
                            ENGINE_MARKERS[engine], signum, tmp_path)
    if engine != "simpleitk":  # an external program (ANTs: the antspyx child) was running
        assert stopped.engine_processes, "no engine process was running when the signal was sent"
    assert_clean_stop(stopped, signum)
    assert not any(line.startswith("Result") or line.startswith("Writing") for line in stopped.progress_after)


@pytest.mark.parametrize("signum", SIGNALS)
def test_interrupt_during_recovery_is_not_swallowed(signum: int, hard_pair: Pair, tmp_path: Path) -> None:
    # "Candidate 1/N" is printed when the first candidate is done: the second one is registering.
    stopped = interrupt_run([str(hard_pair.fixed), str(hard_pair.moving), "--engine", "simpleitk"],
                            r"% Candidate 1/", signum, tmp_path)
    assert_clean_stop(stopped, signum)
    assert not any(line.startswith(("Candidate", "Done", "Writing")) for line in stopped.progress_after)



def test_an_interrupt_during_recovery_starts_no_other_candidate_on_a_many_core_machine(
        hard_pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    # Recovery once ran two candidates at a time in threads on machines with 4 or more cores (they
    # shared the prepared images between threads, which can crash SimpleITK); os.cpu_count is faked so
    # this machine takes the many-core path. A signal is delivered to the main thread only; here it is
    # raised where the main thread runs Python during recovery (its progress callback after the first
    # candidate): every candidate ran in the main thread, and none starts after the interrupt. The
    # engines are real; the wrapper only records the calls.
    from OneClickRegistrationLib import pipeline, recovery

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    real_run_attempt = recovery.run_attempt
    calls: list[str] = []

    def watched_run_attempt(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real_run_attempt(*args, **kwargs)

    monkeypatch.setattr(recovery, "run_attempt", watched_run_attempt)

    def progress(fraction: float, message: str) -> None:
        if message.startswith("Candidate 1/"):
            raise KeyboardInterrupt

    fixed, moving = sitk.ReadImage(str(hard_pair.fixed)), sitk.ReadImage(str(hard_pair.moving))
    with pytest.raises(KeyboardInterrupt):
        pipeline.register(fixed, moving, engine="simpleitk", progress=progress)
    assert calls == [threading.main_thread().name], calls
