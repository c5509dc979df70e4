"""Property-based tests of the scores: ranges, symmetry, fill-value invariance, no undocumented errors.

Images are small (at most 9 voxels per axis) with random pixel types, values, spacings, origins,
directions (reflections included), transforms and masks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from OneClickRegistrationLib import metrics
from OneClickRegistrationLib.errors import InputError
from OneClickRegistrationLib.metrics import (
    METRICS,
    resample_with_validity,
    score,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
          np.float32, np.float64]
STATUSES = {"ok", "empty_overlap", "small_overlap", "zero_variance"}


def random_direction(rng: np.random.Generator) -> tuple[float, ...]:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # orthonormal, determinant +1 or -1
    return tuple(float(v) for v in q.ravel())


def random_values(rng: np.random.Generator, shape: tuple[int, int, int], dtype) -> np.ndarray:
    kind = rng.integers(0, 4)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        if kind == 0:
            return np.full(shape, rng.integers(info.min, info.max, endpoint=True, dtype=dtype), dtype=dtype)
        low = int(rng.integers(info.min, info.max // 2 + 1))
        span = int(rng.integers(1, 1 << min(40, info.bits - 1)))
        high = min(int(info.max), low + span)
        return rng.integers(low, high, size=shape, endpoint=True, dtype=dtype)
    scale = 10.0 ** rng.uniform(-30, 30)
    values = (rng.normal(size=shape) * scale + rng.normal() * scale * 10 ** rng.uniform(0, 6)).astype(dtype)
    if kind == 0:
        values[...] = values.flat[0]
    elif kind == 1:  # sprinkle NaN and Inf
        bad = rng.random(shape) < 0.1
        values[bad] = rng.choice([np.nan, np.inf, -np.inf], size=int(bad.sum()))
    return values


def random_image(rng: np.random.Generator, *, dtype=None, shape=None) -> sitk.Image:
    """A random volume whose centre lies within a few millimetres of the physical origin, so that two
    of them usually overlap."""
    shape = shape or tuple(int(s) for s in rng.integers(1, 10, size=3))
    dtype = dtype or DTYPES[rng.integers(0, len(DTYPES))]
    image = sitk.GetImageFromArray(random_values(rng, shape, dtype))
    spacing = rng.uniform(0.3, 5.0, size=3)
    direction = random_direction(rng)
    half_extent = np.asarray(direction).reshape(3, 3) @ (spacing * (np.asarray(image.GetSize()) - 1) / 2.0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in rng.uniform(-3, 3, size=3) - half_extent])
    image.SetDirection(direction)
    return image


def random_transform(rng: np.random.Generator) -> sitk.Transform | None:
    kind = rng.integers(0, 4)
    if kind == 0:
        return None
    if kind == 1:
        return sitk.TranslationTransform(3, [float(t) for t in rng.uniform(-15, 15, size=3)])
    if kind == 2:
        return sitk.Euler3DTransform([float(c) for c in rng.uniform(-10, 10, 3)],
                                     *(float(a) for a in rng.uniform(-0.5, 0.5, 3)),
                                     [float(t) for t in rng.uniform(-5, 5, 3)])
    matrix = np.eye(3) + rng.uniform(-0.2, 0.2, size=(3, 3))
    return sitk.AffineTransform([float(v) for v in matrix.ravel()], [float(t) for t in rng.uniform(-5, 5, 3)])


def random_mask_like(rng: np.random.Generator, image: sitk.Image) -> sitk.Image:
    inside = rng.random(tuple(reversed(image.GetSize()))) < rng.uniform(0, 1)
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def check_result(result: metrics.ScoreResult, name: str) -> None:
    assert result.metric == name
    assert result.status in STATUSES
    assert (result.value is not None) == (result.status == "ok")
    assert 0 <= result.overlap_voxels <= result.fixed_domain_voxels
    assert 0.0 <= result.overlap_fraction <= 1.0
    assert result.nonfinite_voxels >= 0
    assert result.message
    if result.value is not None:
        assert math.isfinite(result.value)
        if name == "ncc":
            assert -1.0 <= result.value <= 1.0
        elif name == "mi":
            assert result.value >= 0.0
        else:
            assert 1.0 <= result.value <= 2.0


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), with_fixed_mask=st.booleans(), with_moving_mask=st.booleans(),
       bins=st.integers(2, 64))
def test_any_valid_input_gives_a_consistent_result(seed, with_fixed_mask, with_moving_mask, bins):
    rng = np.random.default_rng(seed)
    fixed, moving = random_image(rng), random_image(rng)
    fixed_mask = random_mask_like(rng, fixed) if with_fixed_mask else None
    moving_mask = random_mask_like(rng, moving) if with_moving_mask else None
    results = score(fixed, moving, metric=METRICS, transform=random_transform(rng), fixed_mask=fixed_mask,
                    moving_mask=moving_mask, bins=bins, min_overlap_voxels=1, min_overlap_fraction=0.0)
    assert list(results) == list(metrics.METRICS)
    for name, result in results.items():
        check_result(result, name)
    statuses = {r.status for r in results.values()}
    assert len(statuses) == 1  # degenerate cases are degenerate for every metric alike


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_a_mask_on_another_grid_is_the_only_error(seed):
    rng = np.random.default_rng(seed)
    fixed = random_image(rng)
    other = random_image(rng)
    if other.GetSize() == fixed.GetSize():
        other = random_image(rng, shape=tuple(s + 1 for s in reversed(fixed.GetSize())))
    with pytest.raises(InputError, match="must lie on the fixed image's voxel grid"):
        score(fixed, fixed, fixed_mask=random_mask_like(rng, other), metric=METRICS)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(DTYPES))
def test_fill_value_never_changes_any_score(seed, dtype):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(4, 10, size=3))
    fixed = random_image(rng, dtype=dtype, shape=shape)
    moving = random_image(rng, dtype=dtype, shape=shape)
    moving.SetOrigin(fixed.GetOrigin())
    moving.SetDirection(fixed.GetDirection())
    transform = sitk.TranslationTransform(3, [float(t) for t in rng.uniform(-8, 8, size=3)])
    _, valid = resample_with_validity(fixed, moving, transform)
    direct = score(fixed, moving, transform=transform, min_overlap_voxels=1, min_overlap_fraction=0.0, metric=METRICS)
    output = sitk.sitkFloat32 if np.dtype(dtype).itemsize <= 2 or dtype == np.float32 else sitk.sitkFloat64
    for fill in (0.0, -1000.0, -1024.0, 1e6):
        resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, fill, output)
        again = score(fixed, resampled, resampled=True, valid_mask=valid, metric=METRICS, min_overlap_voxels=1,
                      min_overlap_fraction=0.0)
        for name in metrics.METRICS:
            # Inf in the moving image is the one case ITK's resampler alters (it clamps Inf).
            if not np.isinf(sitk.GetArrayViewFromImage(moving)).any():
                assert again[name] == direct[name]
            check_result(again[name], name)


def _float_pair(rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    shape = tuple(int(s) for s in rng.integers(3, 10, size=3))
    a = rng.normal(size=shape) * 10 ** rng.uniform(-5, 5)
    b = rng.uniform(-1, 1) * a + rng.normal(size=shape) * 10 ** rng.uniform(-5, 5)
    valid = rng.random(shape) < rng.uniform(0.3, 1.0)
    return sitk.GetImageFromArray(a), b, valid


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_every_metric_is_symmetric_on_a_common_grid(seed):
    rng = np.random.default_rng(seed)
    image_a, b, valid = _float_pair(rng)
    a = sitk.GetArrayFromImage(image_a)
    image_b = sitk.GetImageFromArray(b)
    forward = score(image_a, b, resampled=True, valid_mask=valid, min_overlap_voxels=1, metric=METRICS)
    backward = score(image_b, a, resampled=True, valid_mask=valid, min_overlap_voxels=1, metric=METRICS)
    for name in metrics.METRICS:
        assert forward[name].status == backward[name].status
        if forward[name].ok:
            assert backward[name].value == pytest.approx(forward[name].value, rel=1e-9, abs=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), gain=st.floats(1e-6, 1e6), offset=st.floats(-1e3, 1e3))
def test_intensity_maps(seed, gain, offset):
    rng = np.random.default_rng(seed)
    image_a, b, valid = _float_pair(rng)
    base = score(image_a, b, resampled=True, valid_mask=valid, min_overlap_voxels=1, metric=METRICS)
    if not base["ncc"].ok:
        return
    # The offset is relative to the spread, so float64 still resolves the mapped values.
    mapped_b = gain * b + offset * gain * float(np.std(b[valid]))
    mapped = score(image_a, mapped_b, resampled=True, valid_mask=valid, min_overlap_voxels=1, metric=METRICS)
    negated = score(image_a, -b, resampled=True, valid_mask=valid, min_overlap_voxels=1, metric=METRICS)
    assert mapped["ncc"].value == pytest.approx(base["ncc"].value, abs=1e-6)
    assert negated["ncc"].value == pytest.approx(-base["ncc"].value, abs=1e-12)
    # NMI/MI are invariant to a positive affine map up to values that cross a bin edge by rounding.
    assert mapped["nmi"].value == pytest.approx(base["nmi"].value, abs=0.05)
    itself = score(image_a, sitk.GetArrayFromImage(image_a), resampled=True, valid_mask=valid, min_overlap_voxels=1,
                   metric=METRICS)
    assert itself["ncc"].value == pytest.approx(1.0, abs=1e-12)
    assert itself["nmi"].value == pytest.approx(2.0, abs=1e-12)
