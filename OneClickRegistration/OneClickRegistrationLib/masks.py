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

from collections.abc import Sequence
from typing import NamedTuple

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
_COUNT_CHUNK = 1 << 20  # labels counted per block of voxels: small temporaries
_SHARE_WEIGHTS = {0.5: 1, 0.25: 2}  # see shrink_mask


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
    sample = _finite_sample(values)
    if sample.size == 0 or sample.min() == sample.max():
        return _empty(image)
    threshold = _threshold(sample, mod)
    with np.errstate(invalid="ignore"):
        foreground = np.greater(values, threshold).view(np.uint8)  # 0/1 bytes, no second copy
    if not foreground.any():
        return _empty(image)  # only reachable when the sample missed the few voxels above the threshold
    mask = sitk.GetImageFromArray(foreground)
    del foreground  # a 0.5 mm head CT: 80 MB per full-grid copy, so none is kept longer than needed
    mask.CopyInformation(image)
    labels = sitk.ConnectedComponent(mask, False)  # face-connected
    del mask  # freed before the kept component is drawn
    mask = _largest_label(labels)
    del labels
    mask = _close_and_fill(mask)
    if mask.GetPixelID() != sitk.sitkUInt8:
        mask = sitk.Cast(mask, sitk.sitkUInt8)
    mask.CopyInformation(image)
    return mask


def _empty(image: sitk.Image) -> sitk.Image:
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    return empty


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
        small = shrink_mask(mask, factors, share=0.25)
    # Never wider than the image: a 0.01 mm grid would otherwise ask for a ball hundreds of voxels
    # wide, whose construction alone takes seconds, for a closing that cannot reach any further.
    radius = [min(round(CLOSING_MM / s), n) for s, n in zip(small.GetSpacing(), small.GetSize())]
    if any(radius):
        small = sitk.BinaryMorphologicalClosing(small, radius, sitk.sitkBall, 1, True)
    small = sitk.BinaryFillhole(small, False, 1)
    if small.GetSize() == mask.GetSize():
        return small
    # Back on the fine grid: each coarse voxel covers its block of factors[0] x factors[1] x
    # factors[2] fine voxels (nearest neighbour, done by broadcasting); the fine voxels past the last
    # whole block lie outside the coarse image and stay as the fine mask has them.
    coarse = sitk.GetArrayViewFromImage(small).astype(np.uint8)
    fine = sitk.GetArrayFromImage(mask)  # uint8 0/1: joined in place, no full-grid temporaries
    # ``coarse`` is already filled and covers the fine mask but for boundary specks, so the union has
    # no hole to fill: a second filling at full resolution would cost as much as all the rest.
    _blocks(fine, factors)[...] |= coarse[:, None, :, None, :, None]
    back = sitk.GetImageFromArray(fine)
    back.CopyInformation(mask)
    return back


