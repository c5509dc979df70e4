"""Automatic foreground (head) masks, so that a score is not dominated by air.

Rule, for an image of any pixel type, spacing and orientation:

1. Threshold. CT in Hounsfield units (modality CT, or modality unknown and the image reaches -500 or
   below): voxels above -500 HU, halfway between air (-1000) and soft tissue (0). Otherwise (MR, or
   CT that is not in HU): the robust-range rule of FSL's BET, ``p2 + 0.1 * (p98 - p2)`` over the
   finite voxels, which sits just above the background noise of a magnitude image.
2. Keep the largest connected component (drops the CT table, headrest and noise specks).
3. Close gaps narrower than about 2 x ``CLOSING_MM`` (dark skull under bright scalp in MR), with a
   per-axis radius from the voxel spacing, so thick slices are not over-smoothed across slices.
4. Fill enclosed holes (ventricles, sinuses).

Morphology works in voxel index space, so oblique directions need nothing special. NaN/Inf voxels
are background. An image without intensity structure (constant, or without any finite voxel) gets
an **empty** mask: no voxel can be told apart from the background, and a score on it then reports
``empty_overlap`` instead of scoring air.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .images import check_volume
from .modality import Modality, parse_modality

CT_AIR_THRESHOLD_HU = -500.0
BACKGROUND_FRACTION = 0.1  # BET: threshold at p2 + 0.1 * (p98 - p2)
CLOSING_MM = 4.0
WORK_SPACING_MM = 2.0  # closing and filling run on about this grid (see _close_and_fill)
_SAMPLE_TARGET = 1 << 18


def head_mask(image: sitk.Image, *, modality: str | Modality | None = None) -> sitk.Image:
    """A uint8 mask (1 = head) on ``image``'s grid; see the module notes for the rule."""
    check_volume(image, role="image to mask")
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind not in "iuf":
        raise InputError(
            "The image to mask must have a real scalar pixel type; received "
            f"{image.GetPixelIDTypeAsString()}."
        )
    mod = parse_modality(modality) if modality is not None else None
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    sample = _finite_sample(values)
    if sample.size == 0 or sample.min() == sample.max():
        return empty
    threshold = _threshold(sample, mod)
    with np.errstate(invalid="ignore"):
        foreground = np.asarray(values > threshold, dtype=np.uint8)
    if not foreground.any():
        return empty  # only reachable when the sample missed the few voxels above the threshold
    mask = sitk.GetImageFromArray(foreground)
    mask.CopyInformation(image)
    mask = _largest_component(mask)
    mask = _close_and_fill(mask)
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    mask.CopyInformation(image)
    return mask


def _close_and_fill(mask: sitk.Image) -> sitk.Image:
    """Closing and hole filling, done on a grid of about ``WORK_SPACING_MM`` for fine images.

    A ball closing of radius ``CLOSING_MM`` at 1 mm costs seconds on a head volume; at 2 mm it costs
    an eighth. The closed mask is brought back with nearest neighbour and joined with the fine mask,
    so the boundary keeps full resolution wherever no gap was closed.
    """
    spacing = mask.GetSpacing()
    factors = [max(1, min(n, int(WORK_SPACING_MM // s))) for n, s in zip(mask.GetSize(), spacing)]
    small = mask
    if any(f > 1 for f in factors):
        small = sitk.BinaryThreshold(sitk.BinShrink(sitk.Cast(mask, sitk.sitkFloat32), factors), 0.25, 2.0, 1, 0)
    # Never wider than the image: a 0.01 mm grid would otherwise ask for a ball hundreds of voxels
    # wide, whose construction alone takes seconds, for a closing that cannot reach any further.
    radius = [min(round(CLOSING_MM / s), n) for s, n in zip(small.GetSpacing(), small.GetSize())]
    if any(radius):
        small = sitk.BinaryMorphologicalClosing(small, radius, sitk.sitkBall, 1, True)
    small = sitk.BinaryFillhole(small, False, 1)
    if small.GetSize() == mask.GetSize():
        return small
    back = sitk.Resample(small, mask, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.BinaryFillhole(sitk.Or(back, sitk.Cast(mask, sitk.sitkUInt8)), False, 1)


def _finite_sample(values: np.ndarray) -> np.ndarray:
    """An evenly strided sample of the finite voxels (every voxel for small images)."""
    step = max(1, int((values.size / _SAMPLE_TARGET) ** (1.0 / 3.0)))
    sample = values[::step, ::step, ::step].ravel().astype(np.float64)
    return sample[np.isfinite(sample)]


def _threshold(sample: np.ndarray, modality: Modality | None) -> float:
    low, high = float(sample.min()), float(sample.max())
    in_hounsfield = low <= CT_AIR_THRESHOLD_HU < high
    if in_hounsfield and modality in (Modality.CT, None):
        return CT_AIR_THRESHOLD_HU
    p2, p98 = (float(v) for v in np.percentile(sample, (2.0, 98.0)))
    if not p98 > p2:
        # Over 96% of the voxels share one value: split between that value and the rest.
        p2, p98 = (low, high) if p2 > low else (p2, high)
    return p2 + BACKGROUND_FRACTION * (p98 - p2)


def _largest_component(mask: sitk.Image) -> sitk.Image:
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask, False), 0, True)
    return sitk.Cast(sitk.Equal(labels, 1), sitk.sitkUInt8)


# A fixed head this much inside the moving domain is "whole": the engines sample the whole fixed image.
WHOLE_OVERLAP_SHARE = 0.95
# The moving domain is taken this far inside its border, so samples stay inside while the optimizer moves.
OVERLAP_MARGIN_MM = 5.0


def overlap_mask(fixed_head: sitk.Image, moving: sitk.Image, transform: sitk.Transform, *,
                 margin_mm: float = OVERLAP_MARGIN_MM) -> sitk.Image | None:
    """Where the engines should sample a partial field of view: fixed head inside the moving domain.

    The moving domain (less ``margin_mm`` at its border) is mapped onto the fixed grid through
    ``transform`` (fixed -> moving). Returns None when the fixed head lies (almost) entirely inside it,
    and also when the intersection is empty (then there is nothing better to offer than the whole image).
    """
    size = moving.GetSize()
    border = [min(round(margin_mm / s), (n - 1) // 2) for n, s in zip(size, moving.GetSpacing())]
    inner = np.zeros(size[::-1], dtype=np.uint8)
    inner[border[2]:size[2] - border[2], border[1]:size[1] - border[1], border[0]:size[0] - border[0]] = 1
    domain = sitk.GetImageFromArray(inner)
    domain.CopyInformation(moving)
    on_fixed = sitk.Resample(domain, fixed_head, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    head = sitk.GetArrayViewFromImage(fixed_head) > 0
    inside = head & (sitk.GetArrayViewFromImage(on_fixed) > 0)
    head_voxels, inside_voxels = int(head.sum()), int(inside.sum())
    if inside_voxels == 0 or inside_voxels >= WHOLE_OVERLAP_SHARE * head_voxels:
        return None
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(fixed_head)
    return mask
