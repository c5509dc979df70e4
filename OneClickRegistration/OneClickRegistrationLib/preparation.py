"""Getting a pair ready for an engine: float32 copies, CT windowing, finite values, head masks.

The caller's images are never modified: every step makes a new image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import SimpleITK as sitk

from .engines.base import EngineRequest
from .errors import InputError
from .images import MIN_VOXELS_PER_AXIS, check_volume, describe, same_grid, to_float32
from .initial_search import PARTIAL_EXTENT_MM, search_start, thinnest_extent_mm
from .masks import OVERLAP_MARGIN_MM, head_mask, head_overlap
from .metrics import DEFAULT_MIN_OVERLAP_VOXELS
from .modality import Modality
from .presets import Preset, level_shrink_factors, preset_for
from .side_by_side import side_by_side

_QUANTILE_SAMPLE = 200_000  # voxels sampled to estimate winsorizing quantiles (exact enough, fast)
# Pixel types whose every value float32 holds exactly; the others may need a shift first.
_EXACT_IN_FLOAT32 = frozenset({
    sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkFloat32,
})
_FLOAT32_EXACT_INTEGERS = 2.0**24  # beyond this float32 cannot tell neighbouring integers apart
# Scores and the verdict's head agreement are taken on every k-th fixed voxel along each axis, k chosen
# so the voxels are about this size: a 1 mm head still gives some 400,000 samples (a 32 x 32 histogram
# needs far fewer), and a 0.5 mm CT costs no more than a 2 mm one. The fixed values are not averaged.
STATISTICS_SPACING_MM = 2.0


@dataclass(frozen=True)
class PreparedPair:
    """What the engines and the scorer see: prepared float32 images and head masks."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_head: sitk.Image  # uint8 on the fixed grid
    moving_head: sitk.Image  # uint8 on the moving grid
    notes: tuple[str, ...]
    metric: str = "nmi"  # the preset's score metric: what the initial search compares candidates with
    # The masks are the user's (they then also restrict the engine's sampling), not automatic head masks.
    fixed_mask_given: bool = False
    moving_mask_given: bool = False

    @cached_property
    def statistics_grid(self) -> tuple[sitk.Image, sitk.Image]:
        """The fixed image and head mask on every k-th voxel (:data:`STATISTICS_SPACING_MM`), made once.

        A subset of the fixed voxels, values untouched: a score there is the full grid's score over a
        regular sample of its voxels.
        """
        strides = statistics_strides(self.fixed)
        if all(k == 1 for k in strides):
            return self.fixed, self.fixed_head
        kx, ky, kz = strides
        return self.fixed[::kx, ::ky, ::kz], self.fixed_head[::kx, ::ky, ::kz]