def _blocks(array: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """A writable 6D view (z, fz, y, fy, x, fx) of the whole blocks of a (z, y, x) ``array``.

    ``factors`` are per image axis (x, y, z), as SimpleITK gives them; the voxels past the last whole
    block along an axis are left out, as :func:`SimpleITK.BinShrink` leaves them out.
    """
    fx, fy, fz = (int(f) for f in factors)
    nz, ny, nx = (n // f for n, f in zip(array.shape, (fz, fy, fx)))
    whole = array[:nz * fz, :ny * fy, :nx * fx]
    view = np.lib.stride_tricks.as_strided(
        whole, shape=(nz, fz, ny, fy, nx, fx),
        strides=(whole.strides[0] * fz, whole.strides[0], whole.strides[1] * fy, whole.strides[1],
                 whole.strides[2] * fx, whole.strides[2]),
        writeable=array.flags.writeable)
    return view


def shrink_mask(mask: sitk.Image, factors: Sequence[int], *, share: float = 0.5) -> sitk.Image:
    """A 0/1 ``mask`` on the grid of ``sitk.BinShrink(mask, factors)``: a block is inside when at least
    ``share`` (0.5 or 0.25) of its voxels are.

    The rule of thresholding the float block mean at ``share``, without the float copy (four times the
    mask's size: 0.3 GB for a 0.5 mm head CT): BinShrink rounds an integer block mean half up, so the
    mean of voxels weighted ``0.5 / share`` reaches 1 exactly when ``share`` of them are inside.
    """
    weight = _SHARE_WEIGHTS.get(share)
    if weight is None:
        raise ValueError(f"share must be one of {sorted(_SHARE_WEIGHTS)}; received {share!r}.")
    source = mask if mask.GetPixelID() == sitk.sitkUInt8 else sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if weight != 1:
        source = source * weight
    return sitk.BinaryThreshold(sitk.BinShrink(source, [int(f) for f in factors]), 1, 255, 1, 0)


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


def _largest_label(labels: sitk.Image) -> sitk.Image:
    """The largest component of a label image (0 = background); of equal ones, the first in raster order.

    That is what relabelling by size and keeping label 1 gives, without a second 32-bit label image
    (320 MB for a 0.5 mm head CT): the sizes are counted block by block from the labels themselves.
    """
    values = sitk.GetArrayViewFromImage(labels).reshape(-1)
    count = int(values.max()) + 1
    sizes = np.zeros(count, dtype=np.int64)
    for start in range(0, values.size, _COUNT_CHUNK):
        sizes += np.bincount(values[start:start + _COUNT_CHUNK], minlength=count)
    sizes[0] = 0  # background
    return sitk.Equal(labels, int(np.argmax(sizes)))  # uint8 0/1


# A fixed head this much inside the moving domain is "whole": the engines sample the whole fixed image.
WHOLE_OVERLAP_SHARE = 0.95
# The moving domain is taken this far inside its border, so samples stay inside while the optimizer moves.
OVERLAP_MARGIN_MM = 5.0


class Overlap(NamedTuple):
    """The fixed head inside the moving domain: the sampling mask (or None) and the voxel counts."""

    mask: sitk.Image | None
    inside_voxels: int
    head_voxels: int


def head_overlap(fixed_head: sitk.Image, moving: sitk.Image, transform: sitk.Transform, *,
                 margin_mm: float = OVERLAP_MARGIN_MM) -> Overlap:
    """Where the engines should sample a partial field of view: fixed head inside the moving domain.

    The moving domain (less ``margin_mm`` at its border) is mapped onto the fixed grid through
    ``transform`` (fixed -> moving). The mask is None when the fixed head lies (almost) entirely inside
    it, and also when the intersection is empty (``inside_voxels == 0``: then there is nothing better to
    offer than the whole image); the counts are those the choice was made on.
    """
    size = moving.GetSize()
    border = [min(round(margin_mm / s), (n - 1) // 2) for n, s in zip(size, moving.GetSpacing())]
    inner = np.zeros(size[::-1], dtype=np.uint8)
    inner[border[2]:size[2] - border[2], border[1]:size[1] - border[1], border[0]:size[0] - border[0]] = 1
    domain = sitk.GetImageFromArray(inner)
    domain.CopyInformation(moving)
    head = sitk.GetArrayViewFromImage(fixed_head)
    head_voxels = int(np.count_nonzero(head))
    # Mapped and counted slab by slab of the fixed grid: a 0.5 mm head CT gets no full-grid temporary
    # unless the mask is really needed.
    slab = max(1, _COUNT_CHUNK * 4 // max(1, head[0].size))
    packed = []  # each slab's voxels inside, eight to a byte until the mask is known to be needed
    inside_voxels = 0
    for z in range(0, head.shape[0], slab):
        part = _slab_grid(fixed_head, z, min(slab, head.shape[0] - z))
        on_slab = sitk.Resample(domain, part, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        inside = np.logical_and(head[z:z + slab], sitk.GetArrayViewFromImage(on_slab))
        inside_voxels += int(np.count_nonzero(inside))
        packed.append(np.packbits(inside, axis=None))
    if inside_voxels == 0 or inside_voxels >= WHOLE_OVERLAP_SHARE * head_voxels:
        return Overlap(None, inside_voxels, head_voxels)
    array = np.empty(head.shape, dtype=np.uint8)
    for z, bits in zip(range(0, head.shape[0], slab), packed):
        rows = array[z:z + slab]
        rows[...] = np.unpackbits(bits, count=rows.size).reshape(rows.shape)
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(fixed_head)
    return Overlap(mask, inside_voxels, head_voxels)


def _slab_grid(image: sitk.Image, first: int, count: int) -> sitk.Image:
    """An empty uint8 image on slices ``first`` .. ``first + count - 1`` of ``image``'s grid."""
    size = image.GetSize()
    slab = sitk.Image([size[0], size[1], count], sitk.sitkUInt8)
    slab.SetSpacing(image.GetSpacing())
    slab.SetDirection(image.GetDirection())
    slab.SetOrigin(image.TransformIndexToPhysicalPoint([0, 0, first]))
    return slab

