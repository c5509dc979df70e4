"""Scores against independent references: hand-computed arrays, ITK's own metric, plain numpy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import metrics
from OneClickRegistrationLib.errors import InputError
from OneClickRegistrationLib.metrics import (
    METRICS,
    ScoreResult,
    resample_with_validity,
    score,
)


def make_image(array: np.ndarray, *, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
               direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def smooth_noise(shape, seed, sigma=1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blurred = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(rng.normal(size=shape)), sigma)
    return sitk.GetArrayFromImage(blurred).astype(np.float64)


def itk_correlation(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                    fixed_mask: sitk.Image | None = None) -> float:
    """ITK's CorrelationImageToImageMetricv4 over every fixed voxel: -NCC^2."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    return method.MetricEvaluate(sitk.Cast(fixed, sitk.sitkFloat64), sitk.Cast(moving, sitk.sitkFloat64))


def reference_mi(a: np.ndarray, b: np.ndarray, bins: int) -> tuple[float, float]:
    """MI and NMI written from the definitions, independently of the module: edges from the 0.5/99.5
    percentiles (end bins take the rest), probabilities from np.histogram2d, MI as sum p log p/(pa pb)."""
    def edges(v: np.ndarray) -> np.ndarray:
        low, high = np.percentile(v, [0.5, 99.5])
        if high <= low:
            low, high = v.min(), v.max()
        e = np.linspace(low, high, bins + 1)
        e[0], e[-1] = -np.inf, np.inf
        return e

    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    counts, _, _ = np.histogram2d(a, b, bins=[edges(a), edges(b)])
    p = counts / counts.sum()
    pa, pb = p.sum(axis=1), p.sum(axis=0)
    mi = sum(p[i, j] * math.log(p[i, j] / (pa[i] * pb[j]))
             for i in range(bins) for j in range(bins) if p[i, j] > 0)
    ha = -sum(x * math.log(x) for x in pa if x > 0)
    hb = -sum(x * math.log(x) for x in pb if x > 0)
    hab = -sum(x * math.log(x) for x in p.ravel() if x > 0)
    return mi, (ha + hb) / hab


# ----------------------------------------------------------------------------------------------
# Hand-computed values


def test_ncc_hand_computed_pairs_of_swapped_values():
    # f - 4.5 = -3.5..3.5; m swaps neighbours: sum of products 38, sums of squares 42 -> 19/21.
    f = np.arange(1, 9, dtype=np.float64).reshape(2, 2, 2)
    m = np.array([2, 1, 4, 3, 6, 5, 8, 7], dtype=np.float64).reshape(2, 2, 2)
    result = score(make_image(f), make_image(m), min_overlap_voxels=1)
    assert result.status == "ok"
    assert result.value == pytest.approx(19.0 / 21.0, abs=1e-14)
    assert result.overlap_voxels == 8
    assert result.overlap_fraction == 1.0


@pytest.mark.parametrize(("gain", "offset", "expected"),
                         [(2.0, 5.0, 1.0), (-3.0, 100.0, -1.0), (1e-3, -7.0, 1.0)])
def test_ncc_of_an_affine_intensity_map_is_plus_or_minus_one(gain, offset, expected):
    f = smooth_noise((6, 7, 8), seed=3)
    result = score(make_image(f), make_image(gain * f + offset), min_overlap_voxels=1)
    # The moving image is resampled as float32 (relative precision 6e-8): NCC is exact to ~1e-11.
    assert result.value == pytest.approx(expected, abs=1e-9)


def test_mi_and_nmi_hand_computed():
    # Joint counts (0,0):2 (0,1):1 (1,1):1 -> p = 1/2, 1/4, 1/4; marginals (3/4, 1/4) and (1/2, 1/2).
    f = make_image(np.array([0, 0, 0, 1], dtype=np.uint8).reshape(4, 1, 1))
    m = make_image(np.array([0, 0, 1, 1], dtype=np.uint8).reshape(4, 1, 1))
    h_f = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    h_m = math.log(2.0)
    h_joint = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    results = score(f, m, metric=("mi", "nmi"), bins=2, min_overlap_voxels=1)
    assert results["mi"].value == pytest.approx(h_f + h_m - h_joint, abs=1e-14)
    assert results["nmi"].value == pytest.approx((h_f + h_m) / h_joint, abs=1e-14)
    assert results["mi"].bins == 2 and results["nmi"].bins == 2


