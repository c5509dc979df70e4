"""Batches on a real Dask cluster on the loopback: two local worker processes, a scheduler and a
worker started as programs, a worker killed for real mid-pair, Ctrl-C sent for real to the command.

Every pair is a small synthetic head registered for real (elastix, no recovery) so the whole file
stays within a minute or two; what is checked is the batch's bookkeeping, not accuracy (a loose
millimetre bound only says that the registration really happened).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import SimpleITK as sitk
from robustness_support import alive, leftovers, stand_in_pids, tre_mm, write_stand_in

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.batch import Pair, read_pairs, register_batch
from OneClickRegistrationLib.cli import main as cli_main
from OneClickRegistrationLib.options import RegistrationOptions

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")
psutil = pytest.importorskip("psutil")

from OneClickRegistrationLib.batch_cluster import cluster_client  # noqa: E402 (needs distributed)

pytestmark = [pytest.mark.cluster, pytest.mark.engine,
              pytest.mark.skipif(sys.platform == "win32", reason="kills processes with POSIX signals")]

OPTIONS = RegistrationOptions(engine="elastix", recover=False)
CORE = str(Path(__file__).resolve().parents[2] / "OneClickRegistration")
HERE = str(Path(__file__).resolve().parent)


def _pair(seed: int, coarsen: float = 6.0) -> synthetic.SyntheticPair:
    return synthetic.make_pair("T1", "T1", rotation_deg=(3.0, -4.0, 6.0 + seed), translation_mm=(6.0, -5.0, 4.0),
                               coarsen=coarsen, source="analytic", seed=seed)


def _write_pairs(folder: Path, count: int, *, coarsen: float = 6.0) -> tuple[Path, dict[str, synthetic.SyntheticPair]]:
    """``count`` pairs in ``folder`` and the pairs file naming them; returns the file and the truths."""
    folder.mkdir(parents=True, exist_ok=True)
    truths = {}
    lines = ["name,fixed,moving"]
    for index in range(count):
        name = f"case{index}"
        pair = _pair(index + 1, coarsen)
        sitk.WriteImage(pair.fixed, str(folder / f"{name}_fixed.nrrd"))
        sitk.WriteImage(pair.moving, str(folder / f"{name}_moving.nrrd"))
        lines.append(f"{name},{name}_fixed.nrrd,{name}_moving.nrrd")
        truths[name] = pair
    csv_path = folder / "pairs.csv"
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, truths


def _summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(condition: Callable[[], object], what: str, timeout_s: float = 120.0) -> object:
    """Poll ``condition`` until it is truthy (an event, not a fixed sleep); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    with cluster_client(workers=2) as made:
        yield made


