"""Reading, checking and writing images and transforms.

Every image that enters the pipeline goes through :func:`check_volume`, so engines and metrics can
assume a non-empty, scalar, 3D image. Files are written under a temporary name in the destination
folder and renamed into place, so a failure never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

MIN_VOXELS_PER_AXIS = 4  # fewer than this and no pyramid level or gradient makes sense


def describe(image: sitk.Image) -> str:
    """One line naming an image's size, spacing and pixel type, for error messages."""
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:g}" for s in image.GetSpacing())
    return (
        f"{image.GetDimension()}D {image.GetPixelIDTypeAsString()} image, size {size}, "
        f"{image.GetNumberOfComponentsPerPixel()} component(s), spacing {spacing} mm"
    )


def check_volume(image: sitk.Image, *, role: str = "image") -> sitk.Image:
    """Return ``image`` if it is a non-empty scalar 3D volume, else raise :class:`InputError`.

    ``role`` names the image in the message ("fixed", "moving", "fixed mask", ...).
    """
    if not isinstance(image, sitk.Image):
        raise InputError(f"The {role} must be a SimpleITK image; received {type(image).__name__}.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"The {role} must be a scalar (grey-level) 3D volume; received a vector/RGB image "
            f"with {image.GetNumberOfComponentsPerPixel()} components ({describe(image)}). "
            "Convert it to a single channel first."
        )
    if image.GetDimension() != 3:
        raise InputError(f"The {role} must be a 3D volume; received a {describe(image)}.")
    if 0 in image.GetSize():
        raise InputError(f"The {role} is empty (0 voxels): {describe(image)}.")
    spacing = image.GetSpacing()
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"The {role} must have positive, finite voxel spacing; received spacing {spacing}.")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise InputError(
            f"The {role} must have an orthonormal direction matrix; received {direction.tolist()}."
        )
    if not all(np.isfinite(o) for o in image.GetOrigin()):
        raise InputError(f"The {role} must have a finite origin; received {image.GetOrigin()}.")
    return image


def check_registrable(image: sitk.Image, *, role: str) -> sitk.Image:
    """Stricter than :func:`check_volume`: the image must also carry usable intensities."""
    check_volume(image, role=role)
    if min(image.GetSize()) < MIN_VOXELS_PER_AXIS:
        raise InputError(
            f"The {role} is too small to register: at least {MIN_VOXELS_PER_AXIS} voxels per axis "
            f"are needed; received {describe(image)}."
        )
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values) if values.dtype.kind == "f" else None
    if finite is not None and not finite.any():
        raise InputError(f"The {role} has no finite voxel (all NaN or Inf): {describe(image)}.")
    sample = values[finite] if finite is not None else values
    if sample.min() == sample.max():
        raise InputError(
            f"The {role} is constant (every voxel is {sample.min()!r}); a registration needs "
            "intensity structure to align."
        )
    return image


def read_image(
    path: str | os.PathLike[str], *, role: str = "image", volume_index: int | None = None
) -> sitk.Image:
    """Read a 3D scalar volume from ``path``.

    A 4D file needs ``volume_index`` (which 3D volume of it to use); the message says how many
    there are. Raises :class:`InputError` for anything that is not a readable 3D scalar volume.
    """
    file = Path(path)
    if not file.exists():
        raise InputError(f"The {role} file does not exist: {str(file)!r}.")
    if file.is_dir():
        raise InputError(f"The {role} path is a folder, expected an image file: {str(file)!r}.")
    try:
        image = sitk.ReadImage(str(file))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(
            f"Cannot read the {role} file {str(file)!r} as an image (expected NRRD, NIfTI, MHA or "
            f"another format ITK reads): {first_line}"
        ) from None
    if image.GetDimension() == 4:
        count = image.GetSize()[3]
        if volume_index is None:
            raise InputError(
                f"The {role} file {str(file)!r} is a 4D image with {count} volumes; expected a 3D "
                f"volume. Choose one with volume_index (0..{count - 1})."
            )
        if not 0 <= volume_index < count:
            raise InputError(
                f"volume_index {volume_index} is out of range for the {role} file, which has "
                f"{count} volumes (0..{count - 1})."
            )
        size = [*image.GetSize()[:3], 0]
        image = sitk.Extract(image, size, [0, 0, 0, volume_index])
    elif volume_index not in (None, 0):
        raise InputError(
            f"volume_index {volume_index} was given but the {role} file is not 4D ({describe(image)})."
        )
    return check_volume(image, role=f"{role} ({file.name})")


def to_float32(image: sitk.Image) -> sitk.Image:
    """A float32 copy (or the same image if already float32); never modifies ``image``."""
    if image.GetPixelID() == sitk.sitkFloat32:
        return image
    return sitk.Cast(image, sitk.sitkFloat32)


def _partial_name(final: Path) -> Path:
    # Keep the final name's ending: ITK picks the file format from it.
    return final.with_name(f".partial-{uuid.uuid4().hex[:8]}-{final.name}")


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only if the body succeeds."""
    target = Path(final)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_name(target)
    try:
        yield partial
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()


def _write_atomic(final: str | os.PathLike[str], writer: Callable[[str], None]) -> Path:
    with atomic_path(final) as partial:
        writer(str(partial))
    return Path(final)


def write_image(image: sitk.Image, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically."""
    return _write_atomic(path, lambda p: sitk.WriteImage(image, p, compress))


def write_transform(transform: sitk.Transform, path: str | os.PathLike[str]) -> Path:
    """Write ``transform`` (ITK text or HDF5, chosen by the ending) to ``path`` atomically."""
    return _write_atomic(path, lambda p: sitk.WriteTransform(transform, p))


def write_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return _write_atomic(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def read_transform(path: str | os.PathLike[str]) -> sitk.Transform:
    """Read an ITK transform file, with a clear error when it is missing or unreadable."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"The transform file does not exist: {str(file)!r}.")
    try:
        transform = sitk.ReadTransform(str(file))
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(
            f"Cannot read {str(file)!r} as an ITK transform (.tfm, .txt, .mat or .h5): {last}"
        ) from None
    if transform.GetDimension() != 3:
        raise InputError(
            f"The transform in {str(file)!r} is {transform.GetDimension()}D; expected a 3D transform."
        )
    return transform
