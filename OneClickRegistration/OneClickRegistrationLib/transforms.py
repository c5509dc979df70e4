"""Linear transform helpers: flatten, convert between kinds, compare.

All transforms here follow the ITK resampling convention (fixed -> moving, LPS).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError


def to_matrix(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 homogeneous matrix of a linear transform (composites of linear transforms included).

    Computed by mapping the origin and the unit vectors, which works for every linear ITK transform
    kind and for composites; a non-linear transform is refused.
    """
    if transform.GetDimension() != 3:
        raise InputError(f"Expected a 3D transform; received a {transform.GetDimension()}D one.")
    if not transform.IsLinear():
        raise InputError(
            f"Expected a linear (rigid or affine) transform; received a non-linear {transform.GetName()}."
        )
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.asarray(transform.TransformPoint(tuple(e))) - origin for e in np.eye(3)]
    matrix = np.eye(4)
    matrix[:3, :3] = np.column_stack(columns)
    matrix[:3, 3] = origin
    return matrix


def affine_from_matrix(
    matrix: np.ndarray, center: tuple[float, float, float] | None = None
) -> sitk.AffineTransform:
    """An AffineTransform with the given 4x4 matrix, expressed around ``center``."""
    affine = sitk.AffineTransform(3)
    c = np.zeros(3) if center is None else np.asarray(center, dtype=float)
    a = matrix[:3, :3]
    affine.SetCenter(tuple(c))
    affine.SetMatrix(tuple(a.ravel()))
    # x -> A(x - c) + c + t  ==  A x + (c - A c + t)  must equal  A x + b
    affine.SetTranslation(tuple(matrix[:3, 3] - c + a @ c))
    return affine


def _center_of(transform: sitk.Transform) -> tuple[float, float, float] | None:
    try:
        return tuple(transform.Downcast().GetCenter())  # type: ignore[attr-defined]
    except AttributeError:
        return None


def as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """Any linear transform as one AffineTransform (keeping its centre when it has one)."""
    return affine_from_matrix(to_matrix(transform), _center_of(transform))


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The proper rotation closest to a 3x3 matrix (polar decomposition)."""
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        u[:, -1] *= -1
        rotation = u @ vt
    return rotation


def rigid_from_matrix(
    matrix: np.ndarray,
    center: Sequence[float] | None = None,
    *,
    kind: Callable[[], sitk.Transform] = sitk.Euler3DTransform,
) -> sitk.Transform:
    """A rigid transform (``kind``: Euler3D, VersorRigid3D, ...) with the 4x4 matrix's translation and
    the rotation nearest its linear part, expressed around ``center``."""
    c = np.zeros(3) if center is None else np.asarray(center, dtype=float)
    rotation = nearest_rotation(matrix[:3, :3])
    rigid = kind()
    rigid.SetCenter(tuple(float(v) for v in c))  # type: ignore[attr-defined]
    rigid.SetMatrix(tuple(rotation.ravel()))  # type: ignore[attr-defined]
    # x -> R(x - c) + c + t  ==  R x + (c - R c + t)  must equal  R x + b
    rigid.SetTranslation(tuple(matrix[:3, 3] - c + rotation @ c))  # type: ignore[attr-defined]
    return rigid


def as_euler(transform: sitk.Transform) -> sitk.Euler3DTransform:
    """A linear transform as an Euler3DTransform (its linear part projected onto a rotation)."""
    return rigid_from_matrix(to_matrix(transform), _center_of(transform))  # type: ignore[return-value]


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """The rotation angle (degrees) of the rotation nearest to a 3x3 matrix."""
    rotation = nearest_rotation(matrix)
    cos = (np.trace(rotation) - 1.0) / 2.0
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def compose(first: sitk.Transform, then: sitk.Transform) -> sitk.AffineTransform:
    """The linear transform x -> then(first(x)), flattened."""
    return affine_from_matrix(to_matrix(then) @ to_matrix(first), _center_of(first))


def mean_displacement_mm(a: sitk.Transform, b: sitk.Transform, points: np.ndarray) -> float:
    """Mean distance between where ``a`` and ``b`` send ``points`` (N x 3, LPS)."""
    pa = points @ to_matrix(a)[:3, :3].T + to_matrix(a)[:3, 3]
    pb = points @ to_matrix(b)[:3, :3].T + to_matrix(b)[:3, 3]
    return float(np.linalg.norm(pa - pb, axis=1).mean())


def is_rotation(matrix: np.ndarray, *, atol: float = 1e-6) -> bool:
    """Whether a 3x3 matrix is a proper rotation (orthonormal, determinant +1) within ``atol``."""
    linear = np.asarray(matrix, dtype=float)
    return bool(np.allclose(linear.T @ linear, np.eye(3), atol=atol) and np.linalg.det(linear) > 0)


def with_center(transform: sitk.Transform, center: tuple[float, float, float]) -> sitk.AffineTransform:
    """The same linear map as one AffineTransform expressed around ``center``."""
    return affine_from_matrix(to_matrix(transform), tuple(float(c) for c in center))


def as_rigid_or_affine(transform: sitk.Transform, *, rigid: bool, atol: float = 1e-6,
                       center: tuple[float, float, float] | None = None) -> sitk.Transform:
    """One Euler3DTransform when ``rigid`` and the linear part is a rotation, else one AffineTransform.

    A rigid request whose transform is not a rotation (e.g. it started from an affine) stays affine
    rather than being silently projected onto a rotation. ``center`` defaults to the transform's own.
    Raises InputError for a non-linear transform or non-finite values.
    """
    matrix = to_matrix(transform)
    if not np.all(np.isfinite(matrix)):
        raise InputError(f"Expected a transform with finite values; received a {transform.GetName()} with "
                         f"non-finite values (matrix {np.round(matrix, 6).tolist()}).")
    centred = affine_from_matrix(matrix, center if center is not None else _center_of(transform))
    if rigid and is_rotation(matrix[:3, :3], atol=atol):
        return as_euler(centred)
    return centred


def as_versor_rigid(transform: sitk.Transform,
                    center: tuple[float, float, float]) -> sitk.VersorRigid3DTransform:
    """A linear transform as a VersorRigid3DTransform around ``center`` (linear part projected onto a rotation)."""
    return rigid_from_matrix(to_matrix(transform), center, kind=sitk.VersorRigid3DTransform)  # type: ignore[return-value]