def test_mi_of_independent_and_identical_binary_images():
    f = np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int16).reshape(2, 2, 2)
    m = np.array([0, 1, 0, 1, 0, 1, 0, 1], dtype=np.int16).reshape(2, 2, 2)
    independent = score(make_image(f), make_image(m), metric=("mi", "nmi"), bins=2,
                             min_overlap_voxels=1)
    assert independent["mi"].value == pytest.approx(0.0, abs=1e-15)
    assert independent["nmi"].value == pytest.approx(1.0, abs=1e-15)
    same = score(make_image(f), make_image(f), metric=("mi", "nmi"), bins=2, min_overlap_voxels=1)
    assert same["mi"].value == pytest.approx(math.log(2.0), abs=1e-15)
    assert same["nmi"].value == pytest.approx(2.0, abs=1e-15)


# ----------------------------------------------------------------------------------------------
# ITK's own correlation metric: -NCC^2 over the fixed voxels that map inside the moving image


@pytest.mark.parametrize("transform", [
    sitk.TranslationTransform(3, (0.0, 0.0, 0.0)),
    sitk.TranslationTransform(3, (1.3, -0.7, 2.2)),
    sitk.Euler3DTransform((9.0, 10.0, 8.0), 0.1, -0.05, 0.2, (1.5, 0.5, -2.0)),
    sitk.AffineTransform((1.05, 0.02, 0.0, -0.03, 0.97, 0.01, 0.0, 0.02, 1.1), (0.5, -1.0, 1.5),
                         (9.0, 10.0, 8.0)),
], ids=["identity", "translation", "euler", "affine"])
def test_ncc_matches_itk_correlation_metric(transform):
    f = smooth_noise((16, 20, 18), seed=1)
    m = smooth_noise((16, 20, 18), seed=2) + 0.8 * f
    fixed = make_image(f, spacing=(1.0, 1.1, 0.9))
    moving = make_image(m, spacing=(1.0, 1.1, 0.9), origin=(0.4, -0.3, 0.2))
    ours = score(fixed, moving, transform=transform)
    assert ours.ok
    assert ours.overlap_fraction < 1.0 or isinstance(transform, sitk.TranslationTransform)
    assert -ours.value**2 == pytest.approx(itk_correlation(fixed, moving, transform), rel=1e-6)


def test_ncc_matches_itk_with_a_fixed_mask():
    rng = np.random.default_rng(5)
    f = smooth_noise((16, 18, 20), seed=6)
    m = smooth_noise((16, 18, 20), seed=7) + f
    mask = make_image((rng.random((16, 18, 20)) > 0.3).astype(np.uint8))
    transform = sitk.TranslationTransform(3, (1.3, -0.7, 2.2))
    ours = score(make_image(f), make_image(m), transform=transform, fixed_mask=mask)
    expected = itk_correlation(make_image(f), make_image(m), transform, fixed_mask=mask)
    assert -ours.value**2 == pytest.approx(expected, rel=1e-6)
    assert ours.fixed_domain_voxels == int(sitk.GetArrayViewFromImage(mask).sum())


def test_negative_correlation_keeps_its_sign_where_itk_cannot():
    f = smooth_noise((10, 11, 12), seed=8)
    ours = score(make_image(f), make_image(-f))
    assert ours.value == pytest.approx(-1.0, abs=1e-12)
    assert itk_correlation(make_image(f), make_image(-f), sitk.Transform()) == pytest.approx(-1.0, abs=1e-9)


# ----------------------------------------------------------------------------------------------
# MI/NMI against the plain numpy definition (whole-voxel shifts: every resampled value is exact)