def statistics_strides(image: sitk.Image) -> list[int]:
    """Per axis (x, y, z): every how many voxels statistics sample ``image`` (never fewer than 4 voxels)."""
    return [max(1, min(int(STATISTICS_SPACING_MM // s), n // 4)) for n, s in zip(image.GetSize(), image.GetSpacing())]


def _float32_keeping_contrast(image: sitk.Image, role: str, notes: list[str]) -> sitk.Image:
    """A float32 copy; values too large for float32's precision are shifted to start at 0 first.

    A 64-bit image whose values sit far from zero (a uint64 scanner offset, float64 data around 1e12)
    would otherwise collapse to a handful of float32 values and look constant to the engines. Hounsfield
    units never come near 2**24, so CT windowing, which needs absolute values, is never affected.
    """
    if image.GetPixelID() in _EXACT_IN_FLOAT32:
        return to_float32(image)
    values = sitk.GetArrayViewFromImage(image)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return to_float32(image)
    low, high = finite.min(), finite.max()
    if max(abs(float(low)), abs(float(high))) <= _FLOAT32_EXACT_INTEGERS:
        return to_float32(image)
    if values.dtype.kind in "iu":
        # Modular uint64 arithmetic gives the exact difference for every int64/uint64 pair.
        shifted = (values.astype(np.uint64) - np.array(low).astype(np.uint64)).astype(np.float32)
    else:
        shifted = (values.astype(np.float64) - float(low)).astype(np.float32)
    clean = sitk.GetImageFromArray(shifted)
    clean.CopyInformation(image)
    notes.append(
        f"The {role} image's values ({float(low):.6g} to {float(high):.6g}) were shifted by {-float(low):.6g} "
        "before conversion to 32-bit floats, which could not otherwise tell them apart."
    )
    return clean


def _finite(image: sitk.Image, role: str, notes: list[str]) -> sitk.Image:
    """Replace NaN/Inf voxels by the image's finite minimum (background) and say how many."""
    array = sitk.GetArrayViewFromImage(image)
    bad = ~np.isfinite(array)
    count = int(bad.sum())
    if count == 0:
        return image
    fixed_array = np.where(bad, np.nanmin(np.where(bad, np.nan, array)), array).astype(np.float32)
    clean = sitk.GetImageFromArray(fixed_array)
    clean.CopyInformation(image)
    notes.append(f"The {role} image has {count} NaN/Inf voxels; they were treated as background.")
    return clean


def check_pyramid(image: sitk.Image, preset: Preset, *, role: str) -> sitk.Image:
    """Refuse an image too small for ``preset``'s registration pyramid or for a meaningful score.

    At the coarsest level every axis is shrunk the way the engines shrink it (a per-axis factor
    bringing the voxel near the level's size, never below 1), and must keep
    :data:`~.images.MIN_VOXELS_PER_AXIS` voxels; the whole image must hold the voxels a score needs.
    """
    size, spacing = image.GetSize(), image.GetSpacing()
    voxels = int(np.prod(size))
    if voxels < DEFAULT_MIN_OVERLAP_VOXELS:
        raise InputError(
            f"The {role} is too small to register: {voxels} voxels ({describe(image)}); at least "
            f"{DEFAULT_MIN_OVERLAP_VOXELS} are needed for its similarity score to mean anything."
        )
    coarsest_mm = max(level_shrink_factors(preset, spacing)) * min(spacing)
    at_coarsest = [n // max(1, round(coarsest_mm / s)) for n, s in zip(size, spacing)]
    if min(at_coarsest) < MIN_VOXELS_PER_AXIS:
        extent = "x".join(f"{n * s:.3g}" for n, s in zip(size, spacing))
        raise InputError(
            f"The {role} is too small for the registration pyramid of preset {preset.name}: at its "
            f"coarsest level ({coarsest_mm:g} mm voxels) it would have "
            f"{'x'.join(str(n) for n in at_coarsest)} voxels, and at least {MIN_VOXELS_PER_AXIS} per axis are "
            f"needed; received {'x'.join(str(n) for n in size)} voxels covering {extent} mm "
            f"({describe(image)}). The presets are made for heads (about 150-250 mm across): check the "
            "voxel spacing in the file's header."
        )
    return image


def _winsorize(image: sitk.Image, quantiles: tuple[float, float]) -> sitk.Image:
    """``image`` clamped to its ``quantiles``, as float32 (or just converted when they coincide)."""
    array = sitk.GetArrayViewFromImage(image).ravel()
    step = max(1, array.size // _QUANTILE_SAMPLE)
    lo, hi = np.quantile(array[::step], quantiles)
    if hi <= lo:
        return to_float32(image)
    return sitk.Clamp(image, sitk.sitkFloat32, float(lo), float(hi))


def prepare_intensities(
    image: sitk.Image,
    modality: Modality,
    ct_window: tuple[float, float] | None,
    winsorize: tuple[float, float],
    *,
    role: str,
    notes: list[str],
) -> sitk.Image:
    """A float32, finite, windowed (CT) or winsorized (MR) copy of ``image``."""
    if image.GetPixelID() in _EXACT_IN_FLOAT32 and image.GetPixelID() != sitk.sitkFloat32:
        # Integers float32 holds exactly, never NaN: clamping converts them in the same pass, with the
        # same values a conversion first would give, and no extra full-size copy (0.3 GB for a 0.5 mm CT).
        prepared = image
    else:
        prepared = _finite(_float32_keeping_contrast(image, role, notes), role, notes)
    if ct_window is not None and modality is Modality.CT:
        return sitk.Clamp(prepared, sitk.sitkFloat32, *ct_window)
    return _winsorize(prepared, winsorize)


def _check_mask(mask: sitk.Image, image: sitk.Image, role: str) -> sitk.Image:
    check_volume(mask, role=f"{role} mask")
    if not same_grid(mask, image):
        raise InputError(
            f"The {role} mask must lie on the {role} image's grid; received a mask {describe(mask)} "
            f"for an image {describe(image)}."
        )
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    inside = int(np.count_nonzero(sitk.GetArrayViewFromImage(binary)))
    if inside < DEFAULT_MIN_OVERLAP_VOXELS:  # too few for a score, and engines fail on them in their own words
        raise InputError(
            f"The {role} mask must cover at least {DEFAULT_MIN_OVERLAP_VOXELS} voxels of the {role} image; "
            f"received a mask of {inside}."
        )
    return binary


def prepare_pair(
    fixed: sitk.Image,
    moving: sitk.Image,
    preset: Preset,
    *,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
) -> PreparedPair:
    """Prepare both images for ``preset`` and compute (or check) their head masks."""
    # Masks first: their full-grid temporaries then never sit beside the float32 copies. Each step
    # does the two images side by side (independent work, two cores).
    fixed_head, moving_head = side_by_side(
        lambda: _check_mask(fixed_mask, fixed, "fixed") if fixed_mask is not None
        else head_mask(fixed, modality=preset.fixed_modality),
        lambda: _check_mask(moving_mask, moving, "moving") if moving_mask is not None
        else head_mask(moving, modality=preset.moving_modality),
        images=((fixed, fixed_mask), (moving, moving_mask)),
    )
    fixed_notes: list[str] = []
    moving_notes: list[str] = []
    fixed_p, moving_p = side_by_side(
        lambda: prepare_intensities(fixed, preset.fixed_modality, preset.fixed_ct_window, preset.winsorize,
                                    role="fixed", notes=fixed_notes),
        lambda: prepare_intensities(moving, preset.moving_modality, preset.moving_ct_window, preset.winsorize,
                                    role="moving", notes=moving_notes),
        images=((fixed,), (moving,)),
    )
    notes = fixed_notes + moving_notes
    return PreparedPair(fixed_p, moving_p, fixed_head, moving_head, tuple(notes), preset.score_metric,
                        fixed_mask_given=fixed_mask is not None, moving_mask_given=moving_mask is not None)


def initial_alignment(pair: PreparedPair, mode: str, *, search: bool = True) -> sitk.Euler3DTransform:
    """Where the engines start: centred on the heads, then the best of a coarse global search.

    Centring uses the moments of the head masks (``mode="moments"``) rather than of the intensities:
    CT's negative Hounsfield values and MR bias fields make intensity moments meaningless, while the
    head's shape is the same in every modality. ``mode="geometry"`` centres the image grids. With
    ``search`` the centred start is improved by :func:`.initial_search.search_start` (rotations to
    90 degrees, partial fields of view), which keeps the start when nothing scores better.
    """
    start = _centred(pair, mode)
    if not search:
        return start
    found = search_start(pair.fixed, pair.fixed_head, pair.moving, pair.moving_head, start, metric=pair.metric)
    if found is None or (found.start_value is not None and not found.value > found.start_value):
        return start
    return found.transform


def _centred(pair: PreparedPair, mode: str) -> sitk.Euler3DTransform:
    fixed_centre = mask_centroid(pair.fixed_head) if mode == "moments" else None
    moving_centre = mask_centroid(pair.moving_head) if fixed_centre is not None else None
    if fixed_centre is not None and moving_centre is not None:
        # What ITK's moments initializer gives for a rigid transform: centred on the fixed head's centroid,
        # translated onto the moving one's; computed from the masks' projections instead of float copies.
        centred = sitk.Euler3DTransform()
        centred.SetCenter(tuple(float(v) for v in fixed_centre))
        centred.SetTranslation(tuple(float(v) for v in moving_centre - fixed_centre))
        return centred
    return sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(
            pair.fixed, pair.moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
    )


def mask_centroid(mask: sitk.Image) -> np.ndarray | None:
    """Physical centroid (LPS) of a mask's nonzero voxels, or None for an empty mask.

    Voxels are weighted by their value, as ITK's moments are (the pipeline's masks hold 0 and 1). Sums
    are exact integers from the mask's projections on the axes: nothing of the mask's size is copied.
    """
    values = sitk.GetArrayViewFromImage(mask)
    if values.dtype.kind not in "biu":
        values = values != 0
    zy = values.sum(axis=2, dtype=np.int64)
    per_axis = (values.sum(axis=(0, 1), dtype=np.int64), zy.sum(axis=0), zy.sum(axis=1))  # x, y, z
    total = int(per_axis[0].sum())
    if total == 0:
        return None
    index = [float(np.dot(np.arange(p.size, dtype=np.int64), p)) / total for p in per_axis]
    return np.asarray(mask.TransformContinuousIndexToPhysicalPoint(index))


def moving_is_partial(pair: PreparedPair) -> bool:
    """True when the moving image is a slab (thinner than a head) under a fixed image that is not."""
    moving_extent = thinnest_extent_mm(pair.moving)
    return moving_extent < min(PARTIAL_EXTENT_MM, thinnest_extent_mm(pair.fixed))


# Engines that register a moving slab under a whole fixed head the other way round. Measured on CT /
# 60 mm T1 slab pairs with 6 mm CT slices: elastix 2.3 mm off sampling the CT inside the slab, 0.37 mm
# with the slab as the fixed image; the SimpleITK engine 2.4-2.6 mm masked, 0.69-0.70 mm reversed (two
# seeds), and within 0.05 mm of the masked run on three other slab pairs (CT/FLAIR, T1/T2, CT/T2).
REVERSES_SLABS = frozenset({"elastix", "simpleitk"})


def engine_request(pair: PreparedPair, preset: Preset, initial: sitk.Transform, *,
                   engine: str) -> tuple[EngineRequest, bool]:
    """What ``engine`` runs from ``initial``, and whether its result must be inverted.

    Partial fields of view by design: the engine samples only where the two images overlap. A partial
    overlap gives the engine a fixed mask, the fixed head inside the moving domain mapped through
    ``initial`` (:func:`.masks.head_overlap`); with the engines of :data:`REVERSES_SLABS`, a moving slab
    under a whole fixed head is instead registered the other way round (the slab as the fixed image,
    with the reversed pair's preset: every sample lies in the slab and inside the head) and the result
    inverted back. Masks the user gave restrict the engine's sampling too (the overlap mask is drawn
    inside the user's fixed mask).
    """
    user_fixed = pair.fixed_head if pair.fixed_mask_given else None
    user_moving = pair.moving_head if pair.moving_mask_given else None
    if engine in REVERSES_SLABS and moving_is_partial(pair):
        reversed_preset = preset_for(preset.moving_modality, preset.fixed_modality, transform=preset.transform)
        request = EngineRequest(fixed=pair.moving, moving=pair.fixed, preset=reversed_preset,
                                transform_kind=preset.transform, initial_transform=initial.GetInverse(),
                                fixed_mask=user_moving, moving_mask=user_fixed)
        return request, True
    overlap = head_overlap(pair.fixed_head, pair.moving, initial)
    if user_fixed is not None and overlap.inside_voxels == 0:
        # the engines would fail in their own words for "no sample" (ITK: "Refusing to change spacing
        # ...", elastix: "Too many samples map outside moving image buffer")
        raise InputError(
            f"The fixed mask ({overlap.head_voxels} voxels) lies entirely outside the moving image (or within "
            f"{OVERLAP_MARGIN_MM:g} mm of its border) once the images are placed by the start: expected a mask "
            "over anatomy that the moving image shows too."
        )
    request = EngineRequest(fixed=pair.fixed, moving=pair.moving, preset=preset, transform_kind=preset.transform,
                            initial_transform=initial,
                            fixed_mask=overlap.mask if overlap.mask is not None else user_fixed,
                            moving_mask=user_moving)
    return request, False


def engine_result(transform: sitk.Transform, *, inverted: bool) -> sitk.Transform:
    """The engine's transform in the pair's fixed -> moving direction (see :func:`engine_request`)."""
    return transform.GetInverse().Downcast() if inverted else transform
