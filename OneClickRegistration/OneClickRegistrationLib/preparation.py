"""Getting a pair ready for an engine: float32 copies, CT windowing, finite values, head masks.

The caller's images are never modified: every step makes a new image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .images import check_volume, describe, to_float32
from .masks import head_mask
from .modality import Modality
from .presets import Preset

_QUANTILE_SAMPLE = 200_000  # voxels sampled to estimate winsorizing quantiles (exact enough, fast)


@dataclass(frozen=True)
class PreparedPair:
    """What the engines and the scorer see: prepared float32 images and head masks."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_head: sitk.Image  # uint8 on the fixed grid
    moving_head: sitk.Image  # uint8 on the moving grid
    notes: tuple[str, ...]


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


def _winsorize(image: sitk.Image, quantiles: tuple[float, float]) -> sitk.Image:
    array = sitk.GetArrayViewFromImage(image).ravel()
    step = max(1, array.size // _QUANTILE_SAMPLE)
    lo, hi = np.quantile(array[::step], quantiles)
    if hi <= lo:
        return image
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
    prepared = _finite(to_float32(image), role, notes)
    if ct_window is not None and modality is Modality.CT:
        return sitk.Clamp(prepared, sitk.sitkFloat32, *ct_window)
    return _winsorize(prepared, winsorize)


def _check_mask(mask: sitk.Image, image: sitk.Image, role: str) -> sitk.Image:
    check_volume(mask, role=f"{role} mask")
    same = (
        mask.GetSize() == image.GetSize()
        and np.allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-4)
        and np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
        and np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-4)
    )
    if not same:
        from .errors import InputError

        raise InputError(
            f"The {role} mask must lie on the {role} image's grid; received a mask {describe(mask)} "
            f"for an image {describe(image)}."
        )
    return sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)


def prepare_pair(
    fixed: sitk.Image,
    moving: sitk.Image,
    preset: Preset,
    *,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
) -> PreparedPair:
    """Prepare both images for ``preset`` and compute (or check) their head masks."""
    notes: list[str] = []
    fixed_p = prepare_intensities(
        fixed, preset.fixed_modality, preset.fixed_ct_window, preset.winsorize, role="fixed", notes=notes
    )
    moving_p = prepare_intensities(
        moving, preset.moving_modality, preset.moving_ct_window, preset.winsorize, role="moving", notes=notes
    )
    fixed_head = (
        _check_mask(fixed_mask, fixed, "fixed")
        if fixed_mask is not None
        else head_mask(fixed, modality=preset.fixed_modality)
    )
    moving_head = (
        _check_mask(moving_mask, moving, "moving")
        if moving_mask is not None
        else head_mask(moving, modality=preset.moving_modality)
    )
    return PreparedPair(fixed_p, moving_p, fixed_head, moving_head, tuple(notes))


def initial_alignment(pair: PreparedPair, mode: str) -> sitk.Euler3DTransform:
    """Centre-of-geometry or moments initialization, computed on the head masks.

    Moments of the head masks rather than of the intensities: CT's negative Hounsfield values and
    MR bias fields make intensity moments meaningless, while the head's shape is the same in every
    modality.
    """
    if mode == "moments" and _nonempty(pair.fixed_head) and _nonempty(pair.moving_head):
        return sitk.Euler3DTransform(
            sitk.CenteredTransformInitializer(
                sitk.Cast(pair.fixed_head, sitk.sitkFloat32),
                sitk.Cast(pair.moving_head, sitk.sitkFloat32),
                sitk.Euler3DTransform(),
                sitk.CenteredTransformInitializerFilter.MOMENTS,
            )
        )
    return sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(
            pair.fixed, pair.moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
    )


def _nonempty(mask: sitk.Image) -> bool:
    return bool(np.any(sitk.GetArrayViewFromImage(mask)))