@pytest.mark.parametrize("shift", [(0, 0, 0), (3, -2, 1), (-5, 4, 0)])
def test_mi_nmi_match_numpy_reference_on_exact_shifts(shift):
    rng = np.random.default_rng(11)
    f = np.round(smooth_noise((14, 16, 18), seed=9) * 400).astype(np.int16)
    m = (np.round(smooth_noise((14, 16, 18), seed=10) * 300) + 2 * f + rng.integers(-20, 20, f.shape)).astype(
        np.int16)
    transform = sitk.TranslationTransform(3, [float(s) for s in shift])
    sx, sy, sz = shift
    # Fixed voxel (z, y, x) reads moving voxel (z + sz, y + sy, x + sx): keep those inside.
    zf = slice(max(0, -sz), f.shape[0] - max(0, sz))
    yf = slice(max(0, -sy), f.shape[1] - max(0, sy))
    xf = slice(max(0, -sx), f.shape[2] - max(0, sx))
    zm = slice(zf.start + sz, zf.stop + sz)
    ym = slice(yf.start + sy, yf.stop + sy)
    xm = slice(xf.start + sx, xf.stop + sx)
    expected_mi, expected_nmi = reference_mi(f[zf, yf, xf], m[zm, ym, xm], bins=16)
    results = score(make_image(f), make_image(m), transform=transform, bins=16, metric=METRICS)
    assert results["mi"].overlap_voxels == f[zf, yf, xf].size
    assert results["mi"].value == pytest.approx(expected_mi, rel=1e-12)
    assert results["nmi"].value == pytest.approx(expected_nmi, rel=1e-12)
    expected_ncc = np.corrcoef(f[zf, yf, xf].ravel(), m[zm, ym, xm].ravel())[0, 1]
    assert results["ncc"].value == pytest.approx(expected_ncc, abs=1e-12)


def test_robust_binning_ignores_a_single_extreme_voxel():
    f = np.round(smooth_noise((16, 16, 16), seed=12) * 400).astype(np.int16)
    spiked = f.copy()
    spiked[3, 4, 5] = 32000  # one metal-like voxel
    clean = score(make_image(f), make_image(f), metric="mi").value
    with_spike = score(make_image(spiked), make_image(f), metric="mi").value
    assert with_spike > 0.9 * clean
    # Bins over min..max would put almost every voxel of the spiked image into one or two bins.
    counts, _, _ = np.histogram2d(spiked.ravel(), f.ravel(), bins=32)
    p = counts / counts.sum()
    pa, pb = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    min_max_mi = float(np.sum(p[nz] * np.log(p[nz] / (pa @ pb)[nz])))
    assert min_max_mi < 0.5 * with_spike


# ----------------------------------------------------------------------------------------------
# Pixel types


DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
          np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_pixel_type_scores_like_float64(dtype):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    base = smooth_noise((12, 13, 14), seed=13)
    base = (base - base.min()) / (base.max() - base.min())  # 0..1
    other = smooth_noise((12, 13, 14), seed=14)
    other = 0.6 * base + 0.4 * (other - other.min()) / (other.max() - other.min())
    if info is not None:
        # Use the top of the type's range: sums of squares there overflow anything narrower than float64.
        span = min(float(info.max) - float(info.min), 2.0**40)
        wide = np.uint64 if dtype == np.uint64 else np.int64
        f = (wide(info.max) - np.round(span * (1.0 - base)).astype(wide)).astype(dtype)
        m = (wide(info.max) - np.round(span * (1.0 - other)).astype(wide)).astype(dtype)
        assert f.max() > info.max - 2 * span / 3  # really at the top of the range
    else:
        f = (1e4 + 3e3 * base).astype(dtype)
        m = (1e4 + 3e3 * other).astype(dtype)
    results = score(make_image(f), make_image(m), metric=METRICS)
    f64, m64 = f.astype(np.float64).ravel(), m.astype(np.float64).ravel()
    assert results["ncc"].value == pytest.approx(np.corrcoef(f64, m64)[0, 1], abs=1e-12)
    assert -1.0 <= results["ncc"].value <= 1.0
    mi, nmi = reference_mi(f64, m64, bins=32)
    assert results["mi"].value == pytest.approx(mi, rel=1e-12)
    assert results["nmi"].value == pytest.approx(nmi, rel=1e-12)


