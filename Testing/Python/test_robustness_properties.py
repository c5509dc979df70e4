"""Property-based tests: random shapes, pixel types, spacings, origins, directions and masks never
raise anything but the project's documented errors (``errors.py``), and conversions keep every voxel.

Complements ``test_metrics_properties.py`` (valid images, score invariants) with what it does not
cover: hostile inputs (2D, 4D, vector, empty, single-voxel axes, non-orthonormal directions, extreme
spacings and origins, degenerate transforms and masks), file round trips through ``write_image`` /
``read_image``, head masks, judging a transform, and the Slicer glue's node <-> image conversion.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from OneClickRegistrationLib import metrics
from OneClickRegistrationLib.errors import InputError, OneClickError
from OneClickRegistrationLib.images import check_registrable, check_volume, read_image, write_image
from OneClickRegistrationLib.masks import head_mask
from OneClickRegistrationLib.pipeline import judge_transform

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.float32,
          np.float64]


def _direction(draw, dimension: int) -> tuple[float, ...]:
    kind = draw(st.sampled_from(["identity", "orthonormal", "orthonormal", "reflected", "reflected", "skewed"]))
    if kind == "identity":
        return tuple(np.eye(dimension).ravel())
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    q, _ = np.linalg.qr(rng.normal(size=(dimension, dimension)))
    if kind == "reflected":
        q[:, 0] *= -1.0
    if kind == "skewed":  # not orthonormal: a header ITK accepts, the pipeline must refuse
        q = q + rng.uniform(0.2, 0.6) * np.triu(np.ones((dimension, dimension)), 1)
    return tuple(float(v) for v in q.ravel())


# Repetition weights the choices: mostly what a user would load, often enough what they should not.
ANY_DIMENSION = (3, 3, 3, 3, 2, 4)
ANY_COMPONENTS = (1, 1, 1, 1, 1, 3)


@st.composite
def images(draw, *, dimensions=ANY_DIMENSION, components=ANY_COMPONENTS, min_side: int = 1, max_side: int = 7):
    """Any image SimpleITK can hold, good or bad for registration."""
    dimension = draw(st.sampled_from(dimensions))
    shape = tuple(draw(st.integers(min_side, max_side)) for _ in range(dimension))
    dtype = draw(st.sampled_from(DTYPES))
    count = draw(st.sampled_from(components))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    full = shape[::-1] + ((count,) if count > 1 else ())
    if np.dtype(dtype).kind == "f":
        values = (rng.normal(size=full) * 10 ** rng.uniform(-3, 6)).astype(dtype)
        if draw(st.integers(0, 2)) == 0:
            values.flat[rng.integers(0, values.size, size=max(1, values.size // 8))] = rng.choice(
                [np.nan, np.inf, -np.inf])
    else:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=full, dtype=dtype, endpoint=True)
    if draw(st.integers(0, 5)) == 0:
        values[...] = values.flat[0]  # constant
    image = sitk.GetImageFromArray(values, isVector=count > 1)
    spacing = [10 ** draw(st.floats(-2.0, 2.0)) for _ in range(dimension)]
    origin = [draw(st.sampled_from([0.0, 1.0e6, -3.5e3, 12.25])) for _ in range(dimension)]
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(_direction(draw, dimension))
    return image


def _same_voxels(a: sitk.Image, b: sitk.Image) -> None:
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@SETTINGS
@given(image=images())
def test_checks_accept_or_refuse_with_input_error_only(image) -> None:
    try:
        check_volume(image, role="fixed image")
    except InputError as exc:
        assert "The fixed image" in str(exc)
        assert image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1 or abs(
            abs(np.linalg.det(np.reshape(image.GetDirection(), (3, 3)))) - 1.0) > 1e-3
        return
    try:
        check_registrable(image, role="moving image")
    except InputError as exc:
        assert "The moving image" in str(exc)
        event("volume, not registrable")
        return
    event("registrable")


@SETTINGS
@given(image=images(), ending=st.sampled_from([".nrrd", ".nii.gz", ".mha"]))
def test_file_round_trip_keeps_voxels_and_geometry_or_says_why_not(image, ending) -> None:
    with tempfile.TemporaryDirectory(prefix="robustness-") as folder:
        path = Path(folder) / f"image {ending}"
        try:
            write_image(image, path)
        except InputError as exc:  # a format that cannot hold this image (e.g. NIfTI and 4 components)
            assert "Cannot write" in str(exc)
            assert not path.exists()
            event("not writable")
            return
        try:
            back = read_image(path, role="fixed image")
        except InputError as exc:
            # 2D, 4D, vector images and non-orthonormal headers are refused when read, with the reason.
            assert image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1 or "direction" in str(
                exc), str(exc)
            event("refused when read")
            return
    event("round trip")
    assert back.GetSize() == image.GetSize() and back.GetPixelID() == image.GetPixelID()
    _same_voxels(back, image)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), rtol=1e-5)
    # NIfTI stores the header in float32: an origin 1000 km away keeps ~0.1 m precision there.
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-4)


def _transform(draw) -> sitk.Transform | None:
    kind = draw(st.sampled_from(["none", "shift", "shift", "shift", "huge shift", "singular", "nan", "2D", "scale"]))
    if kind == "none":
        return None
    if kind == "shift":
        return sitk.TranslationTransform(3, [draw(st.floats(-50, 50)) for _ in range(3)])
    if kind == "huge shift":
        return sitk.TranslationTransform(3, (1e9, 0.0, 0.0))
    if kind == "singular":
        return sitk.AffineTransform([0.0] * 9, [0.0, 0.0, 0.0])
    if kind == "nan":
        return sitk.TranslationTransform(3, (math.nan, 0.0, 0.0))
    if kind == "2D":
        return sitk.TranslationTransform(2, (1.0, 0.0))
    return sitk.ScaleTransform(3, (1e-6, 1e6, 1.0))


@st.composite
def score_inputs(draw):
    fixed = draw(images(max_side=9))
    moving = draw(images(max_side=9))
    mask = None
    mask_kind = draw(st.sampled_from(["none", "none", "on grid", "on grid", "float", "empty", "other grid"]))
    if mask_kind != "none" and fixed.GetDimension() == 3:
        size = fixed.GetSize() if mask_kind != "other grid" else tuple(s + 1 for s in fixed.GetSize())
        rng = np.random.default_rng(draw(st.integers(0, 2**31)))
        values = rng.random(size[::-1]) < 0.5
        if mask_kind == "empty":
            values[...] = False
        mask = sitk.GetImageFromArray(values.astype(np.float32 if mask_kind == "float" else np.uint8))
        if mask_kind != "other grid":
            mask.CopyInformation(fixed)
    return fixed, moving, mask, _transform(draw), draw(st.sampled_from(metrics.METRICS))


@SETTINGS
@given(inputs=score_inputs())
def test_scoring_hostile_inputs_gives_a_result_or_an_input_error(inputs) -> None:
    fixed, moving, mask, transform, metric = inputs
    try:
        result = metrics.score(fixed, moving, transform=transform, metric=metric, fixed_mask=mask)
    except InputError as exc:
        assert str(exc)
        event("refused")
        return
    event(result.status)
    assert result.status in ("ok", "empty_overlap", "small_overlap", "zero_variance")
    assert (result.value is not None) == result.ok and result.message
    if result.value is not None:
        assert math.isfinite(result.value)


@SETTINGS
@given(image=images(dimensions=(3,), components=(1,)), modality=st.sampled_from([None, "T1", "CT", "MR"]))
def test_head_mask_of_any_scalar_volume_is_a_mask_on_its_grid(image, modality) -> None:
    try:
        mask = head_mask(image, modality=modality)
    except InputError as exc:  # only a header the pipeline refuses everywhere
        assert "orthonormal direction" in str(exc), str(exc)
        event("refused")
        return
    event("empty mask" if not sitk.GetArrayViewFromImage(mask).any() else "mask")
    assert mask.GetPixelID() == sitk.sitkUInt8 and mask.GetSize() == image.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
    assert mask.GetOrigin() == image.GetOrigin() and mask.GetDirection() == image.GetDirection()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fixed=images(min_side=4, max_side=12), moving=images(dimensions=(3,), components=(1,), min_side=4, max_side=12),
       data=st.data())
def test_judging_any_transform_on_any_images_gives_a_verdict_or_a_documented_error(fixed, moving, data) -> None:
    transform = _transform(data.draw) or sitk.Transform(3, sitk.sitkIdentity)
    try:
        result = judge_transform(fixed, moving, transform)
    except OneClickError as exc:
        assert str(exc)
        event(f"refused: {type(exc).__name__}")
        return
    event(result.verdict.label)
    assert result.verdict.label in ("good", "questionable", "failed") and result.verdict.reasons


# ---------------------------------------------------------------------------------------------------
# The Slicer glue: volume node <-> SimpleITK image with random shapes, types and geometry


@pytest.mark.slicer
@SETTINGS
@given(image=images(dimensions=(3,), components=(1, 1, 1, 1, 3)))
def test_glue_round_trip_keeps_every_voxel_and_the_geometry(image) -> None:
    slicer = pytest.importorskip("slicer")
    from OneClickRegistrationSlicer import registration as glue

    direction = np.reshape(image.GetDirection(), (3, 3))
    assume(abs(abs(np.linalg.det(direction)) - 1.0) < 1e-6 and np.allclose(direction.T @ direction, np.eye(3)))
    # Known, reported to the glue's owner: a multi-component 64-bit integer image aborts the process
    # (std::bad_array_new_length in VTK's histogram, which lacks VTK_LONG_LONG) when its node gets
    # display nodes. The pipeline never produces one (it refuses vector images), so it is left out here.
    assume(image.GetNumberOfComponentsPerPixel() == 1
           or image.GetPixelID() not in (sitk.sitkVectorInt64, sitk.sitkVectorUInt64))
    scene = slicer.vtkMRMLScene()
    node = glue.addVolumeNodeFromImage(scene, image, "random")
    back = glue.imageFromVolumeNode(node, role="fixed")
    assert back.GetSize() == image.GetSize() and back.GetPixelID() == image.GetPixelID()
    assert back.GetNumberOfComponentsPerPixel() == image.GetNumberOfComponentsPerPixel()
    _same_voxels(back, image)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)
    # What the core then says about it is a documented answer, never a crash.
    try:
        check_registrable(back, role="fixed image")
    except InputError as exc:
        assert "The fixed image" in str(exc)


_WRITE_VECTORS = """
import sys
import SimpleITK as sitk
from OneClickRegistrationLib.images import write_image
image = sitk.Image([3, 4, 5], sitk.sitkVectorFloat32, 3)
for index in range(5):
    write_image(image, f"{sys.argv[1]}/vector{index}{sys.argv[2]}")
back = sitk.ReadImage(f"{sys.argv[1]}/vector4{sys.argv[2]}")
assert back.GetSize() == (3, 4, 5) and back.GetNumberOfComponentsPerPixel() == 3
"""


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_a_vector_image_is_checked_after_writing_without_crashing(tmp_path, ending) -> None:
    # Reading back only the last slice of a vector NIfTI corrupted ITK's heap (free(): invalid pointer,
    # the process aborted, at once or at exit): vector images are read back whole. In a child process,
    # so that a crash is this test's failure and not the end of the run.
    done = subprocess.run([sys.executable, "-c", _WRITE_VECTORS, str(tmp_path), ending], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
