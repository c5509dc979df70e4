"""Similarity scores computed only where both images really have data.

A score compares the fixed image with the moving image resampled onto the fixed grid through a
transform (ITK convention: fixed points -> moving points). Decisions, in the order they are applied:

* **Domain intersection.** A fixed voxel is scored only if its transformed centre falls inside the
  moving image's domain, as ITK's resampler decides it (continuous index within half a voxel of the
  moving grid), and inside the fixed and the (resampled, nearest-neighbour) moving masks. The moving
  image is resampled with NaN as its default value, so an out-of-domain voxel can never be mistaken
  for data: the score is exactly the same whatever fill value anybody else uses.
* **Non-finite voxels** (NaN or Inf in either image inside the intersection) are ignored and counted
  in ``nonfinite_voxels``; they are not part of ``overlap_voxels``.
* **Overlap fraction** = ``overlap_voxels`` / voxels of the fixed domain, where the fixed domain is
  the fixed mask when one is given (the question is "how much of the head was scored"), else the
  whole fixed grid.
* **Statuses.** ``empty_overlap`` (nothing to score), ``small_overlap`` (fewer than
  ``min_overlap_fraction`` of the fixed domain or fewer than ``min_overlap_voxels`` voxels),
  ``zero_variance`` (either image constant over the overlap: no alignment information, for every
  metric), else ``ok``. Only ``ok`` carries a value; degenerate cases never raise and never give NaN.
* **NCC** is the signed Pearson correlation over the overlap, in [-1, 1]. Sums are taken in float64
  on values shifted by a sample median (|mean - median| <= one standard deviation, so no catastrophic
  cancellation), with power-of-two rescaling when values are too large or too small for squares.
* **MI and NMI** come from a joint histogram with ``bins`` x ``bins`` cells (default 32). Each image
  is binned uniformly between the 0.5th and 99.5th percentiles of its own values over the overlap
  (values beyond are counted in the end bins), so a few extreme voxels do not squeeze the anatomy
  into one bin. Percentiles come from a deterministic sample of the overlap, every k-th voxel along
  each axis (65,000 to 520,000 voxels; all of them when the overlap is smaller); if the percentiles
  coincide, the sample's min/max, then the exact min/max are used.
  MI = H(A) + H(B) - H(A,B) in nats; NMI = (H(A) + H(B)) / H(A,B) (Studholme), in [1, 2]. Values
  depend on ``bins``: compare scores only when they were computed with the same settings.

Pixel types: any SimpleITK scalar type (int8..uint64, float32/64). The moving image is resampled as
float32 when float32 holds each of its values exactly (8/16-bit integers, float32), else as float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .images import EXACT_IN_FLOAT32, bounding_box, check_volume, grid_text, same_grid
from .side_by_side import side_by_side

Metric = Literal["ncc", "mi", "nmi"]
ScoreStatus = Literal["ok", "empty_overlap", "small_overlap", "zero_variance"]

METRICS: tuple[str, ...] = ("ncc", "mi", "nmi")
METRIC_NAMES = {
    "ncc": "normalized cross-correlation",
    "mi": "mutual information",
    "nmi": "normalized mutual information",
}
DEFAULT_MIN_OVERLAP_FRACTION = 0.01
# Below ~100 samples a correlation has a standard error around 0.1 and a 32x32 histogram is mostly
# empty: such a number would look precise without being meaningful.
DEFAULT_MIN_OVERLAP_VOXELS = 100
DEFAULT_BINS = 32
MAX_BINS = 1024
ROBUST_PERCENTILES = (0.5, 99.5)

_SCALAR_PIXEL_IDS = frozenset({
    sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkInt32, sitk.sitkUInt32,
    sitk.sitkInt64, sitk.sitkUInt64, sitk.sitkFloat32, sitk.sitkFloat64,
})
_CHUNK = 1 << 17  # voxels per block: the float64 work buffers stay in cache
_BOX_WORTH_IT = 0.9  # resample only the fixed mask's bounding box when it is smaller than this share
_PARALLEL_MIN_VOXELS = 1 << 21  # below this, starting threads costs more than it saves
_SAMPLE_TARGET = 1 << 16  # voxels in the strided sample used for the median shift and the bin range
_OVERFLOW_RISK = 1e300


@dataclass(frozen=True)
class ScoreResult:
    """One similarity score and what it was computed on.

    ``value`` is None unless ``status == "ok"``; ``message`` says in plain words what happened.
    """

    metric: str
    value: float | None
    status: str
    overlap_voxels: int
    overlap_fraction: float
    nonfinite_voxels: int
    message: str
    fixed_domain_voxels: int = 0
    bins: int | None = None  # histogram bins per image (MI/NMI); None for NCC

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: plain Python numbers and strings, ``None`` for a missing value."""
        return {
            "metric": self.metric,
            "value": self.value,
            "status": self.status,
            "ok": self.ok,
            "overlap_voxels": self.overlap_voxels,
            "overlap_fraction": self.overlap_fraction,
            "fixed_domain_voxels": self.fixed_domain_voxels,
            "nonfinite_voxels": self.nonfinite_voxels,
            "bins": self.bins,
            "message": self.message,
        }


