"""Linear transform math: one matrix, many ITK shapes, the same mapping."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import transforms
from OneClickRegistrationLib.errors import InputError
from OneClickRegistrationLib.images import grid_center

POINTS = np.array([[0.0, 0.0, 0.0], [30.0, -20.0, 10.0], [-50.0, 40.0, 70.0]])


def _mapped(transform: sitk.Transform) -> np.ndarray:
    return np.array([transform.TransformPoint(tuple(p)) for p in POINTS])


def _rigid_matrix() -> np.ndarray:
    euler = sitk.Euler3DTransform((5.0, -3.0, 8.0), 0.2, -0.1, 0.3, (4.0, -7.0, 2.5))
    return transforms.to_matrix(euler)


@pytest.mark.parametrize("kind", [sitk.Euler3DTransform, sitk.VersorRigid3DTransform])
@pytest.mark.parametrize("center", [None, (10.0, -20.0, 30.0)])
def test_rigid_from_matrix_maps_points_like_the_matrix(kind, center) -> None:
    matrix = _rigid_matrix()
    rigid = transforms.rigid_from_matrix(matrix, center, kind=kind)
    assert rigid.GetName() == kind().GetName()
    expected = POINTS @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(_mapped(rigid), expected, atol=1e-9)
    if center is not None:
        assert rigid.GetCenter() == pytest.approx(center)


def test_versor_rigid_is_the_same_map_around_the_given_centre() -> None:
    euler = transforms.rigid_from_matrix(_rigid_matrix())
    versor = transforms.as_versor_rigid(euler, (10.0, -20.0, 30.0))
    assert versor.GetName() == "VersorRigid3DTransform" and versor.GetCenter() == pytest.approx((10.0, -20.0, 30.0))
    np.testing.assert_allclose(_mapped(versor), _mapped(euler), atol=1e-9)
    mirrored = np.diag([-1.0, 1.0, 1.0])
    assert transforms.is_rotation(_rigid_matrix()[:3, :3]) and not transforms.is_rotation(mirrored)


def test_grid_center_is_the_middle_of_the_voxel_grid() -> None:
    image = sitk.Image([11, 21, 5], sitk.sitkUInt8)
    image.SetSpacing((2.0, 1.0, 3.0))
    image.SetOrigin((-10.0, 5.0, 0.0))
    assert grid_center(image) == pytest.approx((0.0, 15.0, 6.0))


def test_transform_flattening_and_conversions() -> None:
    euler = sitk.Euler3DTransform((10.0, -5.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, -6.0))
    scale = sitk.ScaleTransform(3, (1.1, 0.9, 1.0))
    composite = sitk.CompositeTransform([euler, scale])
    points = np.random.default_rng(0).uniform(-80, 80, (20, 3))
    flat = transforms.as_affine(composite)
    for p in points:
        np.testing.assert_allclose(flat.TransformPoint(tuple(p)), composite.TransformPoint(tuple(p)), atol=1e-9)
    back = transforms.as_euler(euler)
    assert transforms.mean_displacement_mm(back, euler, points) < 1e-9
    # the rotation is 0.1/-0.2/0.3 rad about x/y/z: 20.94 degrees in all (arccos((trace - 1) / 2))
    assert transforms.rotation_angle_deg(transforms.to_matrix(euler)[:3, :3]) == pytest.approx(20.94, abs=0.01)
    composed = transforms.compose(scale, euler)  # x -> euler(scale(x))
    for p in points:
        expected = euler.TransformPoint(scale.TransformPoint(tuple(p)))
        np.testing.assert_allclose(composed.TransformPoint(tuple(p)), expected, atol=1e-9)
    with pytest.raises(InputError, match="linear"):
        transforms.to_matrix(sitk.DisplacementFieldTransform(3))
