"""A batch with bad pairs: the good ones complete, the bad ones are reported, the summary says which.
Interrupting the command line (Ctrl-C) stops the engine's whole process tree and loses nothing.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from robustness_support import (
    TINY_PAIR_TOLERANCE_MM,
    alive,
    engine_program,
    leftovers,
    private_tempdir,
    stand_in_pids,
    tiny_pair,
    tre_mm,
    write_stand_in,
)

from OneClickRegistrationLib.cli import main as cli_main


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


# How long to wait for an event (a process ending) before calling it lost; a passing run never waits it out.
DEADLINE_S = 120.0


@pytest.fixture
def pair_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in put"
    folder.mkdir()
    pair = tiny_pair()
    sitk.WriteImage(pair.fixed, str(folder / "fixed T1.nrrd"))
    sitk.WriteImage(pair.moving, str(folder / "moving T1.nrrd"))
    (folder / "notes.nii").write_text("not an image", encoding="utf-8")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 30), np.float32)), str(folder / "slice.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((20, 20, 20), 5, np.int16)), str(folder / "constant.nrrd"))
    sitk.WriteImage(sitk.JoinSeries([pair.moving, pair.moving]), str(folder / "series.nii.gz"))
    return folder


@pytest.mark.engine
def test_batch_completes_the_good_pairs_and_reports_each_bad_one(pair_folder, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("ONECLICK_BRAINSFIT", raising=False)  # the "no engine" row needs BRAINSFit absent
    pairs = pair_folder / "pairs.csv"
    rows = [
        ("good", "fixed T1.nrrd", "moving T1.nrrd", ""),
        ("missing", "fixed T1.nrrd", "nowhere.nrrd", ""),
        ("not an image", "fixed T1.nrrd", "notes.nii", ""),
        ("2D", "slice.nrrd", "moving T1.nrrd", ""),
        ("constant", "fixed T1.nrrd", "constant.nrrd", ""),
        ("4D", "fixed T1.nrrd", "series.nii.gz", ""),
        ("no engine", "fixed T1.nrrd", "moving T1.nrrd", "brainsfit"),
        ("no moving", "fixed T1.nrrd", "", ""),
    ]
    with pairs.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "fixed", "moving", "engine"])
        writer.writerows(rows)
    out = tmp_path / "batch out"
    # BRAINSFit pointed at a program that does not exist: "no engine" wherever BRAINSFit is installed.
    with private_tempdir(tmp_path / "tmp") as root, engine_program("brainsfit", tmp_path / "no-BRAINSFit"):
        code = cli_main(["batch", str(pairs), "-o", str(out), "--engine", "elastix", "--no-recover", "--quiet"])
        assert leftovers(root) == []
    captured = capsys.readouterr()
    assert code == 1  # some pairs failed
    assert "Traceback" not in captured.err
    summary = _rows(out / "summary.csv")
    assert list(summary) == ["good", "missing", "not_an_image", "2D", "constant", "4D", "no_engine", "no_moving"]
    assert summary["good"]["status"] == "ok" and summary["good"]["verdict"] == "good"
    pair = tiny_pair()
    found = sitk.ReadTransform(str(out / "good" / "transform.tfm"))
    assert tre_mm(found, pair.truth, pair.brain_points).mean() < TINY_PAIR_TOLERANCE_MM["elastix"]
    expected = {
        "missing": "moving image file does not exist",
        "not_an_image": "Cannot read the moving image file",
        "2D": "must be a 3D volume; received a 2D",
        "constant": "is constant (every voxel is 5)",
        "4D": "4D image with 2 volumes",
        "no_engine": "The brainsfit engine was requested but is not available",
        "no_moving": "Row 9 of the pairs file has no moving image path",
    }
    for name, words in expected.items():
        assert summary[name]["status"] == "error" and words in summary[name]["error"], summary[name]
        assert not (out / name).exists()  # a failed pair leaves no output folder behind
        assert f"{name} FAILED: " in captured.err
    assert "1 of 8 pairs registered; failed: missing, not_an_image, 2D, constant, 4D, no_engine, no_moving" in (
        captured.out)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "has no rows"),
    (b"fixed,other\na.nrrd,b.nrrd\n", "lacks the column(s) ['moving']"),
    ("fixed,moving\nt\xe9te.nrrd,b.nrrd\n".encode("latin-1"), "is not UTF-8 text"),
])
def test_unusable_pairs_file_is_one_line_and_exit_2(content, message, tmp_path, capsys) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes(content)
    code = cli_main(["batch", str(pairs), "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process")
def test_ctrl_c_during_the_engine_stops_everything_and_writes_the_summary(pair_folder, tmp_path) -> None:
    # A real command-line process, interrupted for real while its (stand-in) engine hangs.
    program = write_stand_in(tmp_path / "bin", "elastix", "hang")
    pairs = pair_folder / "pairs.csv"
    pairs.write_text("name,fixed,moving\nfirst,fixed T1.nrrd,moving T1.nrrd\nsecond,fixed T1.nrrd,moving T1.nrrd\n",
                     encoding="utf-8")
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "ONECLICK_ELASTIX": str(program), "TMPDIR": str(temp)}
    process = subprocess.Popen(
        [sys.executable, "-m", "OneClickRegistrationLib.cli", "batch", str(pairs), "-o", str(out), "--engine",
         "elastix", "--no-recover", "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(stand_in_pids(program)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stand_in_pids(program), "the engine never started"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=DEADLINE_S)  # generous: a loaded machine is slow to clean up
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    deadline = time.monotonic() + DEADLINE_S
    while any(alive(pid) for pid in stand_in_pids(program)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in stand_in_pids(program) if alive(pid)]
    assert leftovers(temp) == []
    summary = _rows(out / "summary.csv")
    assert summary["first"]["status"] == "interrupted" and summary["second"]["status"] == "not run"
    assert not (out / "first").exists()


@pytest.mark.engine
def test_a_second_run_keeps_complete_pairs_and_force_registers_them_again(pair_folder, tmp_path, capsys) -> None:
    pairs = pair_folder / "pairs.csv"
    pairs.write_text("name,fixed,moving\nfirst,fixed T1.nrrd,moving T1.nrrd\nsecond,fixed T1.nrrd,moving T1.nrrd\n",
                     encoding="utf-8")
    out = tmp_path / "out"
    command = ["batch", str(pairs), "-o", str(out), "--engine", "elastix", "--no-recover", "--quiet"]
    assert cli_main(command) == 0
    first = _rows(out / "summary.csv")
    stamp = (out / "first" / "transform.tfm").stat().st_mtime_ns
    (out / "second" / "report.json").unlink()  # as if the run had been stopped before this pair was complete
    capsys.readouterr()
    assert cli_main(command) == 0
    assert "2 of 2 pairs registered (1 complete before, kept" in capsys.readouterr().out
    assert (out / "first" / "transform.tfm").stat().st_mtime_ns == stamp
    assert (out / "second" / "report.json").is_file()
    again = _rows(out / "summary.csv")
    for column in ("status", "verdict", "metric", "score_after", "engine", "preset", "elapsed_s"):
        assert again["first"][column] == first["first"][column], column  # the kept pair's row, from its report
    assert cli_main([*command, "--force"]) == 0
    assert (out / "first" / "transform.tfm").stat().st_mtime_ns != stamp
    assert "complete before" not in capsys.readouterr().out
