"""Bad inputs at every entry point: a clear error naming what was expected and what was received,
and nothing changed — inputs, files, output folders, temporary folders, the Slicer scene.

Entry points: the core API (``register``, ``judge_transform``, ``metrics.score``), the command line
(``oneclick-register`` and its ``score`` sub-command, run in-process through ``cli.main``), and the
Slicer glue (``registerNodes`` on real MRML nodes from the ``slicer-core`` wheel).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from robustness_support import TINY_PAIR_TOLERANCE_MM, fingerprint, leftovers, private_tempdir, tiny_pair, tre_mm

from OneClickRegistrationLib import metrics
from OneClickRegistrationLib.cli import main as cli_main
from OneClickRegistrationLib.errors import InputError, OneClickError
from OneClickRegistrationLib.images import read_image
from OneClickRegistrationLib.pipeline import judge_transform, register


@pytest.fixture(autouse=True)
def temp_root(tmp_path: Path):
    """Every engine work folder goes to a private folder, which must be empty again afterwards."""
    with private_tempdir(tmp_path / "engine-tmp") as root:
        yield root
    assert leftovers(root) == []


def _volume(values: np.ndarray, spacing=(6.0, 6.0, 6.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    return image


def _good() -> sitk.Image:
    return tiny_pair().moving


def _float_copy(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float32)


# Bad images that can exist in memory: name -> (builder, regex the message must match). Each regex
# names what was expected and what was received.
IMAGES: dict[str, tuple[Callable[[], sitk.Image], str]] = {
    "2D": (lambda: sitk.GetImageFromArray(np.arange(400, dtype=np.float32).reshape(20, 20)),
           r"must be a 3D volume; received a 2D .*size 20x20"),
    "4D": (lambda: sitk.JoinSeries([_volume(np.random.default_rng(i).random((8, 9, 10), np.float32))
                                    for i in range(3)]),
           r"4D image with 3 volumes; expected a 3D volume"),
    "vector-RGB": (lambda: sitk.GetImageFromArray(np.zeros((8, 9, 10, 3), np.uint8), isVector=True),
                   r"must be a scalar \(grey-level\) 3D volume; received a vector/RGB image with 3 components"),
    "empty": (lambda: sitk.Image([0, 9, 10], sitk.sitkFloat32), r"is empty \(0 voxels\).*size 0x9x10"),
    "constant": (lambda: _volume(np.full((20, 20, 20), 7, np.int16)),
                 r"is constant \(every voxel is 7\); a registration needs intensity structure"),
    "all-NaN": (lambda: _volume(np.full((20, 20, 20), np.nan, np.float32)),
                r"has no finite voxel \(all NaN or Inf\)"),
    "all-Inf": (lambda: _volume(np.full((20, 20, 20), np.inf, np.float64)),
                r"has no finite voxel \(all NaN or Inf\)"),
    "NaN-and-one-value": (lambda: _volume(np.where(np.eye(20, dtype=bool)[None], 3.0, np.nan).astype(np.float32)
                                          * np.ones((20, 1, 1), np.float32)),
                          r"is constant \(every voxel is 3\.0\)"),
    "one-slice": (lambda: _volume(np.random.default_rng(1).random((1, 40, 40), np.float32)),
                  r"too small to register: at least 4 voxels per axis.*size 40x40x1"),
    "tiny-for-the-pyramid": (lambda: _volume(np.random.default_rng(2).random((10, 10, 10), np.float32),
                                             spacing=(1.0, 1.0, 1.0)),
                             r"too small for the registration pyramid.*coarsest level.*2x2x2 voxels.*"
                             r"at least 4 per axis.*received 10x10x10"),
    "fewer-voxels-than-a-score-needs": (lambda: _volume(np.random.default_rng(3).random((4, 5, 4), np.float32),
                                                        spacing=(20.0, 20.0, 20.0)),
                                        r"too small .*80 voxels.*at least 100"),
}
# What judging or scoring needs is less than what registering needs: the pyramid is not involved.
REGISTER_ONLY = {"tiny-for-the-pyramid", "fewer-voxels-than-a-score-needs"}
# metrics.score accepts any non-empty scalar 3D image: degenerate content is a status, not an error.
SCORE_REFUSES = {"2D", "4D", "vector-RGB", "empty"}


@pytest.mark.parametrize("case", IMAGES, ids=IMAGES)
def test_core_api_refuses_bad_images_and_changes_nothing(case: str) -> None:
    build, pattern = IMAGES[case]
    bad, good = build(), _good()
    before = (fingerprint(bad), fingerprint(good))
    for role, (fixed, moving) in (("fixed image", (bad, good)), ("moving image", (good, bad))):
        with pytest.raises(InputError, match=f"The {role}.*" + pattern):
            register(fixed, moving, engine="elastix", recover=False)
        if case not in REGISTER_ONLY:
            with pytest.raises(InputError, match=f"The {role}.*" + pattern):
                judge_transform(fixed, moving, sitk.Euler3DTransform())
        if case in SCORE_REFUSES:
            with pytest.raises(InputError, match=f"The {role}.*"):
                metrics.score(fixed, moving)
        else:  # anything scalar and 3D gets an answer; degenerate content is a status with a reason
            result = metrics.score(fixed, moving)
            assert result.message and (result.value is not None) == result.ok
            if case in ("constant", "all-NaN", "all-Inf", "NaN-and-one-value"):
                assert result.status in ("zero_variance", "empty_overlap"), result
    assert (fingerprint(bad), fingerprint(good)) == before


def test_score_of_a_constant_image_is_an_answer_not_an_error() -> None:
    constant = _volume(np.full((20, 20, 20), 7, np.int16))
    result = metrics.score(constant, constant)
    assert result.status == "zero_variance" and "constant" in result.message


# ---------------------------------------------------------------------------------------------------
# Files: the command line and read_image


def _write_bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, regex of the message) for every kind of bad file."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[Path, str]] = {}
    good = sitk.GetImageFromArray(np.random.default_rng(0).random((10, 10, 10)).astype(np.float32))
    raw = folder / "full.nrrd"
    sitk.WriteImage(good, str(raw), False)
    data = raw.read_bytes()
    truncated = folder / "truncated.nrrd"
    truncated.write_bytes(data[: len(data) // 2])
    files["missing"] = (folder / "no such file.nrrd", r"file does not exist: '.*no such file\.nrrd'")
    files["truncated (unreadable)"] = (truncated, r"Cannot read the .* file '.*truncated\.nrrd' as an image "
                                                   r"\(expected NRRD, NIfTI, MHA.*\): .*fread got only")
    text = folder / "notes.nii"
    text.write_text("this is not an image\n", encoding="utf-8")
    files["non-image"] = (text, r"Cannot read the .* file '.*notes\.nii' as an image \(expected NRRD, NIfTI")
    zero = folder / "zero bytes.nrrd"
    zero.write_bytes(b"")
    files["0-byte file"] = (zero, r"Cannot read the .* file '.*zero bytes\.nrrd' as an image")
    empty = folder / "empty.nrrd"
    empty.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 5 5 0\nencoding: raw\nendian: little\n\n",
                     encoding="ascii")
    files["0-voxel NRRD"] = (empty, r"Cannot read the .* file '.*empty\.nrrd' as an image.*size is zero")
    sub = folder / "a folder.nrrd"
    sub.mkdir()
    files["folder"] = (sub, r"path is a folder, expected an image file")
    for name, (build, pattern) in IMAGES.items():
        if name in ("empty",):  # ITK cannot write a 0-voxel image; the 0-voxel NRRD above stands for it
            continue
        path = folder / f"{name}.nrrd"
        sitk.WriteImage(build(), str(path))
        files[name] = (path, pattern)
    return files


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return _write_bad_files(tmp_path_factory.mktemp("bad inputs"))


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good T1.nrrd"
    sitk.WriteImage(_good(), str(path))
    return path


BAD_FILE_NAMES = ["missing", "truncated (unreadable)", "non-image", "0-byte file", "0-voxel NRRD", "folder",
                  *[n for n in IMAGES if n != "empty"]]


def _snapshot(paths: list[Path]) -> dict[str, bytes | None]:
    return {str(p): (p.read_bytes() if p.is_file() else None) for p in paths}


@pytest.mark.parametrize("case", BAD_FILE_NAMES)
def test_command_line_refuses_bad_files_in_one_line_and_writes_nothing(case, bad_files, good_file, tmp_path,
                                                                       capsys) -> None:
    path, pattern = bad_files[case]
    inputs = _snapshot([path, good_file])
    for fixed, moving, role in ((path, good_file, "fixed"), (good_file, path, "moving")):
        out = tmp_path / f"out-{role}"
        code = cli_main([str(fixed), str(moving), "-o", str(out), "--engine", "elastix", "--no-recover", "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("oneclick-register: error: ")
        assert f"{role} image" in err
        assert re.search(pattern, err), err
        assert not out.exists()  # nothing written, not even the folder
    if case not in REGISTER_ONLY:
        code = cli_main(["score", str(path), str(good_file)])
        err = capsys.readouterr().err
        if case in SCORE_REFUSES or case not in IMAGES:
            assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        else:  # a degenerate image is scored: the JSON says why there is no value
            assert code == 0
    assert _snapshot([path, good_file]) == inputs


def test_permission_denied_is_an_input_error(tmp_path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file: a permission error cannot be caused here")
    locked = tmp_path / "locked.nrrd"
    sitk.WriteImage(_good(), str(locked))
    locked.chmod(0)
    with pytest.raises(InputError, match="Cannot read the fixed image file"):
        read_image(locked, role="fixed image")


# ---------------------------------------------------------------------------------------------------
# 4D files: the error names the number of volumes; an explicit index is accepted


@pytest.fixture(scope="module")
def four_d(tmp_path_factory) -> tuple[Path, list[sitk.Image]]:
    pair = tiny_pair()
    volumes = [pair.moving, sitk.Cast(sitk.Multiply(pair.moving, 2), pair.moving.GetPixelID()), pair.moving]
    path = tmp_path_factory.mktemp("4d") / "series 4D.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(volumes), str(path))
    return path, volumes


def test_4d_file_error_names_the_volume_count_and_the_option(four_d, good_file, tmp_path, capsys) -> None:
    path, _ = four_d
    with pytest.raises(InputError, match=r"4D image with 3 volumes; expected a 3D volume\. Choose one with "
                                         r"volume_index \(0\.\.2\)"):
        read_image(path, role="moving image")
    code = cli_main([str(good_file), str(path), "-o", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "3 volumes" in err and "--moving-volume-index (0..2)" in err, err
    code = cli_main([str(good_file), str(path), "-o", str(tmp_path / "o"), "--moving-volume-index", "7"])
    err = capsys.readouterr().err
    assert code == 2 and "--moving-volume-index 7 is out of range" in err and "3 volumes (0..2)" in err, err
    code = cli_main([str(path), str(good_file), "-o", str(tmp_path / "o"), "--fixed-volume-index", "0",
                     "--moving-volume-index", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--moving-volume-index 1 was given but the moving image file is not 4D" in err, err
    assert not (tmp_path / "o").exists()


def test_4d_volume_index_selects_that_volume(four_d) -> None:
    path, volumes = four_d
    for index in (0, 1):
        chosen = read_image(path, role="moving image", volume_index=index)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(chosen), sitk.GetArrayFromImage(volumes[index]))
        np.testing.assert_allclose(chosen.GetOrigin(), volumes[index].GetOrigin(), atol=1e-3)


@pytest.mark.engine
def test_4d_volume_index_on_the_command_line_registers(four_d, tmp_path, capsys) -> None:
    path, _ = four_d
    pair = tiny_pair()
    fixed = tmp_path / "fixed.nrrd"
    sitk.WriteImage(pair.fixed, str(fixed))
    out = tmp_path / "out"
    code = cli_main([str(fixed), str(path), "-o", str(out), "--moving-volume-index", "2", "--engine", "elastix",
                     "--no-recover", "--quiet", "--fixed-modality", "T1", "--moving-modality", "T1"])
    assert code == 0, capsys.readouterr().err
    errors = tre_mm(sitk.ReadTransform(str(out / "transform.tfm")), pair.truth, pair.brain_points)
    assert errors.mean() < TINY_PAIR_TOLERANCE_MM["elastix"], errors.mean()


# ---------------------------------------------------------------------------------------------------
# NaN / Inf voxels: treated as background, and the registration still works


@pytest.mark.engine
def test_nan_and_inf_voxels_are_background_and_registration_still_works() -> None:
    pair = tiny_pair()
    rng = np.random.default_rng(11)
    images = []
    for image in (pair.fixed, pair.moving):
        values = _float_copy(image)
        bad = rng.random(values.shape) < 0.02  # 2% of the voxels, inside the head too
        values[bad] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), size=int(bad.sum()))
        copy = sitk.GetImageFromArray(values)
        copy.CopyInformation(image)
        images.append(copy)
    fixed, moving = images
    before = (fingerprint(fixed), fingerprint(moving))
    result = register(fixed, moving, engine="elastix", recover=False, fixed_modality="T1", moving_modality="T1")
    errors = tre_mm(result.transform, pair.truth, pair.brain_points)
    assert errors.mean() < TINY_PAIR_TOLERANCE_MM["elastix"], errors.mean()
    assert any("NaN/Inf voxels; they were treated as background" in note for note in result.notes)
    assert result.score_after.ok and np.isfinite(result.score_after.value)
    assert (fingerprint(fixed), fingerprint(moving)) == before


@pytest.mark.parametrize("ending", [".nii", ".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_voxels_survive_reading_every_format(ending, dtype, tmp_path) -> None:
    # ITK's NIfTI reader turns NaN and Inf into 0 (for CT that is water, not background); read_image
    # puts them back, so preparation can treat them as background.
    values = np.random.default_rng(4).normal(size=(6, 7, 8)).astype(dtype)
    values[0, 0, 0], values[3, 4, 5], values[5, 6, 7] = np.nan, np.inf, -np.inf
    path = tmp_path / f"with nan{ending}"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    back = sitk.GetArrayFromImage(read_image(path, role="moving image"))
    np.testing.assert_array_equal(back, values)  # NaN where NaN was, +/-Inf where they were


def test_a_nii_beside_a_nii_gz_does_not_replace_its_voxels(tmp_path) -> None:
    # Asked for "x.nii.gz", ITK reads the voxels of "x.nii" when both exist (SimpleITK 2.5).
    wanted = np.full((4, 5, 6), 1.0, np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(wanted), str(tmp_path / "x.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((9, 5, 6), 2.0, np.float32)), str(tmp_path / "x.nii"))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "x.nii.gz"))).ravel()[0] == 2.0  # ITK's quirk
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(tmp_path / "x.nii.gz")), wanted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine-tmp", "x.nii", "x.nii.gz"]


# ---------------------------------------------------------------------------------------------------
# The Slicer glue: the same bad inputs as volume nodes leave the scene as it was


# (case, the node's content) for bad images a Slicer scalar volume node can hold.
NODE_CASES = ["constant", "all-NaN", "one-slice", "tiny-for-the-pyramid", "fewer-voxels-than-a-score-needs"]


@pytest.mark.slicer
@pytest.mark.parametrize("case", [*NODE_CASES, "no image data", "vector volume node"])
def test_slicer_glue_refuses_bad_nodes_and_leaves_the_scene_as_it_was(case) -> None:
    pytest.importorskip("slicer")
    import slicer as mrml

    from OneClickRegistrationSlicer import registration as glue

    scene = mrml.vtkMRMLScene()
    fixed = glue.addVolumeNodeFromImage(scene, tiny_pair().fixed, "fixed")
    if case == "no image data":
        bad = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "blank")
        pattern = r"'blank' has no image data"
    elif case == "vector volume node":
        import vtk

        bad = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
        data = vtk.vtkImageData()
        data.SetDimensions(20, 20, 20)
        data.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
        bad.SetAndObserveImageData(data)
        pattern = r"must be a scalar \(grey-level\) 3D volume; received a vector/RGB image with 3 components"
    else:
        build, pattern = IMAGES[case]
        bad = glue.addVolumeNodeFromImage(scene, build(), "bad")
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    composite.SetBackgroundVolumeID(fixed.GetID())
    before_nodes = frozenset(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    before_fixed = fingerprint(glue.imageFromVolumeNode(fixed))
    with pytest.raises(InputError, match=pattern):
        glue.registerNodes(fixed, bad, engine="elastix", recover=False)
    with pytest.raises(OneClickError):
        glue.registerNodes(bad, fixed, engine="elastix", recover=False)
    assert frozenset(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())) == before_nodes
    assert bad.GetTransformNodeID() is None and fixed.GetTransformNodeID() is None
    assert composite.GetBackgroundVolumeID() == fixed.GetID() and composite.GetForegroundVolumeID() is None
    assert fingerprint(glue.imageFromVolumeNode(fixed)) == before_fixed