def test_int16_ct_overflows_the_naive_formula_but_not_ours():
    rng = np.random.default_rng(15)
    hu = np.full((24, 24, 24), -1024, dtype=np.int16)  # air with the usual -1024 offset
    hu[4:20, 4:20, 4:20] = 40 + rng.integers(-10, 10, (16, 16, 16))  # brain
    hu[4:20, 4:20, 4:6] = 1500  # bone
    moved = np.roll(hu, 1, axis=2)
    moved = (moved + rng.integers(-5, 5, moved.shape)).astype(np.int16)

    def naive(im1: np.ndarray, im2: np.ndarray) -> float:  # the forum's formula, on the raw int16 arrays
        with np.errstate(all="ignore"):
            mu1, mu2 = im1.mean(), im2.mean()
            alpha1, alpha2, alpha12 = (im1**2).mean(), (im2**2).mean(), (im1 * im2).mean()
            return float((alpha12 - mu1 * mu2) / np.sqrt((alpha1 - mu1**2) * (alpha2 - mu2**2)))

    truth = np.corrcoef(hu.astype(np.float64).ravel(), moved.astype(np.float64).ravel())[0, 1]
    wrong = naive(hu, moved)
    assert not (abs(wrong - truth) < 0.05)  # NaN or far off: int16 squares wrap around
    ours = score(make_image(hu), make_image(moved))
    assert ours.value == pytest.approx(truth, abs=1e-12)


@pytest.mark.parametrize("magnitude", [1e-200, 1e-30, 1e30, 1e200, 1e300])
def test_extreme_float64_magnitudes(magnitude):
    f = smooth_noise((8, 9, 10), seed=16)
    m = smooth_noise((8, 9, 10), seed=17) + f
    expected = score(make_image(f), make_image(m), min_overlap_voxels=1, metric=METRICS)
    scaled = score(make_image(f * magnitude), make_image(m * magnitude), min_overlap_voxels=1, metric=METRICS)
    for name in metrics.METRICS:
        assert scaled[name].ok, scaled[name].message
        assert scaled[name].value == pytest.approx(expected[name].value, abs=1e-6)


def test_a_large_offset_does_not_cancel():
    f = smooth_noise((10, 10, 10), seed=18)
    m = smooth_noise((10, 10, 10), seed=19) + f
    expected = score(make_image(f), make_image(m)).value
    shifted = score(make_image(f + 1e9), make_image(m - 1e9)).value
    assert shifted == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# Domain intersection and fill values


def _ct_pair():
    rng = np.random.default_rng(20)
    f = np.full((20, 24, 22), -1024, dtype=np.int16)
    f[3:17, 4:20, 4:18] = (40 + 300 * smooth_noise((14, 16, 14), seed=21)).astype(np.int16)
    m = (f + rng.integers(-15, 15, f.shape)).astype(np.int16)
    fixed = make_image(f, spacing=(1.2, 1.0, 1.5))
    moving = make_image(m, spacing=(1.2, 1.0, 1.5))
    # Pushes a good third of the fixed grid outside the moving domain.
    transform = sitk.Euler3DTransform((13.0, 12.0, 15.0), 0.05, 0.0, -0.08, (9.0, -4.0, 6.0))
    return fixed, moving, transform