# ----------------------------------------------------------------------------------------------
# Public API


@overload
def score(fixed: sitk.Image, moving: sitk.Image | np.ndarray, *, metric: str = ...,
          transform: sitk.Transform | None = ..., fixed_mask: sitk.Image | None = ...,
          moving_mask: sitk.Image | None = ..., resampled: bool = ...,
          valid_mask: sitk.Image | np.ndarray | None = ..., min_overlap_fraction: float = ...,
          min_overlap_voxels: int = ..., bins: int = ...) -> ScoreResult: ...


@overload
def score(fixed: sitk.Image, moving: sitk.Image | np.ndarray, *, metric: Iterable[str],
          transform: sitk.Transform | None = ..., fixed_mask: sitk.Image | None = ...,
          moving_mask: sitk.Image | None = ..., resampled: bool = ...,
          valid_mask: sitk.Image | np.ndarray | None = ..., min_overlap_fraction: float = ...,
          min_overlap_voxels: int = ..., bins: int = ...) -> dict[str, ScoreResult]: ...


def score(fixed: sitk.Image, moving: sitk.Image | np.ndarray, *, metric: str | Iterable[str] = "ncc",
          transform: sitk.Transform | None = None, fixed_mask: sitk.Image | None = None,
          moving_mask: sitk.Image | None = None, resampled: bool = False,
          valid_mask: sitk.Image | np.ndarray | None = None,
          min_overlap_fraction: float = DEFAULT_MIN_OVERLAP_FRACTION,
          min_overlap_voxels: int = DEFAULT_MIN_OVERLAP_VOXELS,
          bins: int = DEFAULT_BINS) -> ScoreResult | dict[str, ScoreResult]:
    """Score ``moving`` (seen through ``transform``) against ``fixed``.

    ``metric`` is one name (returns a :class:`ScoreResult`) or several (returns them keyed by
    name, all from one resampling and one pass over the overlap). ``transform`` maps fixed points
    to moving points (None: identity). ``fixed_mask`` must lie on the fixed grid, ``moving_mask``
    on the moving grid; nonzero voxels are foreground.

    ``resampled=True``: ``moving`` is already on the fixed grid (an image, or an array in numpy
    z, y, x order) and ``valid_mask`` (a boolean array, or a mask image on the fixed grid) marks
    the voxels that were sampled inside the moving image's domain, as :func:`resample_with_validity`
    returns it; fold a resampled moving mask into it. None means every voxel is valid. Whatever
    value the resampler wrote outside the domain is never read.
    """
    names = _metric_names(metric)
    options = _Options.checked(min_overlap_fraction, min_overlap_voxels, bins)
    check_volume(fixed, role="fixed image")
    _check_scalar(fixed, "fixed image")
    if resampled:
        if transform is not None or moving_mask is not None:
            raise InputError("A moving image already on the fixed grid takes no transform and no moving mask "
                             "(fold the resampled moving mask into valid_mask); received "
                             + " and ".join(n for n, v in (("a transform", transform),
                                                           ("a moving mask", moving_mask)) if v is not None)
                             + ".")
        results = _score_on_fixed_grid(fixed, moving, valid_mask, fixed_mask, names, options)
    else:
        if valid_mask is not None:
            raise InputError("valid_mask applies only to a moving image already on the fixed grid "
                             "(resampled=True); received a valid_mask with resampled=False.")
        if not isinstance(moving, sitk.Image):
            raise InputError(f"The moving image must be a SimpleITK image; received {type(moving).__name__} "
                             "(an array already on the fixed grid needs resampled=True).")
        results = _score_through(fixed, moving, transform, fixed_mask, moving_mask, names, options)
    return results[names[0]] if isinstance(metric, str) else results