def _running_engine(client: distributed.Client, key_part: str) -> tuple[str, int, psutil.Process] | None:
    """(worker address, worker pid, elastix process) of the worker running ``key_part``'s pair."""
    # on_error="ignore": a worker that has just been killed does not answer
    executing = client.run(lambda dask_worker: [str(t.key) for t in dask_worker.state.executing], on_error="ignore")
    pids = client.run(os.getpid, on_error="ignore")
    for address, keys in executing.items():
        if any(key_part in key for key in keys) and address in pids:
            try:
                children = psutil.Process(pids[address]).children(recursive=True)
            except psutil.Error:
                continue
            try:  # the registration itself, not the adapter's "elastix --version" probe
                engine = next((c for c in children if "elastix" in c.name() and "-out" in c.cmdline()), None)
                command = engine.cmdline() if engine is not None else None
            except psutil.Error:
                continue
            if engine is not None and command:
                # two pairs at a time on this machine: each engine gets half the cores
                threads = max(1, len(os.sched_getaffinity(0)) // 2)
                assert command[command.index("-threads") + 1] == str(threads), command
                return address, pids[address], engine
    return None


def _in_background(target: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = target()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_two_worker_processes_write_the_same_summary_as_one_machine(client, tmp_path) -> None:
    pairs_file, truths = _write_pairs(tmp_path / "in", 4)
    pairs = read_pairs(pairs_file)
    here, there = tmp_path / "here", tmp_path / "there"
    register_batch(pairs, here, options=OPTIONS, show_progress=False)
    outcomes = register_batch(pairs, there, options=OPTIONS, client=client, show_progress=False)
    assert len({o.where for o in outcomes}) == 2  # both worker processes took pairs
    assert all(o.where.startswith("tcp://127.0.0.1:") for o in outcomes)
    assert all(o.threads == max(1, len(os.sched_getaffinity(0)) // 2) for o in outcomes)
    assert all(o.resources is not None and o.resources.peak_memory_mb > 0 for o in outcomes)
    local, cluster = _summary(here), _summary(there)
    assert (here / "summary.csv").read_text().splitlines()[0] == (there / "summary.csv").read_text().splitlines()[0]
    assert [r["name"] for r in cluster] == [p.name for p in pairs]  # input order, whatever finished first
    for mine, theirs in zip(local, cluster):
        assert theirs["status"] == mine["status"] == "ok"
        for column in ("fixed", "moving", "verdict", "metric", "engine", "preset"):
            assert theirs[column] == mine[column], column
    for name, truth in truths.items():
        found = sitk.ReadTransform(str(there / name / "transform.tfm"))
        assert tre_mm(found, truth.truth, truth.brain_points).mean() < 2.0


def test_a_bad_pair_is_one_failed_row_and_the_others_finish(client, tmp_path) -> None:
    pairs_file, _ = _write_pairs(tmp_path / "in", 2)
    good = read_pairs(pairs_file)
    bad = Pair(name="broken", fixed="case0_fixed.nrrd", moving="nowhere.nrrd", base=good[0].base)
    constant = tmp_path / "in" / "constant.nrrd"
    sitk.WriteImage(sitk.Image(20, 20, 20, sitk.sitkInt16) + 5, str(constant))
    flat = Pair(name="flat", fixed="case0_fixed.nrrd", moving=str(constant), base=good[0].base)
    out = tmp_path / "out"
    register_batch([good[0], bad, flat, good[1]], out, options=OPTIONS, client=client, show_progress=False)
    rows = {r["name"]: r for r in _summary(out)}
    assert list(rows) == ["case0", "broken", "flat", "case1"]
    assert rows["case0"]["status"] == rows["case1"]["status"] == "ok"
    assert rows["broken"]["status"] == "error" and "moving image file does not exist" in rows["broken"]["error"]
    assert rows["flat"]["status"] == "error" and "is constant" in rows["flat"]["error"]
    assert not (out / "broken").exists() and not (out / "flat").exists()


def test_a_resumed_batch_registers_only_what_is_missing(client, tmp_path) -> None:
    pairs_file, _ = _write_pairs(tmp_path / "in", 3)
    pairs = read_pairs(pairs_file)
    out = tmp_path / "out"
    register_batch(pairs, out, options=OPTIONS, client=client, show_progress=False)
    stamps = {p.name: (out / p.name / "transform.tfm").stat().st_mtime_ns for p in pairs}
    # An interrupted run: one pair's outputs never got written, another's are half there.
    for leftover in (out / "case1").iterdir():
        leftover.unlink()
    (out / "case1").rmdir()
    (out / "case2" / "registered.nrrd").unlink()
    again = register_batch(pairs, out, options=OPTIONS, client=client, show_progress=False)
    assert [o.skipped for o in again] == [True, False, False]
    assert (out / "case0" / "transform.tfm").stat().st_mtime_ns == stamps["case0"]
    assert (out / "case2" / "registered.nrrd").is_file()
    assert [r["status"] for r in _summary(out)] == ["ok", "ok", "ok"]
    assert _summary(out)[0]["verdict"] == "good"  # a kept pair's row comes from its report
    # Other input files are another pair: registered again, not kept.
    moved = [Pair(name="case0", fixed=pairs[0].fixed, moving=pairs[1].moving, base=pairs[0].base)]
    assert not register_batch(moved, out, options=OPTIONS, client=client, show_progress=False)[0].skipped
    forced = register_batch(pairs[2:], out, options=OPTIONS, force=True, client=client, show_progress=False)
    assert not forced[0].skipped


def _batch_of_three_in_background(client: distributed.Client, folder: Path
                                  ) -> tuple[threading.Thread, dict[str, object], Path]:
    """Three pairs registering on ``client`` in a background thread; returns it, its result box and DIR."""
    # coarser pairs would finish before a kill lands: these take elastix a few seconds each
    pairs = read_pairs(_write_pairs(folder / "in", 3, coarsen=3.0)[0])
    out = folder / "out"
    client.wait_for_workers(2, timeout=120)
    thread, box = _in_background(lambda: register_batch(pairs, out, options=OPTIONS, client=client,
                                                        show_progress=False))
    return thread, box, out


def test_a_worker_killed_mid_pair_is_replaced_and_the_pair_retried(client, tmp_path) -> None:
    thread, box, out = _batch_of_three_in_background(client, tmp_path)
    address, pid, engine = _wait_for(lambda: _running_engine(client, "-case0-"), "case0's engine to run on a worker")
    work = Path(engine.cwd())  # the engine runs in its work folder
    assert work.name.startswith("oneclickreg-elastix-"), work
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in box, box
    outcomes = box["value"]
    assert not alive(pid)
    # the killed worker's engine died with it, and the retry's run removed the folder it left
    if shutil.which("setpriv"):
        assert not alive(engine.pid)
        assert not work.exists(), sorted(p.name for p in work.iterdir())
    assert [o.row["status"] for o in outcomes] == ["ok", "ok", "ok"], [o.row for o in outcomes]
    assert outcomes[0].where != address  # the retry ran on another (or a restarted) worker
    assert [r["status"] for r in _summary(out)] == ["ok", "ok", "ok"]


def test_a_pair_whose_worker_dies_twice_is_failed_and_the_others_finish(client, tmp_path) -> None:
    thread, box, out = _batch_of_three_in_background(client, tmp_path)
    killed: list[tuple[str, int]] = []
    for attempt in ("first", "second"):
        found = _wait_for(lambda: ((running := _running_engine(client, "-case1-")) and running[0] not in
                                   [k[0] for k in killed] and running) or (killed and not thread.is_alive()),
                          f"case1's {attempt} attempt to run")
        if found is True:
            # The batch ended before the retry was seen: LocalCluster sometimes closes the nanny it has
            # just restarted, and the retry's worker goes with it (a second death all the same).
            break
        address, pid, _ = found
        os.kill(pid, signal.SIGKILL)
        killed.append((address, pid))
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in box, box
    rows = _summary(out)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert "died 2 times" in rows[1]["error"]
    assert not (out / "case1" / "transform.tfm").exists()


@pytest.fixture
def scheduler_and_worker(tmp_path) -> Iterator[str]:
    """A real ``dask scheduler`` and ``dask worker`` as processes on 127.0.0.1; yields the address."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([CORE, HERE, os.environ.get("PYTHONPATH", "")]),
           "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1", "DASK_TEMPORARY_DIRECTORY": str(tmp_path / "scratch")}
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    started = []
    try:
        started.append(subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=(logs / "scheduler.log").open("w")))
        started.append(subprocess.Popen(
            [sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
             "--nworkers", "2", "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=(logs / "worker.log").open("w")))
        with distributed.Client(address, timeout="60s") as probe:
            probe.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(started):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # dask's programs close their workers on SIGINT/SIGTERM
        for process in reversed(started):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_scheduler_and_workers_started_elsewhere(scheduler_and_worker, tmp_path, capsys) -> None:
    pairs_file, truths = _write_pairs(tmp_path / "in", 3)
    out = tmp_path / "out"
    code = cli_main(["batch", str(pairs_file), "-o", str(out), "--scheduler", scheduler_and_worker,
                     "--engine", "elastix", "--no-recover"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "3 of 3 pairs registered" in captured.out
    assert [r["status"] for r in _summary(out)] == ["ok", "ok", "ok"]
    for name, truth in truths.items():
        found = sitk.ReadTransform(str(out / name / "transform.tfm"))
        assert tre_mm(found, truth.truth, truth.brain_points).mean() < 2.0
    again = cli_main(["batch", str(pairs_file), "-o", str(out), "--scheduler", scheduler_and_worker, "--quiet"])
    assert again == 0 and "(3 complete before, kept" in capsys.readouterr().out


def test_no_scheduler_there_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    pairs_file, _ = _write_pairs(tmp_path / "in", 1)
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code = cli_main(["batch", str(pairs_file), "-o", str(tmp_path / "out"), "--scheduler",
                         f"tcp://127.0.0.1:{_free_port()}", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Cannot reach the Dask scheduler" in err, err


def test_ctrl_c_stops_the_cluster_s_engines_and_writes_the_summary(tmp_path) -> None:
    # A real command-line process on a local cluster, interrupted while two (stand-in) engines hang.
    program = write_stand_in(tmp_path / "bin", "elastix", "hang")
    pairs_file, _ = _write_pairs(tmp_path / "in", 3)
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "ONECLICK_ELASTIX": str(program), "TMPDIR": str(temp),
           "PYTHONPATH": os.pathsep.join([CORE, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "OneClickRegistrationLib.cli", "batch", str(pairs_file), "-o", str(out),
         "--workers", "2", "--engine", "elastix", "--no-recover"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # each hanging stand-in and its grandchild write a pid file: 4 files = two pairs running
        _wait_for(lambda: len(stand_in_pids(program)) >= 4, "two engines to start", timeout_s=180)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    _wait_for(lambda: not [pid for pid in stand_in_pids(program) if alive(pid)], "the engines to end", 10)
    assert leftovers(temp) == []
    statuses = sorted(r["status"] for r in _summary(out))
    assert statuses == ["interrupted", "interrupted", "not run"], statuses
    assert not any((out / f"case{i}" / "transform.tfm").exists() for i in range(3))
