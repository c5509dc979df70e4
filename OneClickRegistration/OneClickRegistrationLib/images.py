"""Reading, checking and writing images and transforms.

Every image that enters the pipeline goes through :func:`check_volume`, so engines and metrics can
assume a non-empty, scalar, 3D image. Files are written under a temporary name in the destination
folder and renamed into place, so a failure never leaves a half-written file under the final name.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError, itk_reason

MIN_VOXELS_PER_AXIS = 4  # fewer than this and no pyramid level or gradient makes sense
# Relative to the voxel spacing: float32 round-off in file headers passes, a wrong grid does not.
GRID_TOLERANCE = 1e-4
# Pixel types whose every value float32 holds exactly (8/16-bit integers, float32): they can be
# handled as float32 (half the memory and time) without losing precision.
EXACT_IN_FLOAT32 = frozenset({
    sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkFloat32,
})


def describe(image: sitk.Image) -> str:
    """One line naming an image's size, spacing and pixel type, for error messages."""
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:g}" for s in image.GetSpacing())
    return (
        f"{image.GetDimension()}D {image.GetPixelIDTypeAsString()} image, size {size}, "
        f"{image.GetNumberOfComponentsPerPixel()} component(s), spacing {spacing} mm"
    )


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """True when two images share size, spacing, origin and direction (up to header round-off)."""
    if a.GetSize() != b.GetSize():
        return False
    spacing_a, spacing_b = np.asarray(a.GetSpacing()), np.asarray(b.GetSpacing())
    tol = GRID_TOLERANCE * float(spacing_a.min())
    return (np.allclose(spacing_a, spacing_b, rtol=GRID_TOLERANCE, atol=0.0)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0.0, atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0.0, atol=GRID_TOLERANCE))


def grid_center(image: sitk.Image) -> np.ndarray:
    """Physical (LPS) position of the centre of an image's voxel grid."""
    size = np.asarray(image.GetSize(), dtype=float)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(((size - 1.0) / 2.0).tolist()))