def _score_through(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None,
                   fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None, names: list[str],
                   options: _Options) -> dict[str, ScoreResult]:
    """Resample ``moving`` onto the fixed grid (only the fixed mask's bounding box) and score it."""
    check_volume(moving, role="moving image")
    _check_scalar(moving, "moving image")
    transform = _checked_transform(transform)
    fixed_in = _mask_array(fixed_mask, fixed, "fixed mask", "fixed image") if fixed_mask is not None else None
    if moving_mask is not None:
        _mask_array(moving_mask, moving, "moving mask", "moving image")
    # Only the fixed mask's bounding box can contribute: resample that part of the grid alone.
    box = _mask_box(fixed_in) if fixed_in is not None else None
    reference = fixed if box is None else _sub_grid(fixed, box)
    resampled, valid, finite_inside = _resample(reference, moving, transform, sitk.sitkLinear)
    if moving_mask is not None:
        valid &= _resample_mask(moving_mask, reference, transform)
    fixed_values = sitk.GetArrayViewFromImage(fixed)
    if box is not None and fixed_in is not None:
        fixed_values, fixed_in = fixed_values[box], fixed_in[box]
    return _score_arrays(fixed_values, sitk.GetArrayViewFromImage(resampled), valid, fixed_in, names, options,
                         moving_checked_finite=finite_inside)


def _score_on_fixed_grid(fixed: sitk.Image, moving: sitk.Image | np.ndarray,
                         valid_mask: sitk.Image | np.ndarray | None, fixed_mask: sitk.Image | None,
                         names: list[str], options: _Options) -> dict[str, ScoreResult]:
    """Score a moving image that is already on the fixed grid, where ``valid_mask`` says it has data."""
    fixed_array = sitk.GetArrayViewFromImage(fixed)
    moving_array = _on_fixed_grid(moving, fixed, "resampled moving image")
    if valid_mask is None:
        valid = None
    elif isinstance(valid_mask, sitk.Image):
        valid = _mask_array(valid_mask, fixed, "validity mask", "fixed image")
    else:
        valid = _on_fixed_grid(valid_mask, fixed, "validity mask")
        if valid.dtype != np.bool_:
            raise InputError(f"The validity mask must be a boolean array; received dtype {valid.dtype}.")
        valid = valid.copy()  # combined with other masks in place below; the caller's array stays untouched
    fixed_in = _mask_array(fixed_mask, fixed, "fixed mask", "fixed image") if fixed_mask is not None else None
    return _score_arrays(fixed_array, moving_array, valid, fixed_in, names, options,
                         moving_checked_finite=False)


def resample_with_validity(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None = None,
                           *, interpolator: int = sitk.sitkLinear) -> tuple[sitk.Image, np.ndarray]:
    """``moving`` resampled onto the fixed grid, and where it has data.

    Returns a float image on the fixed grid (NaN outside the moving domain) and a boolean array
    (numpy z, y, x order) that is True where the transformed fixed voxel centre falls inside the
    moving image's domain. Non-finite moving values inside the domain stay non-finite and valid.
    """
    check_volume(fixed, role="fixed image")
    check_volume(moving, role="moving image")
    _check_scalar(fixed, "fixed image")
    _check_scalar(moving, "moving image")
    resampled, valid, _ = _resample(fixed, moving, _checked_transform(transform), interpolator)
    return resampled, valid


def _resample(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
              interpolator: int) -> tuple[sitk.Image, np.ndarray, bool]:
    """:func:`resample_with_validity` plus whether every valid resampled value is known finite."""
    pixel_type = sitk.sitkFloat32 if moving.GetPixelID() in EXACT_IN_FLOAT32 else sitk.sitkFloat64
    finite = _moving_known_finite(moving)
    source = moving
    if not finite:
        # ITK clamps an interpolated Inf to the largest finite value of the output type, which would
        # then pass for data: turn Inf into NaN first, which interpolation carries through.
        values = sitk.GetArrayViewFromImage(moving)
        source = sitk.GetImageFromArray(np.where(np.isfinite(values), values, np.nan))
        source.CopyInformation(moving)
    resampled = sitk.Resample(source, fixed, transform, interpolator, math.nan, pixel_type)
    if not finite or _interpolation_may_overflow(moving):
        # NaN inside the moving image would look like "outside": ask the resampler where the domain
        # is with an image of ones instead.
        ones = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + 1.0
        ones.CopyInformation(moving)
        inside = sitk.Resample(ones, fixed, transform, interpolator, 0.0, sitk.sitkFloat32)
        return resampled, sitk.GetArrayViewFromImage(inside) > 0.5, False
    # NaN marks exactly the voxels the resampler placed outside the moving domain.
    return resampled, np.isfinite(sitk.GetArrayViewFromImage(resampled)), True


