"""The Slicer batch script (Resources/Scripts/batch_register_folder.py), run outside Slicer.

The script is the core batch (``oneclick-register batch``) on the cases of a folder; inside Slicer
it only adds Slicer's bundled engines. Exercised here: finding the cases, registering, the same
summary CSV as the command line, per-case errors and the exit status. The saved transform is
checked against the ground truth in millimetres.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import SimpleITK as sitk

pytest.importorskip("slicer")
pytest.importorskip("OneClickRegistrationLib.pipeline")

from OneClickRegistrationLib import synthetic

pytestmark = pytest.mark.slicer

SCRIPT = Path(__file__).resolve().parents[2] / "Resources" / "Scripts" / "batch_register_folder.py"


@pytest.fixture(scope="module")
def batch():
    spec = importlib.util.spec_from_file_location("batch_register_folder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pair() -> synthetic.SyntheticPair:
    return synthetic.make_pair("T1", "T2", rotation_deg=(0.0, 5.0, -8.0), translation_mm=(-6.0, 4.0, 5.0),
                               coarsen=3.0, source="analytic", seed=4)


@pytest.fixture
def cases(tmp_path, pair) -> Path:
    root = tmp_path / "in put"
    good = root / "case01"
    good.mkdir(parents=True)
    sitk.WriteImage(pair.fixed, str(good / "fixed_T1w.nrrd"))  # the modality word feeds detection
    sitk.WriteImage(pair.moving, str(good / "moving_T2w.nii.gz"))
    (root / "case02").mkdir()
    sitk.WriteImage(pair.fixed, str(root / "case02" / "fixed.nrrd"))  # no moving volume
    broken = root / "case03"
    broken.mkdir()
    sitk.WriteImage(pair.fixed, str(broken / "fixed.nrrd"))
    (broken / "moving.nrrd").write_text("not an image", encoding="utf-8")
    return root


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


@pytest.mark.engine
def test_folder_of_pairs_gives_transforms_and_a_csv(batch, cases, pair, tmp_path):
    out = tmp_path / "out"
    status = batch.main(["--", str(cases), str(out), "--engine", "simpleitk"])
    assert status == 1  # one case registered, two reported as failed
    rows = read_rows(out / "summary.csv")
    assert list(rows) == ["case01", "case02", "case03"]
    good = rows["case01"]
    assert good["status"] == "ok" and good["engine"] == "simpleitk" and good["verdict"] == "good"
    transform = sitk.ReadTransform(str(out / "case01" / "transform.tfm"))
    error = synthetic.target_registration_error(transform, pair.truth, pair.brain_points)
    assert error.mean() < 1.5 and error.max() < 3.0
    report = json.loads((out / "case01" / "report.json").read_text(encoding="utf-8"))
    assert report["verdict"] == "good"
    assert (report["fixed_modality"], report["moving_modality"]) == ("T1", "T2")
    assert rows["case02"]["status"] == "error" and "has no moving image path" in rows["case02"]["error"]
    assert rows["case03"]["status"] == "error" and "Cannot read" in rows["case03"]["error"]


def test_pairs_csv_and_usage_errors(batch, cases, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("name,fixed,moving\nonly,in put/case02/fixed.nrrd,in put/case02/missing.nrrd\n",
                     encoding="utf-8")
    out = tmp_path / "out"
    assert batch.main([str(cases), str(out), "--pairs", str(pairs)]) == 1
    assert read_rows(out / "summary.csv")["only"]["status"] == "error"
    assert batch.main(["--help"]) == 0
    assert batch.main([str(cases)]) == 2  # OUTPUT missing
    empty = tmp_path / "empty"
    empty.mkdir()
    assert batch.main([str(empty), str(out)]) == 2


@pytest.mark.engine
def test_the_cases_run_on_a_local_cluster_with_the_same_summary(batch, cases, pair, tmp_path):
    pytest.importorskip("distributed")
    here, there = tmp_path / "here", tmp_path / "there"
    assert batch.main([str(cases), str(here), "--engine", "simpleitk"]) == 1
    assert batch.main([str(cases), str(there), "--engine", "simpleitk", "--workers", "2", "--threads", "1"]) == 1
    in_process, on_cluster = read_rows(here / "summary.csv"), read_rows(there / "summary.csv")
    assert list(on_cluster) == list(in_process) == ["case01", "case02", "case03"]
    for name, row in on_cluster.items():
        assert (row["status"], row["verdict"], row["engine"]) == (
            in_process[name]["status"], in_process[name]["verdict"], in_process[name]["engine"]), name
    transform = sitk.ReadTransform(str(there / "case01" / "transform.tfm"))
    assert synthetic.target_registration_error(transform, pair.truth, pair.brain_points).max() < 3.0


def test_cluster_usage_errors_are_one_line_and_exit_2(batch, cases, tmp_path, capsys):
    pytest.importorskip("distributed")
    out = tmp_path / "out"
    assert batch.main([str(cases), str(out), "--workers", "0"]) == 2
    assert "at least 1; received 0" in capsys.readouterr().err
    assert batch.main([str(cases), str(out), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert batch.main([str(cases), str(out), "--threads", "0"]) == 2
    assert "threads must be a whole number of at least 1" in capsys.readouterr().err
