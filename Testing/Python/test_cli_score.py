"""``oneclick-register score``: JSON on success, exit 2 with one line and no traceback on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import cli, cli_score, metrics


def smooth(shape, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(rng.normal(size=shape)), 1.5)
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("score")
    f = np.round(smooth((20, 22, 24), 1) * 500).astype(np.int16)
    m = np.round((smooth((20, 22, 24), 2) + f / 500.0) * 400 - 1024).astype(np.int16)
    fixed = sitk.GetImageFromArray(f)
    fixed.SetSpacing((1.0, 1.2, 1.5))
    moving = sitk.GetImageFromArray(m)
    moving.SetSpacing((1.0, 1.2, 1.5))
    mask = sitk.GetImageFromArray((np.abs(f) > 50).astype(np.uint8))
    mask.CopyInformation(fixed)
    paths = {name: folder / f"{name}.nrrd" for name in ("fixed", "moving", "mask", "flat", "wrong_grid_mask")}
    sitk.WriteImage(fixed, str(paths["fixed"]))
    sitk.WriteImage(moving, str(paths["moving"]))
    sitk.WriteImage(mask, str(paths["mask"]))
    sitk.WriteImage(sitk.Image([16, 16], sitk.sitkInt16), str(paths["flat"]))
    sitk.WriteImage(sitk.Image([5, 5, 5], sitk.sitkUInt8), str(paths["wrong_grid_mask"]))
    paths["transform"] = folder / "shift.tfm"
    sitk.WriteTransform(sitk.Euler3DTransform((12.0, 13.0, 15.0), 0.05, 0.0, 0.1, (2.0, -1.0, 3.0)),
                        str(paths["transform"]))
    paths["far"] = folder / "far.tfm"
    sitk.WriteTransform(sitk.TranslationTransform(3, (500.0, 0.0, 0.0)), str(paths["far"]))
    paths["not_an_image"] = folder / "garbage.nrrd"
    paths["not_an_image"].write_text("this is not an image\n")
    return paths


def run_main(capsys, *args: object) -> tuple[int, str, str]:
    code = cli.main(["score", *[str(a) for a in args]])
    out, err = capsys.readouterr()
    return code, out, err


def test_prints_the_score_as_json(capsys, files):
    code, out, err = run_main(capsys, files["fixed"], files["moving"], "--transform", files["transform"],
                              "--metric", "nmi", "--fixed-mask", files["mask"])
    assert code == 0 and err == ""
    data = json.loads(out)
    expected = metrics.score(sitk.ReadImage(str(files["fixed"])), sitk.ReadImage(str(files["moving"])),
                             transform=sitk.ReadTransform(str(files["transform"])), metric="nmi",
                             fixed_mask=sitk.ReadImage(str(files["mask"])))
    assert data["metric"] == "nmi" and data["status"] == "ok"
    assert data["value"] == expected.value
    assert data["overlap_voxels"] == expected.overlap_voxels
    assert data["overlap_fraction"] == expected.overlap_fraction
    assert data["fixed_mask"] == str(files["mask"]) and data["transform"] == str(files["transform"])


def test_default_metric_is_ncc_and_auto_mask_is_reported(capsys, files):
    code, out, _ = run_main(capsys, files["fixed"], files["moving"], "--auto-mask")
    data = json.loads(out)
    assert code == 0
    assert data["metric"] == "ncc" and -1.0 <= data["value"] <= 1.0
    assert data["fixed_mask"] == "auto" and data["moving_mask"] == "auto"
    assert data["fixed_domain_voxels"] < 20 * 22 * 24


def test_degenerate_overlap_is_an_answer_not_a_failure(capsys, files):
    code, out, _ = run_main(capsys, files["fixed"], files["moving"], "--transform", files["far"])
    data = json.loads(out)
    assert code == 0
    assert data["status"] == "empty_overlap" and data["value"] is None and data["overlap_voxels"] == 0


@pytest.mark.parametrize(("arguments", "words"), [
    (["{fixed}", "{missing}"], "moving image file does not exist"),
    (["{not_an_image}", "{moving}"], "Cannot read the fixed image file"),
    (["{fixed}", "{flat}"], "must be a 3D volume"),
    (["{fixed}", "{moving}", "--fixed-mask", "{wrong_grid_mask}"], "fixed mask must lie on the fixed image"),
    (["{fixed}", "{moving}", "--moving-mask", "{wrong_grid_mask}"],
     "moving mask must lie on the moving image"),
    (["{fixed}", "{moving}", "--transform", "{missing}"], "transform file does not exist"),
    (["{fixed}", "{moving}", "--transform", "{moving}"], "as an ITK transform"),
    (["{fixed}", "{moving}", "--bins", "1"], "bins must be between"),
    (["{fixed}", "{moving}", "--metric", "cc"], "invalid choice"),
    (["{fixed}"], "required: MOVING"),
], ids=["missing", "unreadable", "2d", "fixed-mask-grid", "moving-mask-grid", "missing-transform",
        "bad-transform", "bins", "metric", "argument"])
def test_bad_input_exits_2_with_one_line(capsys, files, arguments, words):
    names = {**{k: str(v) for k, v in files.items()}, "missing": str(files["fixed"].parent / "nope.nii.gz")}
    try:
        code, out, err = run_main(capsys, *[a.format(**names) for a in arguments])
    except SystemExit as exc:  # argparse's own errors leave through SystemExit
        code = exc.code
        out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("oneclick-register score: error:")
    assert words in err
    assert "Traceback" not in err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        cli_score.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--transform", "--metric", "--fixed-mask", "--moving-mask", "--auto-mask"):
        assert option in text


def test_parser_has_the_verdict_options():
    parser = cli_score.build_parser()
    args = parser.parse_args(["a.nii", "b.nii", "--verdict", "--metric", "mi", "--moving-modality", "ct"])
    assert args.verdict and args.metric == "mi" and args.fixed == "a.nii" and args.moving_modality == "CT"


def test_module_entry_point_in_a_subprocess(files):
    done = subprocess.run(
        [sys.executable, "-m", "OneClickRegistrationLib.cli", "score", str(files["fixed"]),
         str(files["moving"]), "--transform", str(files["transform"]), "--metric", "mi"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["metric"] == "mi" and data["status"] == "ok" and data["value"] > 0.0


def test_subprocess_failure_has_no_traceback(files):
    done = subprocess.run(
        [sys.executable, "-m", "OneClickRegistrationLib.cli", "score", str(files["fixed"]),
         str(files["flat"])],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "3D volume" in done.stderr and "Traceback" not in done.stderr


def test_closed_output_pipe_is_not_a_traceback(files):
    # A pipe whose reader is already gone, as with "| head -1" once head has its line.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "OneClickRegistrationLib.cli", "score", str(files["fixed"]),
             str(files["moving"])],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 0
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