# ----------------------------------------------------------------------------------------------
# Input checks


@dataclass(frozen=True)
class _Options:
    min_overlap_fraction: float
    min_overlap_voxels: int
    bins: int

    @staticmethod
    def checked(min_overlap_fraction: float, min_overlap_voxels: int, bins: int) -> _Options:
        fraction = _number(min_overlap_fraction, "min_overlap_fraction")
        if not 0.0 <= fraction <= 1.0:
            raise InputError(
                f"min_overlap_fraction must be between 0 and 1; received {min_overlap_fraction!r}.")
        voxels = _integer(min_overlap_voxels, "min_overlap_voxels")
        if voxels < 1:
            raise InputError(f"min_overlap_voxels must be at least 1; received {min_overlap_voxels!r}.")
        count = _integer(bins, "bins")
        if not 2 <= count <= MAX_BINS:
            raise InputError(f"bins must be between 2 and {MAX_BINS}; received {bins!r}.")
        return _Options(fraction, voxels, count)


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a number; received {value!r}.")
    if not math.isfinite(float(value)):
        raise InputError(f"{name} must be finite; received {value!r}.")
    return float(value)


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer; received {value!r}.")
    return int(value)


def _metric_names(metrics: Iterable[str] | str) -> list[str]:
    if isinstance(metrics, str) or not isinstance(metrics, Iterable):
        metrics = [metrics]
    names: list[str] = []
    for metric in metrics:
        name = metric.strip().lower() if isinstance(metric, str) else metric
        if name not in METRICS:
            raise InputError(f"Unknown metric {metric!r}; expected one of {', '.join(METRICS)}.")
        if name not in names:
            names.append(name)
    if not names:
        raise InputError(f"No metric was requested; expected one or more of {', '.join(METRICS)}.")
    return names


def _check_scalar(image: sitk.Image, role: str) -> None:
    if image.GetPixelID() not in _SCALAR_PIXEL_IDS:
        raise InputError(
            f"The {role} must have a real scalar pixel type (int8..uint64, float32/64); received "
            f"{image.GetPixelIDTypeAsString()}."
        )


def _checked_transform(transform: sitk.Transform | None) -> sitk.Transform:
    if transform is None:
        return sitk.Transform(3, sitk.sitkIdentity)
    if not isinstance(transform, sitk.Transform):
        raise InputError(
            f"The transform must be a SimpleITK transform or None; received {type(transform).__name__}.")
    if transform.GetDimension() != 3:
        raise InputError(f"The transform must be 3D; received a {transform.GetDimension()}D transform.")
    return transform


def _values_on_grid(image: sitk.Image, reference: sitk.Image, role: str, reference_role: str) -> np.ndarray:
    """The (z, y, x) values of ``image``, a scalar volume that must lie on ``reference``'s grid."""
    check_volume(image, role=role)
    _check_scalar(image, role)
    if not same_grid(image, reference):
        raise InputError(
            f"The {role} must lie on the {reference_role}'s voxel grid. {role.capitalize()}: "
            f"{grid_text(image)}; {reference_role}: {grid_text(reference)}."
        )
    return sitk.GetArrayViewFromImage(image)


def _mask_array(mask: sitk.Image, reference: sitk.Image, role: str, reference_role: str) -> np.ndarray:
    """Boolean (z, y, x) foreground of ``mask``, which must lie on ``reference``'s grid."""
    values = _values_on_grid(mask, reference, role, reference_role)
    if values.dtype.kind == "f" and not np.all((values == 0) | (values == 1)):
        raise InputError(
            f"The {role} has a floating-point pixel type, so it must contain only 0 and 1; it has other "
            "values. Threshold it into a label image first."
        )
    return values != 0