@pytest.mark.parametrize("metric", metrics.METRICS)
def test_fill_value_never_changes_the_score(metric):
    fixed, moving, transform = _ct_pair()
    _, valid = resample_with_validity(fixed, moving, transform)
    assert 0.3 < valid.mean() < 0.8
    direct = score(fixed, moving, transform=transform, metric=metric)
    assert direct.ok
    seen = set()
    naive = set()
    for fill in (0.0, -1000.0, -1024.0, 1e6):
        resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, fill, sitk.sitkFloat32)
        result = score(fixed, resampled, resampled=True, valid_mask=valid, metric=metric)
        seen.add((result.value, result.overlap_voxels))
        if metric == "ncc":
            naive.add(np.corrcoef(sitk.GetArrayViewFromImage(fixed).ravel(),
                                  sitk.GetArrayViewFromImage(resampled).ravel())[0, 1])
    assert seen == {(direct.value, direct.overlap_voxels)}  # bit-identical for every fill value
    if metric == "ncc":
        assert max(naive) - min(naive) > 0.05  # whereas scoring the whole grid depends on the fill


def test_score_equals_score_resampled_of_resample_with_validity():
    fixed, moving, transform = _ct_pair()
    resampled, valid = resample_with_validity(fixed, moving, transform)
    assert resampled.GetPixelID() == sitk.sitkFloat32
    assert np.isnan(sitk.GetArrayViewFromImage(resampled)[~valid]).all()
    direct = score(fixed, moving, transform=transform, metric=METRICS)
    again = score(fixed, resampled, resampled=True, valid_mask=valid, metric=METRICS)
    assert direct == again
    as_array = score(fixed, sitk.GetArrayFromImage(resampled), resampled=True, valid_mask=valid, metric=METRICS)
    assert as_array == direct


def test_validity_mask_matches_the_geometry_of_a_half_voxel_shift():
    moving = make_image(np.ones((5, 6, 7), np.float32))
    _, valid = resample_with_validity(moving, moving, sitk.TranslationTransform(3, (0.5, 0.0, -0.6)))
    # x: index + 0.5 must stay below 6.5 -> x < 6; z: index - 0.6 must stay at or above -0.5 -> z >= 1.
    expected = np.zeros((5, 6, 7), bool)
    expected[1:, :, :6] = True
    assert np.array_equal(valid, expected)


def test_moving_nan_is_nonfinite_not_outside():
    f = smooth_noise((8, 9, 10), seed=22).astype(np.float32)
    m = f.copy()
    m[2:4, 3:5, 4:6] = np.nan
    m[6, 1, 1] = np.inf  # ITK would clamp an interpolated Inf to 3.4e38: it must still count as non-finite
    resampled, valid = resample_with_validity(make_image(f), make_image(m))
    assert valid.all()
    assert np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(resampled))) == 9
    result = score(make_image(f), make_image(m))
    assert result.nonfinite_voxels == 9
    assert result.overlap_voxels == f.size - 9
    assert result.value == pytest.approx(1.0, abs=1e-12)


def test_fixed_nonfinite_voxels_are_ignored_and_counted():
    f = smooth_noise((8, 9, 10), seed=23)
    m = smooth_noise((8, 9, 10), seed=24) + f
    bad = np.zeros(f.shape, bool)
    bad[1, 2, 3] = bad[4, 5, 6] = bad[7, 8, 9] = True
    f_nan = f.copy()
    f_nan[bad] = [np.nan, np.inf, -np.inf]
    keep = make_image((~bad).astype(np.uint8))
    result = score(make_image(f_nan), make_image(m), metric=METRICS)
    reference = score(make_image(f), make_image(m), fixed_mask=keep, metric=METRICS)
    for name in metrics.METRICS:
        assert result[name].nonfinite_voxels == 3
        assert result[name].overlap_voxels == reference[name].overlap_voxels
        assert result[name].value == pytest.approx(reference[name].value, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Masks


def test_fixed_mask_restricts_voxels_and_is_the_fraction_denominator():
    f = smooth_noise((10, 12, 14), seed=25)
    m = smooth_noise((10, 12, 14), seed=26) + f
    mask = np.zeros(f.shape, np.uint8)
    mask[2:8, 3:9, 4:10] = 1
    result = score(make_image(f), make_image(m), fixed_mask=make_image(mask))
    inside = mask.astype(bool)
    assert result.overlap_voxels == inside.sum() == result.fixed_domain_voxels
    assert result.overlap_fraction == 1.0
    assert result.value == pytest.approx(np.corrcoef(f[inside], m[inside])[0, 1], abs=1e-6)


def test_moving_mask_follows_the_transform():
    f = smooth_noise((10, 12, 14), seed=27)
    m = smooth_noise((10, 12, 14), seed=28) + f
    moving_mask = np.zeros(f.shape, np.uint8)
    moving_mask[:, :, 5:] = 1  # moving x >= 5
    transform = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))  # fixed x reads moving x + 2
    result = score(make_image(f), make_image(m), transform=transform, moving_mask=make_image(moving_mask))
    # Fixed x in 3..11 reads moving x in 5..13, all inside the moving domain and mask.
    assert result.overlap_voxels == 10 * 12 * 9
    assert result.value == pytest.approx(np.corrcoef(f[:, :, 3:12].ravel(), m[:, :, 5:14].ravel())[0, 1],
                                         abs=1e-6)


