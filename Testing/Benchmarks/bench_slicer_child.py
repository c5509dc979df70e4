"""The panel's path under a main thread that holds the GIL the way Slicer's does, next to the command line.

Slicer never enables PythonQt's thread support, so its main thread keeps the GIL while Qt idles in
C++. This benchmark emulates that main thread: it sleeps in short C calls that do not release the GIL
(``usleep`` through ``ctypes.PyDLL``), and between them handles "events" (reads what the child wrote).
On the same pair and engine, in turn, each repeat runs:

* ``command line``: ``python -m OneClickRegistrationLib.cli FIXED MOVING -o OUT`` on files, as users run it;
* ``panel path``: the module's path from MRML nodes (``slicer-core``): write the inputs, run the same
  command line as a child driven from that GIL-holding main thread, read the outputs back, apply them to
  the scene;
* ``in-process thread`` (``--thread-baseline``): the previous design, the core in a Python worker
  thread polled by a 100 ms timer from that main thread, for contrast.

The ratio is each path's median wall time over the command line's, per case. Errors are TRE in mm
against the synthetic pair's ground truth (as read back from the scene for the panel path).

    python Testing/Benchmarks/bench_slicer_child.py [--engines simpleitk elastix] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slicer  # the slicer-core wheel (real MRML); imported before any timing, as Slicer has it loaded
from bench_common import print_table, write_json

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.pipeline import register
from OneClickRegistrationSlicer import convert
from OneClickRegistrationSlicer.child_job import runChild
from OneClickRegistrationSlicer.command import registrationCommand
from OneClickRegistrationSlicer.scene import applyOutcome

IDLE_S = 0.02  # the panel path: Qt idles until the child writes; its lines arrive every few ms to seconds
TIMER_S = 0.1  # the previous design: a 100 ms QTimer polled the worker thread

_libc = ctypes.PyDLL(ctypes.util.find_library("c"))  # PyDLL: calls keep the GIL, as PythonQt's idle loop does


def hold_gil_idle(seconds: float = IDLE_S) -> None:
    _libc.usleep(int(seconds * 1e6))


def command_line(fixed: Path, moving: Path, outdir: Path, engine: str) -> sitk.Transform:
    subprocess.run([sys.executable, "-m", "OneClickRegistrationLib.cli", str(fixed), str(moving), "-o", str(outdir),
                    "--engine", engine, "--quiet"], check=True, capture_output=True, timeout=900)
    return sitk.ReadTransform(str(outdir / "transform.tfm"))


def panel_path(pair: synthetic.SyntheticPair, engine: str) -> sitk.Transform:
    scene = slicer.vtkMRMLScene()
    fixed = convert.addVolumeNodeFromImage(scene, pair.fixed, "T1")
    moving = convert.addVolumeNodeFromImage(scene, pair.moving, "T2")
    # The module's steps (registrationCommand, the child, applyOutcome); runChild's loop is the event
    # loop: each turn the main thread idles holding the GIL, then handles what the child wrote (the
    # QProcess readyRead slot in Slicer). Its own wait between turns is 1 ms, so the GIL is almost never free.
    command = registrationCommand(fixed, moving, engine=engine)
    try:
        outcome = runChild(command, idle=hold_gil_idle, pollS=0.001)
        applyOutcome(scene, fixed, moving, outcome)
    finally:
        command.cleanup()
    return convert.transformBetweenVolumes(fixed, moving.GetParentTransformNode())


def in_process_thread(pair: synthetic.SyntheticPair, engine: str) -> sitk.Transform:
    box: dict[str, object] = {}
    worker = threading.Thread(target=lambda: box.update(result=register(pair.fixed, pair.moving, engine=engine,
                                                                          fixed_name="T1", moving_name="T2")),
                              daemon=True)
    worker.start()
    while worker.is_alive():  # a 100 ms QTimer: 100 ms in Qt's idle loop (one C call), then a non-blocking poll
        hold_gil_idle(TIMER_S)
        worker.join(0)
    return box["result"].transform  # type: ignore[attr-defined]


def timed(run: Callable[[], sitk.Transform], pair: synthetic.SyntheticPair) -> tuple[float, float]:
    start = time.perf_counter()
    transform = run()
    seconds = time.perf_counter() - start
    error = synthetic.target_registration_error(transform, pair.truth, pair.brain_points)
    return seconds, float(error.mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["simpleitk", "elastix"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--thread-baseline", action="store_true", help="also time the previous in-process thread")
    args = parser.parse_args(argv)

    # The module self-test's pair: T1 fixed 67x80x73, T2 moving 81x85x20, 8 deg and 8 mm apart.
    pair = synthetic.make_pair("T1", "T2", rotation_deg=(0.0, 0.0, 8.0), translation_mm=(6.0, -4.0, 3.0),
                               coarsen=3.0, source="analytic")
    rows, runs = [], []
    with tempfile.TemporaryDirectory() as folder:
        fixed, moving = Path(folder) / "T1.nrrd", Path(folder) / "T2.nrrd"
        sitk.WriteImage(pair.fixed, str(fixed))
        sitk.WriteImage(pair.moving, str(moving))
        for engine in args.engines:
            methods: dict[str, Callable[[], sitk.Transform]] = {
                "command line": lambda e=engine: command_line(fixed, moving, Path(folder) / f"out-{e}", e),
                "panel path": lambda e=engine: panel_path(pair, e),
            }
            if args.thread_baseline:
                methods["in-process thread"] = lambda e=engine: in_process_thread(pair, e)
            times: dict[str, list[float]] = {name: [] for name in methods}
            errors: dict[str, list[float]] = {name: [] for name in methods}
            for repeat in range(args.repeats):
                order = list(methods) if repeat % 2 == 0 else list(reversed(methods))  # alternate: fair to drift
                for name in order:
                    if name == "in-process thread" and repeat > 0:
                        continue  # one run is enough to show the order of magnitude
                    seconds, tre = timed(methods[name], pair)
                    times[name].append(seconds)
                    errors[name].append(tre)
                    runs.append({"engine": engine, "method": name, "repeat": repeat, "seconds": seconds,
                                 "mean_tre_mm": tre})
                    print(f"{engine:10s} {name:18s} {seconds:7.2f} s  TRE {tre:.2f} mm", flush=True)
            reference = statistics.median(times["command line"])
            for name in methods:
                median = statistics.median(times[name])
                rows.append({"engine": engine, "method": name, "runs": len(times[name]), "median_s": median,
                             "ratio_to_command_line": median / reference,
                             "mean_tre_mm": statistics.median(errors[name])})
    print()
    print_table(rows, ["engine", "method", "runs", "median_s", "ratio_to_command_line", "mean_tre_mm"])
    path = write_json("bench_slicer_child", {
        "pair": {"fixed": "T1 67x80x73", "moving": "T2 81x85x20", "rotation_deg": [0, 0, 8],
                 "translation_mm": [6, -4, 3]},
        "idle_slice_s": IDLE_S, "thread_timer_s": TIMER_S, "rows": rows, "runs": runs,
    })
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