def _resample_mask(mask: sitk.Image, fixed: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    resampled = sitk.Resample(binary, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(resampled) != 0


def _on_fixed_grid(data: sitk.Image | np.ndarray, fixed: sitk.Image, role: str) -> np.ndarray:
    shape = tuple(reversed(fixed.GetSize()))
    if isinstance(data, sitk.Image):
        return _values_on_grid(data, fixed, role, "fixed image")
    if not isinstance(data, np.ndarray):
        raise InputError(
            f"The {role} must be a SimpleITK image or a numpy array; received {type(data).__name__}.")
    if data.shape != shape:
        raise InputError(
            f"The {role} must have the fixed image's array shape {shape} (z, y, x); received {data.shape}."
        )
    if data.dtype.kind not in "biuf":
        raise InputError(f"The {role} must hold real numbers; received dtype {data.dtype}.")
    return np.ascontiguousarray(data)


def _mask_box(inside: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The (z, y, x) bounding box of ``inside``, or None when it would not save enough to matter."""
    box = bounding_box(inside)
    if box is None:
        return None  # an empty mask: the full path reports it
    kept = math.prod(e.stop - e.start for e in box)
    return box if kept < _BOX_WORTH_IT * inside.size else None


def _sub_grid(image: sitk.Image, box: tuple[slice, slice, slice]) -> sitk.Image:
    """An empty image on the part of ``image``'s grid given by the numpy (z, y, x) ``box``."""
    z, y, x = box
    start = [x.start, y.start, z.start]
    reference = sitk.Image([x.stop - x.start, y.stop - y.start, z.stop - z.start], sitk.sitkUInt8)
    reference.SetSpacing(image.GetSpacing())
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(image.TransformIndexToPhysicalPoint(start))
    return reference


def _moving_known_finite(moving: sitk.Image) -> bool:
    values = sitk.GetArrayViewFromImage(moving)
    return values.dtype.kind != "f" or bool(np.isfinite(values).all())


def _interpolation_may_overflow(moving: sitk.Image) -> bool:
    """True for float64 values so large that differences of neighbours may overflow to Inf/NaN."""
    if moving.GetPixelID() != sitk.sitkFloat64:
        return False
    return _max_abs(sitk.GetArrayViewFromImage(moving).reshape(-1), None, finite_only=True) > _OVERFLOW_RISK


# ----------------------------------------------------------------------------------------------
# Scoring on one grid


def _score_arrays(fixed: np.ndarray, moving: np.ndarray, valid: np.ndarray | None,
                  fixed_in: np.ndarray | None, names: list[str], options: _Options, *,
                  moving_checked_finite: bool) -> dict[str, ScoreResult]:
    """Score ``moving`` against ``fixed`` (same shape) on ``valid`` & ``fixed_in``; ``valid`` may be
    modified in place (callers pass their own copy)."""
    domain_voxels = int(np.count_nonzero(fixed_in)) if fixed_in is not None else fixed.size
    use = valid
    if fixed_in is not None:
        use = fixed_in if use is None else np.logical_and(use, fixed_in, out=use)
    candidates = int(np.count_nonzero(use)) if use is not None else fixed.size
    n = candidates
    for values in [fixed] if moving_checked_finite else [fixed, moving]:
        if values.dtype.kind != "f":
            continue
        bad = ~np.isfinite(values)
        if use is not None:
            bad &= use
        if bad.any():
            use = ~bad if use is None else np.logical_and(use, ~bad, out=use)
            n = int(np.count_nonzero(use))
    nonfinite = candidates - n  # a voxel bad in both images counts once
    if use is not None and n == use.size:
        use = None  # everything counts: skip the per-block selection
    fraction = n / domain_voxels if domain_voxels else 0.0

    def degenerate(status: str, message: str) -> dict[str, ScoreResult]:
        return {name: ScoreResult(name, None, status, n, fraction, nonfinite, message, domain_voxels,
                                  options.bins if name != "ncc" else None) for name in names}

    if n == 0:
        return degenerate("empty_overlap", _empty_message(domain_voxels, candidates, fixed_in is not None))
    if fraction < options.min_overlap_fraction or n < options.min_overlap_voxels:
        if fraction < options.min_overlap_fraction:
            found = f"Only {_pct(fraction)} of the fixed domain ({n} voxels) overlaps the moving image"
        else:  # the share is enough, the count is not: say so instead of "only 100%"
            found = (f"Only {n} voxels ({_pct(fraction)} of the fixed domain) overlap the moving image: too "
                     "few for a meaningful score")
        return degenerate("small_overlap", (
            f"{found}; at least {_pct(options.min_overlap_fraction)} and {options.min_overlap_voxels} voxels "
            "are required." + _nonfinite_note(nonfinite)))

    need_histogram = any(name != "ncc" for name in names)
    stats = _overlap_statistics(fixed, moving, use, n, options.bins if need_histogram else 0)
    constant = [role for role, side in (("fixed", stats.fixed), ("moving", stats.moving)) if stats.flat(side)]
    if constant:
        which = "fixed image is" if constant == ["fixed"] else (
            "moving image is" if constant == ["moving"] else "fixed and moving images are")
        return degenerate("zero_variance", (
            f"The {which} constant over the {n} overlapping "
            "voxels (zero variance): the score carries no information about alignment."
            + _nonfinite_note(nonfinite)))

    results = {}
    for name in names:
        value = stats.ncc() if name == "ncc" else stats.mutual_information(normalized=name == "nmi")
        message = (f"{METRIC_NAMES[name]} over {n} voxels ({_pct(fraction)} of the fixed domain)"
                   + (f", {options.bins} bins per image" if name != "ncc" else "") + "."
                   + _nonfinite_note(nonfinite))
        results[name] = ScoreResult(name, value, "ok", n, fraction, nonfinite, message, domain_voxels,
                                    options.bins if name != "ncc" else None)
    return results


def _pct(fraction: float) -> str:
    return f"{100.0 * fraction:.3g}%"


def _nonfinite_note(count: int) -> str:
    return f" {count} NaN/Inf voxel(s) were ignored." if count else ""


def _empty_message(domain_voxels: int, candidates: int, has_fixed_mask: bool) -> str:
    if domain_voxels == 0:
        return "The fixed mask is empty: there is no fixed voxel to score."
    if candidates == 0:
        where = " (and its mask)" if has_fixed_mask else ""
        return ("No fixed voxel maps inside the moving image's domain" + where
                + ": the images do not overlap under this transform.")
    return "Every overlapping voxel is NaN or Inf in the fixed or the moving image."


# ----------------------------------------------------------------------------------------------
# One pass over the overlap: shifted moments, extremes and the joint histogram


@dataclass
class _Side:
    """One image over the overlap. Sums are in units ``a = (x - shift) * scale``; the histogram range
    is kept in raw intensities so it survives a change of scale."""

    shift: float
    scale: float
    bin_low: float  # raw intensity of the lower edge of the first bin
    bin_high: float  # raw intensity of the upper edge of the last bin
    total: float = 0.0  # sum of a
    squares: float = 0.0  # sum of a^2

    def fresh(self) -> _Side:
        return _Side(self.shift, self.scale, self.bin_low, self.bin_high)

    def units(self, raw: float) -> float:
        return raw * self.scale - self.shift * self.scale

    def centred_squares(self, n: int) -> float:
        return self.squares - self.total * self.total / n


@dataclass
class _Statistics:
    n: int
    fixed: _Side
    moving: _Side
    cross: float  # sum of a_fixed * a_moving
    histogram: np.ndarray | None  # (bins, bins) counts: fixed bins on rows, moving bins on columns

    def flat(self, side: _Side) -> bool:
        """Constant over the overlap (or varying only by float64 rounding).

        Exact for constant data: the shift is one of the values, so every ``a`` is exactly 0.
        """
        return not side.centred_squares(self.n) > 0.0

    def ncc(self) -> float:
        var_f = self.fixed.centred_squares(self.n)
        var_m = self.moving.centred_squares(self.n)
        covariance = self.cross - self.fixed.total * self.moving.total / self.n
        value = covariance / math.sqrt(var_f) / math.sqrt(var_m)
        return float(min(1.0, max(-1.0, value)))

    def mutual_information(self, *, normalized: bool) -> float:
        assert self.histogram is not None
        joint = self.histogram / float(self.n)
        h_f = _entropy(joint.sum(axis=1))
        h_m = _entropy(joint.sum(axis=0))
        h_joint = _entropy(joint.ravel())
        if normalized:
            return float(min(2.0, max(1.0, (h_f + h_m) / h_joint))) if h_joint > 0.0 else 1.0
        return float(max(0.0, h_f + h_m - h_joint))


def _entropy(p: np.ndarray) -> float:
    nz = p[p > 0]
    return float(-np.sum(nz * np.log(nz)))


def _overlap_statistics(fixed: np.ndarray, moving: np.ndarray, use: np.ndarray | None, n: int,
                        bins: int) -> _Statistics:
    sample_f, sample_m = _strided_sample(fixed, moving, use, n)
    sides = [_plan_side(sample_f), _plan_side(sample_m)]
    flat_f, flat_m = fixed.reshape(-1), moving.reshape(-1)
    flat_use = use.reshape(-1) if use is not None else None
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        stats = _accumulate(flat_f, flat_m, flat_use, sides, bins)
        if not _healthy(stats):
            # Values too large (squares overflow) or too small (squares underflow) for the sample's
            # scale: rescale from the exact largest magnitude and go again.
            for side, values in zip(sides, (flat_f, flat_m)):
                side.scale = _power_of_two_scale(_max_abs(values, flat_use))
            stats = _accumulate(flat_f, flat_m, flat_use, sides, bins)
        narrow = [not side.bin_high > side.bin_low and not stats.flat(side)
                  for side in (stats.fixed, stats.moving)]
        if bins and any(narrow):
            # The sample saw a single value but the overlap has more: bin between the exact extremes.
            for side, values, redo in zip(sides, (flat_f, flat_m), narrow):
                if redo:
                    side.bin_low, side.bin_high = _extremes(values, flat_use)
            stats = _accumulate(flat_f, flat_m, flat_use, sides, bins)
    return stats


def _healthy(stats: _Statistics) -> bool:
    """False when the sums overflowed, or underflowed into subnormals or zero."""
    for side in (stats.fixed, stats.moving):
        if not (math.isfinite(side.total) and math.isfinite(side.squares)):
            return False
        if 0.0 < side.squares < 1e-200 or (side.squares == 0.0 and side.total != 0.0):
            return False
    return math.isfinite(stats.cross)


def _strided_sample(fixed: np.ndarray, moving: np.ndarray, use: np.ndarray | None,
                    n: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic, evenly spread sample of the overlap values (all of them when small)."""
    step = max(1, int((n / _SAMPLE_TARGET) ** (1.0 / 3.0)))
    while True:
        view = (slice(None, None, step),) * 3
        if use is None:
            sample_f, sample_m = fixed[view].ravel(), moving[view].ravel()
        else:
            chosen = use[view]
            sample_f, sample_m = fixed[view][chosen], moving[view][chosen]
        # A thin overlap can slip between the strides: then take every voxel.
        if step == 1 or sample_f.size >= min(n, 4096):
            return sample_f, sample_m
        step = 1


def _plan_side(sample: np.ndarray) -> _Side:
    middle = sample.size // 2
    shift = float(np.partition(sample, middle)[middle])  # a data value: constant data shift to exactly 0
    values = sample.astype(np.float64)
    peak = float(np.max(np.abs(values)))
    low, high = (float(v) for v in np.percentile(values, ROBUST_PERCENTILES))
    if not high > low:
        low, high = float(values.min()), float(values.max())
    scale = 1.0 if 1e-100 <= peak <= 1e100 else _power_of_two_scale(peak)
    return _Side(shift=shift, scale=scale, bin_low=low, bin_high=high)


def _power_of_two_scale(peak: float) -> float:
    """A power of two bringing ``peak`` near 1 (exact in binary floating point)."""
    if peak == 0.0:
        return 1.0
    if not math.isfinite(peak):
        return math.ldexp(1.0, -1000)
    return math.ldexp(1.0, max(-1000, min(1000, -math.frexp(peak)[1])))


def _extremes(values: np.ndarray, use: np.ndarray | None) -> tuple[float, float]:
    low, high = math.inf, -math.inf
    for start in range(0, values.size, _CHUNK):
        block = values[start:start + _CHUNK]
        if use is not None:
            block = block[use[start:start + _CHUNK]]
        if block.size:
            low, high = min(low, float(block.min())), max(high, float(block.max()))
    return low, high


def _max_abs(values: np.ndarray, use: np.ndarray | None, *, finite_only: bool = False) -> float:
    peak = 0.0
    for start in range(0, values.size, _CHUNK):
        block = values[start:start + _CHUNK]
        if use is not None:
            block = block[use[start:start + _CHUNK]]
        block = np.abs(block.astype(np.float64))
        if finite_only:
            block = block[np.isfinite(block)]
        if block.size:
            peak = max(peak, float(block.max()))
    return peak


def _accumulate(flat_f: np.ndarray, flat_m: np.ndarray, use: np.ndarray | None, sides: list[_Side],
                bins: int) -> _Statistics:
    """Moments and (if ``bins``) the joint histogram over the overlap.

    Large volumes are split into two fixed halves processed side by side (numpy releases the GIL
    in its loops) and merged in order, so results do not depend on the machine's core count.
    """
    if flat_f.size < _PARALLEL_MIN_VOXELS:
        return _accumulate_range(flat_f, flat_m, use, sides, bins, 0, flat_f.size)
    middle = (flat_f.size // 2) // _CHUNK * _CHUNK
    first, second = side_by_side(lambda: _accumulate_range(flat_f, flat_m, use, sides, bins, 0, middle),
                                 lambda: _accumulate_range(flat_f, flat_m, use, sides, bins, middle, flat_f.size))
    for side, other in ((first.fixed, second.fixed), (first.moving, second.moving)):
        side.total += other.total
        side.squares += other.squares
    histogram = None
    if first.histogram is not None and second.histogram is not None:
        histogram = first.histogram + second.histogram
    return _Statistics(first.n + second.n, first.fixed, first.moving, first.cross + second.cross, histogram)


def _accumulate_range(flat_f: np.ndarray, flat_m: np.ndarray, use: np.ndarray | None, sides: list[_Side],
                      bins: int, begin: int, end: int) -> _Statistics:
    """Shifted moments and the joint histogram of voxels ``begin:end``, block by block.

    The shift (a sample median) keeps the float64 sums free of cancellation; blocks keep the work
    buffers in cache and avoid whole-volume temporaries.
    """
    fixed, moving = sides[0].fresh(), sides[1].fresh()
    size = min(_CHUNK, end - begin)
    a = np.empty(size, np.float64)
    b = np.empty(size, np.float64)
    product = np.empty(size, np.float64)
    histogram = np.zeros(bins * bins, np.int64) if bins else None
    work = np.empty(size, np.float32)
    index_f = np.empty(size, np.int32)
    index_m = np.empty(size, np.int32)
    maps = [_bin_map(side, bins) for side in (fixed, moving)] if bins else []
    cross = 0.0
    n = 0
    for start in range(begin, end, _CHUNK):
        stop = min(start + _CHUNK, end)
        block_f, block_m = flat_f[start:stop], flat_m[start:stop]
        if use is not None:
            chosen = use[start:stop]
            if not chosen.all():
                block_f, block_m = block_f[chosen], block_m[chosen]
        k = block_f.size
        if k == 0:
            continue
        n += k
        for side, block, buffer in ((fixed, block_f, a), (moving, block_m, b)):
            out = buffer[:k]
            np.copyto(out, block)  # faster than a mixed-type subtract
            if side.scale != 1.0:
                out *= side.scale
            out -= side.shift * side.scale
            side.total += float(out.sum())
            # multiply + sum instead of np.dot: a multi-threaded BLAS dot on blocks this size spins
            # idle threads that slow numpy and the next ITK filter down on a 2-core machine.
            side.squares += float(np.multiply(out, out, out=product[:k]).sum())
        cross += float(np.multiply(a[:k], b[:k], out=product[:k]).sum())
        if histogram is not None:
            for (gain, offset), values, index in zip(maps, (a, b), (index_f, index_m)):
                w = work[:k]
                np.copyto(w, values[:k], casting="same_kind")
                w *= gain
                w += offset
                np.clip(w, 0.0, bins - 1, out=w)
                np.copyto(index[:k], w, casting="unsafe")  # truncation is floor here: w >= 0
            joint = index_f[:k]
            joint *= bins
            joint += index_m[:k]
            histogram += np.bincount(joint, minlength=bins * bins)
    return _Statistics(n, fixed, moving, cross,
                       histogram.reshape(bins, bins) if histogram is not None else None)


def _bin_map(side: _Side, bins: int) -> tuple[np.float32, np.float32]:
    """float32 gain and offset taking ``a`` to a fractional bin position."""
    low, high = side.units(side.bin_low), side.units(side.bin_high)
    if not high > low:
        return np.float32(0.0), np.float32(0.0)  # one value: bin 0 (re-binned if the overlap has more)
    gain = bins / (high - low)
    return np.float32(gain), np.float32(-low * gain)