def test_float_mask_with_zero_and_one_is_accepted():
    f = smooth_noise((6, 6, 6), seed=29)
    mask = np.ones(f.shape, np.float32)
    mask[0] = 0.0
    result = score(make_image(f), make_image(f), fixed_mask=make_image(mask))
    assert result.overlap_voxels == 5 * 36


# ----------------------------------------------------------------------------------------------
# Degenerate cases: a status, never an exception or NaN


def test_empty_overlap():
    f = smooth_noise((8, 8, 8), seed=30)
    results = score(make_image(f), make_image(f), transform=sitk.TranslationTransform(3, (100.0, 0, 0)), metric=METRICS)
    for result in results.values():
        assert result.status == "empty_overlap"
        assert result.value is None and not result.ok
        assert result.overlap_voxels == 0 and result.overlap_fraction == 0.0
        assert "do not overlap" in result.message


def test_empty_fixed_mask_is_an_empty_overlap():
    f = smooth_noise((8, 8, 8), seed=31)
    result = score(make_image(f), make_image(f), fixed_mask=make_image(np.zeros(f.shape, np.uint8)))
    assert result.status == "empty_overlap"
    assert "mask is empty" in result.message


def test_small_overlap_says_required_and_found():
    f = smooth_noise((10, 10, 100), seed=32)
    # 100 voxels along x; shifting by 99.4 leaves one column of 100 voxels: 1% of the grid.
    result = score(make_image(f), make_image(f), transform=sitk.TranslationTransform(3, (99.4, 0, 0)),
                   min_overlap_fraction=0.02)
    assert result.status == "small_overlap"
    assert result.value is None
    assert result.overlap_voxels == 100
    assert "1%" in result.message and "2%" in result.message
    assert score(make_image(f), make_image(f), transform=sitk.TranslationTransform(3, (99.4, 0, 0)),
                 min_overlap_fraction=0.005).ok


def test_too_few_voxels_is_a_small_overlap():
    f = smooth_noise((4, 4, 4), seed=33)
    result = score(make_image(f), make_image(f))  # 64 voxels < default minimum of 100
    assert result.status == "small_overlap"
    assert str(metrics.DEFAULT_MIN_OVERLAP_VOXELS) in result.message
    assert score(make_image(f), make_image(f), min_overlap_voxels=64).ok


@pytest.mark.parametrize(("fixed_constant", "moving_constant", "word"),
                         [(True, False, "fixed image is"), (False, True, "moving image is"),
                          (True, True, "fixed and moving images are")])
def test_zero_variance(fixed_constant, moving_constant, word):
    f = smooth_noise((8, 8, 8), seed=34)
    fixed = np.full(f.shape, 0.1) if fixed_constant else f
    moving = np.full(f.shape, -1024.0) if moving_constant else f
    results = score(make_image(fixed), make_image(moving), min_overlap_voxels=1, metric=METRICS)
    for result in results.values():
        assert result.status == "zero_variance"
        assert result.value is None
        assert word in result.message