def bounding_box(inside: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The (z, y, x) slices around the nonzero voxels of a 3-D array, or None when there are none."""
    extents = []
    for axis in range(3):
        present = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            return None
        extents.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(extents)  # type: ignore[return-value]


def grid_text(image: sitk.Image) -> str:
    """An image's voxel grid in words (size, spacing, origin, direction), for error messages."""
    def fmt(values: Sequence[float]) -> str:
        return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"

    return (f"size {'x'.join(str(s) for s in image.GetSize())}, spacing {fmt(image.GetSpacing())}, "
            f"origin {fmt(image.GetOrigin())}, direction {fmt(image.GetDirection())}")


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
    if image.GetDimension() == 4:
        count = image.GetSize()[3]
        raise InputError(
            f"The {role} is a 4D image with {count} volumes; expected a 3D volume. Extract one first "
            f"(image[:, :, :, i] with i in 0..{count - 1}): {describe(image)}."
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
            f"The {role} is constant (every voxel is {sample.min().item()!r}); a registration needs "
            "intensity structure to align."
        )
    return image


def read_image(
    path: str | os.PathLike[str],
    *,
    role: str = "image",
    volume_index: int | None = None,
    index_option: str = "volume_index",
) -> sitk.Image:
    """Read a 3D scalar volume from ``path``.

    A 4D file needs ``volume_index`` (which 3D volume of it to use); the message says how many
    there are. ``index_option`` is how the caller's user spells that option in messages (the command
    line says ``--moving-volume-index``). Raises :class:`InputError` for anything that is not a
    readable 3D scalar volume.
    """
    file = Path(path)
    if not file.exists():
        raise InputError(f"The {role} file does not exist: {str(file)!r}.")
    if file.is_dir():
        raise InputError(f"The {role} path is a folder, expected an image file: {str(file)!r}.")
    try:
        image = _read_with_itk(file)
    except RuntimeError as exc:
        raise InputError(
            f"Cannot read the {role} file {str(file)!r} as an image (expected NRRD, NIfTI, MHA or "
            f"another format ITK reads): {itk_reason(exc)}"
        ) from None
    image = _with_nifti_nonfinite(file, image)
    if image.GetDimension() == 4:
        count = image.GetSize()[3]
        if volume_index is None:
            raise InputError(
                f"The {role} file {str(file)!r} is a 4D image with {count} volumes; expected a 3D "
                f"volume. Choose one with {index_option} (0..{count - 1})."
            )
        if not 0 <= volume_index < count:
            raise InputError(
                f"{index_option} {volume_index} is out of range for the {role} file, which has "
                f"{count} volumes (0..{count - 1})."
            )
        size = [*image.GetSize()[:3], 0]
        image = sitk.Extract(image, size, [0, 0, 0, volume_index])
    elif volume_index not in (None, 0):
        raise InputError(
            f"{index_option} {volume_index} was given but the {role} file is not 4D ({describe(image)})."
        )
    return check_volume(image, role=f"{role} ({file.name})")


def _read_with_itk(file: Path) -> sitk.Image:
    if file.name.lower().endswith(".nii.gz") and file.with_name(file.name[:-3]).exists():
        # Asked for "x.nii.gz", ITK's NIfTI library reads the voxels of "x.nii" when that file exists
        # beside it (measured with SimpleITK 2.5: the other file's data under this file's header).
        # Read through a link in a folder where it has no such neighbour.
        with tempfile.TemporaryDirectory(prefix="oneclickreg-read-") as folder:
            link = Path(folder) / "image.nii.gz"
            try:
                link.symlink_to(file.resolve())
            except OSError:
                shutil.copyfile(file, link)
            return sitk.ReadImage(str(link))
    return sitk.ReadImage(str(file))


_NIFTI1_HEADER_BYTES = 348
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64


def _with_nifti_nonfinite(file: Path, image: sitk.Image) -> sitk.Image:
    """``image`` with the NaN/Inf voxels of a float NIfTI-1 file put back.

    ITK's NIfTI reader (nifti1_io's ``nifti_read_buffer``) silently turns every NaN and Inf of a float
    file into 0, which for CT is water, not background: the pipeline must see them as non-finite to
    treat them as background. The voxels are re-read from the file with numpy to find them. Anything
    this does not recognise (NIfTI-2, other layouts) is returned as ITK read it.
    """
    name = file.name.lower()
    if not name.endswith((".nii", ".nii.gz")) or image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return image
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(file, "rb") as handle:
            header = handle.read(_NIFTI1_HEADER_BYTES)
            order = next((o for o in "<>" if len(header) == _NIFTI1_HEADER_BYTES
                          and struct.unpack(f"{o}i", header[:4])[0] == _NIFTI1_HEADER_BYTES), None)
            if order is None:
                return image
            dims = struct.unpack(f"{order}8h", header[40:56])
            kind = _NIFTI_FLOAT_TYPES.get(struct.unpack(f"{order}h", header[70:72])[0])
            offset = int(struct.unpack(f"{order}f", header[108:112])[0])
            shape = tuple(reversed(dims[1:1 + dims[0]])) if 1 <= dims[0] <= 7 else ()
            if kind is None or tuple(reversed(image.GetSize())) != shape[-image.GetDimension():] \
                    or int(np.prod(shape)) != image.GetNumberOfPixels():
                return image
            handle.seek(offset)
            raw = handle.read(image.GetNumberOfPixels() * np.dtype(kind).itemsize)
    except (OSError, EOFError, struct.error):
        return image
    if len(raw) != image.GetNumberOfPixels() * np.dtype(kind).itemsize:
        return image
    stored = np.frombuffer(raw, dtype=f"{order}{kind}").reshape(tuple(reversed(image.GetSize())))
    bad = ~np.isfinite(stored)
    if not bad.any():
        return image
    values = sitk.GetArrayFromImage(image)
    values[bad] = stored[bad]
    restored = sitk.GetImageFromArray(values, isVector=False)
    restored.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        restored.SetMetaData(key, image.GetMetaData(key))
    return restored


def to_float32(image: sitk.Image) -> sitk.Image:
    """A float32 copy (or the same image if already float32); never modifies ``image``."""
    if image.GetPixelID() == sitk.sitkFloat32:
        return image
    return sitk.Cast(image, sitk.sitkFloat32)


def _partial_name(final: Path) -> Path:
    # Keep the final name's ending: ITK picks the file format from it.
    return final.with_name(f".partial-{uuid.uuid4().hex[:8]}-{final.name}")


class _UnfaithfulWriteError(RuntimeError):
    """A file that was written completely but does not hold what was asked (a format's limits)."""


def _write_error(target: Path, exc: BaseException) -> InputError:
    if isinstance(exc, _UnfaithfulWriteError):
        return InputError(f"Cannot write {str(target)!r}: {exc} Choose another format (NRRD or MHA keep "
                          "every geometry and pixel type).")
    reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else itk_reason(exc)
    return InputError(
        f"Cannot write {str(target)!r}: {reason}. Expected a writable folder with free space "
        f"({str(target.parent)!r})."
    )


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only if the body succeeds.

    A body that fails with ``OSError`` or ITK's ``RuntimeError`` (full disk, read-only or missing
    folder) becomes an :class:`InputError` naming the file; the partial file is always removed.
    """
    target = Path(final)
    partial = _partial_name(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        os.replace(partial, target)
    except (OSError, RuntimeError) as exc:
        raise _write_error(target, exc) from None
    finally:
        with suppress(OSError):
            partial.unlink(missing_ok=True)


def _write_atomic(final: str | os.PathLike[str], writer: Callable[[str], None],
                  verify: Callable[[str], None] | None = None) -> Path:
    with atomic_path(final) as partial:
        writer(str(partial))
        if verify is not None:
            verify(str(partial))
    return Path(final)


def _verify_image(image: sitk.Image, path: str) -> None:
    # ITK's NIfTI writer and its transform writers print a message and return normally when the disk
    # fills up (measured on /dev/full), leaving a truncated file: read it back before renaming it. The
    # header and the last slice prove the file whole (its end is what a full disk cuts off) without a
    # second copy of the whole volume in memory (0.3 GB for a 0.5 mm head CT).
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    size = list(reader.GetSize())
    if reader.GetNumberOfComponents() == 1:
        # (not for vector images: ITK's NIfTI reader crashes the process reading a region of one)
        reader.SetExtractIndex([0] * (len(size) - 1) + [max(0, size[-1] - 1)])
        reader.SetExtractSize([*size[:-1], min(1, size[-1])])
    reader.Execute()
    written = reader
    if (written.GetSize() != image.GetSize()
            or written.GetNumberOfComponents() != image.GetNumberOfComponentsPerPixel()):
        raise RuntimeError(
            f"the written file reads back as {'x'.join(str(n) for n in written.GetSize())} voxels of "
            f"{written.GetNumberOfComponents()} component(s), not {describe(image)}")
    # Some formats store less than an image holds: NIfTI silently makes a direction matrix orthogonal
    # and keeps the header in float32.
    origin = np.asarray(image.GetOrigin(), dtype=float)
    if not (np.allclose(written.GetDirection(), image.GetDirection(), atol=1e-4)
            and np.allclose(written.GetSpacing(), image.GetSpacing(), rtol=1e-5)
            and np.allclose(written.GetOrigin(), origin, rtol=1e-6, atol=1e-3)):
        raise _UnfaithfulWriteError(
            f"the {Path(path).name.split('.', 1)[-1]} format does not keep this image's geometry (spacing "
            f"{image.GetSpacing()}, origin {image.GetOrigin()}, direction {image.GetDirection()}); it reads back "
            f"as spacing {written.GetSpacing()}, origin {written.GetOrigin()}, direction {written.GetDirection()}."
        )


def _verify_transform(transform: sitk.Transform, path: str) -> None:
    written = sitk.ReadTransform(path)
    expected = np.asarray(transform.GetParameters(), dtype=float)
    found = np.asarray(written.GetParameters(), dtype=float)
    if found.shape != expected.shape or not np.allclose(found, expected, rtol=1e-6, atol=1e-9, equal_nan=True):
        raise RuntimeError("the written transform file does not read back as the transform written")


def write_image(image: sitk.Image, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically (checked by reading it back)."""
    return _write_atomic(path, lambda p: sitk.WriteImage(image, p, compress), lambda p: _verify_image(image, p))


def write_transform(transform: sitk.Transform, path: str | os.PathLike[str]) -> Path:
    """Write ``transform`` (ITK text or HDF5, chosen by the ending) to ``path`` atomically (checked)."""
    return _write_atomic(path, lambda p: sitk.WriteTransform(transform, p),
                         lambda p: _verify_transform(transform, p))


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
        raise InputError(
            f"Cannot read {str(file)!r} as an ITK transform (.tfm, .txt, .mat or .h5): {itk_reason(exc)}"
        ) from None
    if transform.GetDimension() != 3:
        raise InputError(
            f"The transform in {str(file)!r} is {transform.GetDimension()}D; expected a 3D transform."
        )
    return transform
