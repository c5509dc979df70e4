"""``oneclick-register ... --progress-lines``: the events a parent program reads, from the real command line."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.progress_lines import ProgressLines, parse_event


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    pair = synthetic.make_pair("T1", "T2", rotation_deg=(0.0, 0.0, 8.0), translation_mm=(6.0, -4.0, 3.0),
                               coarsen=3.0, source="analytic")
    folder = tmp_path_factory.mktemp("pair")
    sitk.WriteImage(pair.fixed, str(folder / "T1.nrrd"))
    sitk.WriteImage(pair.moving, str(folder / "T2.nrrd"))
    return pair, folder / "T1.nrrd", folder / "T2.nrrd"


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "OneClickRegistrationLib.cli", *args], capture_output=True,
                          text=True, timeout=300, **kwargs)


def events(stdout: str) -> list[dict]:
    return [event for event in map(parse_event, stdout.splitlines()) if event is not None]


@pytest.mark.engine
def test_progress_then_done_and_the_initial_transform_is_the_start(pair_files, tmp_path):
    pair, fixed, moving = pair_files
    initial = tmp_path / "start.tfm"
    sitk.WriteTransform(pair.truth, str(initial))
    completed = cli(str(fixed), str(moving), "-o", str(tmp_path / "out"), "--engine", "simpleitk", "--no-recover",
                    "--progress-lines", "--initial-transform", str(initial))
    assert completed.returncode == 0, completed.stderr
    seen = events(completed.stdout)
    assert len(seen) == len(completed.stdout.splitlines())  # nothing but events on stdout
    progress = [e for e in seen if e["event"] == "progress"]
    assert len(progress) > 5 and [e["fraction"] for e in progress] == sorted(e["fraction"] for e in progress)
    assert seen[-1] == {"event": "done", "outdir": str(tmp_path / "out"), "verdict": "good"}
    found = sitk.ReadTransform(str(tmp_path / "out" / "transform.tfm"))
    # Started at the truth, the optimizer stays near it (the automatic start is ~10 mm away).
    assert synthetic.target_registration_error(found, pair.truth, pair.brain_points).max() < 3.0


def test_bad_input_is_an_error_event_with_the_error_class(pair_files, tmp_path):
    _, fixed, _ = pair_files
    completed = cli(str(fixed), str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "out"), "--progress-lines")
    assert completed.returncode == 2
    last = events(completed.stdout)[-1]
    assert last["event"] == "error" and last["error_type"] == "InputError" and "missing.nrrd" in last["message"]
    assert "missing.nrrd" in completed.stderr  # the one-line message for people is still there


@pytest.mark.engine
def test_sigint_is_a_cancel_event(pair_files, tmp_path):
    _, fixed, moving = pair_files
    process = subprocess.Popen([sys.executable, "-m", "OneClickRegistrationLib.cli", str(fixed), str(moving), "-o",
                                str(tmp_path / "out"), "--engine", "elastix", "--progress-lines"],
                               stdout=subprocess.PIPE, text=True)
    for line in process.stdout:  # wait until the engine runs
        event = parse_event(line)
        if event and event["event"] == "progress" and "elastix" in event["stage"]:
            break
    process.send_signal(signal.SIGINT)
    rest = process.stdout.read()
    assert process.wait(60) == 130
    assert events(rest)[-1]["error_type"] == "CancelledError"
    assert not (tmp_path / "out" / "transform.tfm").exists()


def test_repeated_progress_is_written_once_and_other_lines_are_not_events():
    stream = io.StringIO()
    lines = ProgressLines(stream)
    for _ in range(3):
        lines(0.5, "Registering")
    lines(0.75, "Registering")
    lines.error("disk full", error_type="EngineError")
    written = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [w["event"] for w in written] == ["progress", "progress", "error"]
    assert parse_event("Iteration 12: metric -0.3") is None
    assert parse_event('{"event": "other"}') is None and parse_event("{not json") is None
    assert parse_event(b'{"event": "done", "verdict": "good"}') == {"event": "done", "verdict": "good"}
    assert np.isclose(written[0]["fraction"], 0.5)