def test_constant_over_the_overlap_only():
    f = smooth_noise((8, 8, 8), seed=35)
    m = f.copy()
    m[:, :, 4:] = 7.0  # varies only where the fixed grid does not reach after the shift
    transform = sitk.TranslationTransform(3, (4.0, 0.0, 0.0))
    result = score(make_image(f), make_image(m), transform=transform, min_overlap_voxels=1)
    assert result.status == "zero_variance"


def test_one_different_voxel_is_not_zero_variance():
    f = np.zeros((6, 6, 6))
    f[1, 2, 3] = 1.0
    result = score(make_image(f), make_image(f), min_overlap_voxels=1)
    assert result.ok and result.value == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Result object and input errors


def test_result_is_frozen_and_json_ready():
    f = smooth_noise((6, 6, 6), seed=36)
    result = score(make_image(f), make_image(f), metric="NMI", min_overlap_voxels=1)
    assert isinstance(result, ScoreResult) and result.metric == "nmi"
    with pytest.raises(AttributeError):
        result.value = 0.0  # type: ignore[misc]
    data = json.loads(json.dumps(result.to_dict()))
    required = {"metric", "value", "status", "overlap_voxels", "overlap_fraction", "nonfinite_voxels"}
    assert required <= set(data)
    assert data["value"] == result.value and data["ok"] is True


def test_score_many_equals_single_scores():
    fixed, moving, transform = _ct_pair()
    many = score(fixed, moving, transform=transform, metric=METRICS)
    for name in metrics.METRICS:
        assert score(fixed, moving, transform=transform, metric=name) == many[name]


def _image_2d() -> sitk.Image:
    return sitk.Image([8, 8], sitk.sitkFloat32)


@pytest.mark.parametrize(("call", "words"), [
    (lambda f: score(np.zeros((4, 4, 4)), f), "must be a SimpleITK image"),  # type: ignore[arg-type]
    (lambda f: score(f, _image_2d()), "must be a 3D volume"),
    (lambda f: score(f, sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)), "scalar"),
    (lambda f: score(f, sitk.Image([4, 4, 4], sitk.sitkComplexFloat32)), "real scalar pixel type"),
    (lambda f: score(f, f, metric="cc"), "Unknown metric"),
    (lambda f: score(f, f, metric=()), "No metric"),
    (lambda f: score(f, f, bins=1), "bins"),
    (lambda f: score(f, f, bins=2.5), "bins"),  # type: ignore[arg-type]
    (lambda f: score(f, f, min_overlap_fraction=1.5), "min_overlap_fraction"),
    (lambda f: score(f, f, min_overlap_voxels=0), "min_overlap_voxels"),
    (lambda f: score(f, f, transform=sitk.TranslationTransform(2)), "3D"),
    (lambda f: score(f, f, transform="identity"), "SimpleITK transform"),  # type: ignore[arg-type]
    (lambda f: score(f, f, fixed_mask=sitk.Image([4, 4, 5], sitk.sitkUInt8)), "fixed mask must lie on"),
    (lambda f: score(f, f, fixed_mask=make_image(np.full((4, 4, 4), 0.5, np.float32))), "only 0 and 1"),
    (lambda f: score(f, np.zeros((4, 4, 5)), resampled=True, valid_mask=None), "array shape"),
    (lambda f: score(f, np.zeros((4, 4, 4)), resampled=True, valid_mask=np.ones((4, 4, 4), np.uint8)), "boolean"),
], ids=["array", "2d", "vector", "complex", "metric", "no-metric", "bins", "bins-float", "fraction",
        "voxels", "transform-2d", "transform-type", "mask-grid", "mask-float", "shape", "valid-dtype"])
