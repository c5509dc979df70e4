"""A picture of a registration a person can look at: checkerboard and colour overlay of three slices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .images import atomic_path

_DISPLAY_PIXELS = 256  # longest side of each displayed slice
_CHECKER_SQUARES = 8


def _display_grid(fixed: sitk.Image) -> sitk.Image:
    """An isotropic grid over the fixed image's extent, so thick slices are not squashed."""
    size = np.asarray(fixed.GetSize())
    spacing = np.asarray(fixed.GetSpacing())
    extent = size * spacing
    iso = max(float(spacing.min()), float(extent.max()) / _DISPLAY_PIXELS)
    new_size = np.maximum(1, np.round(extent / iso)).astype(int)
    d = np.asarray(fixed.GetDirection()).reshape(3, 3)
    corner = np.asarray(fixed.GetOrigin()) - d @ (spacing / 2)
    grid = sitk.Image([int(n) for n in new_size], sitk.sitkFloat32)
    grid.SetSpacing([iso] * 3)
    grid.SetDirection(fixed.GetDirection())
    grid.SetOrigin(tuple(corner + d @ (np.full(3, iso) / 2)))
    return grid


def _normalize(array: np.ndarray, valid: np.ndarray) -> np.ndarray:
    values = array[valid] if valid.any() else array.ravel()
    lo, hi = np.percentile(values, [1.0, 99.5]) if values.size else (0.0, 1.0)
    scaled = np.clip((array - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return np.where(valid, scaled, 0.0)


def _slices(volume: np.ndarray) -> list[np.ndarray]:
    z, y, x = (n // 2 for n in volume.shape)
    # axial (z), coronal (y), sagittal (x); flip vertical axes so superior is up in LPS-ordered grids
    return [volume[z], volume[:, y, :][::-1], volume[:, :, x][::-1]]


def overlay_rgb(fixed: sitk.Image, registered: sitk.Image, valid_fill: float | None = None) -> np.ndarray:
    """An RGB uint8 array: top row checkerboard, bottom row fixed (magenta) over registered (green)."""
    grid = _display_grid(fixed)
    f = sitk.GetArrayFromImage(
        sitk.Resample(fixed, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    nan_fill = float("nan")
    r = sitk.GetArrayFromImage(
        sitk.Resample(registered, grid, sitk.Transform(), sitk.sitkLinear, nan_fill, sitk.sitkFloat32)
    )
    valid = np.isfinite(r)
    if valid_fill is not None:
        valid &= r != valid_fill
    f_n = _normalize(f, np.ones_like(valid))
    r_n = _normalize(np.nan_to_num(r), valid)
    tiles_top, tiles_bottom = [], []
    for fs, rs in zip(_slices(f_n), _slices(r_n)):
        h, w = fs.shape
        yy, xx = np.indices((h, w))
        square = max(1, max(h, w) // _CHECKER_SQUARES)
        checker = ((yy // square + xx // square) % 2).astype(bool)
        gray = np.where(checker, fs, rs)
        tiles_top.append(np.stack([gray, gray, gray], axis=-1))
        tiles_bottom.append(np.stack([fs, rs, fs], axis=-1))
    height = max(t.shape[0] for t in tiles_top)

    def row(tiles: list[np.ndarray]) -> np.ndarray:
        padded = [np.pad(t, ((0, height - t.shape[0]), (0, 4), (0, 0))) for t in tiles]
        return np.concatenate(padded, axis=1)

    picture = np.concatenate(
        [row(tiles_top), np.zeros((4, row(tiles_top).shape[1], 3)), row(tiles_bottom)], axis=0
    )
    return np.round(picture * 255).astype(np.uint8)


def write_overlay(
    fixed: sitk.Image,
    registered: sitk.Image,
    path: str | os.PathLike[str],
    *,
    fill_value: float | None = None,
) -> Path:
    """Write the overlay picture as PNG (atomically)."""
    picture = sitk.GetImageFromArray(overlay_rgb(fixed, registered, fill_value), isVector=True)
    with atomic_path(path) as partial:
        sitk.WriteImage(picture, str(partial))
    return Path(path)