def test_wrong_inputs_raise_input_error(call, words):
    fixed = make_image(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(InputError, match=words):
        call(fixed)


def test_mask_grid_error_names_both_grids():
    fixed = make_image(np.zeros((4, 4, 4), np.float32), spacing=(1.0, 1.0, 1.0))
    mask = make_image(np.ones((4, 4, 4), np.uint8), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(InputError) as info:
        score(fixed, fixed, fixed_mask=mask)
    text = str(info.value)
    assert "Fixed mask: size 4x4x4, spacing (1, 1, 2)" in text
    assert "fixed image: size 4x4x4, spacing (1, 1, 1)" in text


def test_moving_mask_must_be_on_the_moving_grid():
    fixed = make_image(np.zeros((4, 4, 4), np.float32))
    moving = make_image(np.zeros((5, 5, 5), np.float32))
    with pytest.raises(InputError, match="moving mask must lie on the moving image's voxel grid"):
        score(fixed, moving, moving_mask=make_image(np.ones((4, 4, 4), np.uint8)))


def test_inputs_are_not_modified():
    fixed, moving, transform = _ct_pair()
    before = (sitk.GetArrayFromImage(fixed), sitk.GetArrayFromImage(moving))
    resampled, valid = resample_with_validity(fixed, moving, transform)
    valid_before = valid.copy()
    mask = make_image(np.ones(valid.shape, np.uint8), spacing=fixed.GetSpacing())
    score(fixed, resampled, resampled=True, valid_mask=valid, fixed_mask=mask, metric=METRICS)
    score(fixed, moving, transform=transform, fixed_mask=mask, moving_mask=mask, metric=METRICS)
    assert np.array_equal(valid, valid_before)
    assert np.array_equal(sitk.GetArrayViewFromImage(fixed), before[0])
    assert np.array_equal(sitk.GetArrayViewFromImage(moving), before[1])


def test_two_thread_split_gives_the_single_pass_result(monkeypatch):
    fixed, moving, transform = _ct_pair()
    single = score(fixed, moving, transform=transform, metric=METRICS)
    # Make this small pair take the two-thread path, with blocks small enough to split it.
    monkeypatch.setattr(metrics, "_PARALLEL_MIN_VOXELS", 1000)
    monkeypatch.setattr(metrics, "_CHUNK", 997)
    split = score(fixed, moving, transform=transform, metric=METRICS)
    for name in metrics.METRICS:
        assert split[name].overlap_voxels == single[name].overlap_voxels
        assert split[name].value == pytest.approx(single[name].value, rel=1e-12)
    assert split["mi"].value == single["mi"].value  # same integer histogram, same arithmetic


@pytest.mark.parametrize("with_moving_mask", [False, True])
def test_masked_score_resamples_only_the_mask_box_and_matches_the_full_grid(with_moving_mask):
    fixed, moving, transform = _ct_pair()
    head = np.zeros(tuple(reversed(fixed.GetSize())), np.uint8)
    head[4:15, 5:18, 3:12] = 1  # about a fifth of the grid
    head[9, 9:12, 12:16] = 1
    assert metrics._mask_box(head.astype(bool)) is not None  # the boxed route is taken
    fixed_mask = make_image(head, spacing=fixed.GetSpacing())
    moving_mask = make_image((sitk.GetArrayViewFromImage(moving) > -500).astype(np.uint8),
                             spacing=moving.GetSpacing()) if with_moving_mask else None
    boxed = score(fixed, moving, transform=transform, fixed_mask=fixed_mask, moving_mask=moving_mask, metric=METRICS)
    # The same thing on the whole grid, through the public two-step route.
    resampled, valid = resample_with_validity(fixed, moving, transform)
    if moving_mask is not None:
        moved_mask = sitk.Resample(moving_mask, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        valid &= sitk.GetArrayViewFromImage(moved_mask) > 0
    full = score(fixed, resampled, resampled=True, valid_mask=valid, fixed_mask=fixed_mask, metric=METRICS)
    for name in metrics.METRICS:
        assert boxed[name].ok
        assert boxed[name].overlap_voxels == full[name].overlap_voxels
        assert boxed[name].fixed_domain_voxels == full[name].fixed_domain_voxels == head.sum()
        assert boxed[name].value == pytest.approx(full[name].value, rel=1e-9)
