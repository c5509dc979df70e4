"""Node <-> image and transform conversion against real MRML (the ``slicer-core`` wheel).

Every check compares against an independent computation: SimpleITK's own index->point mapping,
``TransformPoint`` on LPS points, or a resampling through the ground-truth transform.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from OneClickRegistrationLib.errors import InputError  # noqa: E402
from OneClickRegistrationSlicer import convert as glue  # noqa: E402
from OneClickRegistrationSlicer.command import registrationCommand  # noqa: E402

pytestmark = pytest.mark.slicer

F3 = np.diag([-1.0, -1.0, 1.0])


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    t = sitk.Euler3DTransform()
    t.SetRotation(math.radians(ax), math.radians(ay), math.radians(az))
    return np.array(t.GetMatrix()).reshape(3, 3)


# LPS direction matrices: axis-aligned LPS, RAS-oriented (as Slicer writes many NRRDs), oblique,
# and a left-handed (flipped) oblique one.
DIRECTIONS = {
    "lps": np.eye(3),
    "ras": np.diag([-1.0, -1.0, 1.0]),
    "oblique": rotation(12.0, -20.0, 33.0),
    "oblique-flipped": rotation(-5.0, 40.0, 7.0) @ np.diag([1.0, 1.0, -1.0]),
}
DTYPES = {"int16": np.int16, "uint8": np.uint8, "float32": np.float32, "float64": np.float64}


def make_image(direction: np.ndarray, dtype: type, *, size=(7, 5, 4), spacing=(0.7, 1.3, 3.1),
               origin=(-12.5, 40.25, 7.125)) -> sitk.Image:
    rng = np.random.default_rng(3)
    nx, ny, nz = size
    values = rng.integers(0, 200, size=(nz, ny, nx)).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        values = values + dtype(0.25)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    return image


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return glue.arrayFromVtkMatrix(matrix)


def node_voxels(node) -> np.ndarray:
    from vtk.util import numpy_support

    image_data = node.GetImageData()
    nx, ny, nz = image_data.GetDimensions()
    return numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(nz, ny, nx).copy()


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


# ---------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_image_to_node_places_every_voxel_where_sitk_does(scene, direction, dtype):
    image = make_image(direction, dtype)
    node = glue.addVolumeNodeFromImage(scene, image, "vol")
    m = ijk_to_ras(node)
    values = node_voxels(node)
    assert values.dtype == np.dtype(dtype)
    for ijk in [(0, 0, 0), (6, 0, 0), (0, 4, 0), (0, 0, 3), (6, 4, 3), (3, 2, 1)]:
        expected_lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = (m @ np.array([*ijk, 1.0]))[:3]
        np.testing.assert_allclose(F3 @ ras, expected_lps, rtol=0, atol=1e-9)
        assert values[ijk[2], ijk[1], ijk[0]] == image.GetPixel(ijk)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_image_node_image_round_trip_is_exact(scene, direction, dtype):
    image = make_image(direction, dtype)
    node = glue.addVolumeNodeFromImage(scene, image, "vol")
    back = glue.imageFromVolumeNode(node)
    assert back.GetSize() == image.GetSize()
    assert back.GetPixelID() == image.GetPixelID()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetOrigin() == image.GetOrigin()
    np.testing.assert_array_equal(np.array(back.GetDirection()), np.array(image.GetDirection()))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_node_image_node_round_trip_is_exact(scene, direction):
    # A node built the Slicer way (IJKToRAS matrix + vtkImageData), not by the glue.
    spacing = np.array([0.9, 1.7, 2.5])
    ras_directions = F3 @ direction
    matrix = np.eye(4)
    matrix[:3, :3] = ras_directions * spacing
    matrix[:3, 3] = [31.5, -7.25, 12.0]
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "src")
    node.SetIJKToRASMatrix(glue.vtkMatrixFromArray(matrix))
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(6, 4, 3)
    image_data.AllocateScalars(vtk.VTK_SHORT, 1)
    for index in range(6 * 4 * 3):
        image_data.GetPointData().GetScalars().SetTuple1(index, (index * 37) % 1000 - 300)
    node.SetAndObserveImageData(image_data)

    image = glue.imageFromVolumeNode(node)
    copy = glue.addVolumeNodeFromImage(scene, image, "copy")
    np.testing.assert_allclose(ijk_to_ras(copy), ijk_to_ras(node), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(node_voxels(copy), node_voxels(node))
    np.testing.assert_allclose(image.GetSpacing(), spacing, rtol=0, atol=1e-12)


def test_image_from_node_is_a_copy_and_never_touches_the_node(scene):
    image = make_image(DIRECTIONS["oblique"], np.int16)
    node = glue.addVolumeNodeFromImage(scene, image, "vol")
    before_matrix, before_voxels = ijk_to_ras(node), node_voxels(node)
    copy = glue.imageFromVolumeNode(node)
    copy[0, 0, 0] = 12345
    np.testing.assert_array_equal(node_voxels(node), before_voxels)
    np.testing.assert_array_equal(ijk_to_ras(node), before_matrix)


def test_empty_or_wrong_nodes_are_refused_with_a_clear_message(scene):
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "nothing here")
    with pytest.raises(InputError, match="'nothing here' has no image data"):
        glue.imageFromVolumeNode(empty, role="fixed")
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "a model")
    with pytest.raises(InputError, match="must be a scalar volume node; received vtkMRMLModelNode"):
        glue.imageFromVolumeNode(model, role="moving")
    vol = glue.addVolumeNodeFromImage(scene, make_image(np.eye(3), np.int16), "same")
    with pytest.raises(InputError, match="must be different nodes"):
        registrationCommand(vol, vol)


# ---------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------

def _euler() -> sitk.Transform:
    t = sitk.Euler3DTransform()
    t.SetCenter((10.0, -20.0, 35.0))
    t.SetRotation(0.1, -0.25, 0.4)
    t.SetTranslation((4.0, -7.5, 12.0))
    return t


def _versor() -> sitk.Transform:
    t = sitk.VersorRigid3DTransform()
    t.SetCenter((-3.0, 8.0, 1.0))
    t.SetRotation((0.2, 0.7, -0.3), 0.35)
    t.SetTranslation((-6.0, 2.0, 9.0))
    return t


def _similarity() -> sitk.Transform:
    t = sitk.Similarity3DTransform()
    t.SetCenter((5.0, 5.0, -5.0))
    t.SetScale(1.08)
    t.SetRotation((0.0, 0.0, 1.0), 0.2)
    t.SetTranslation((1.0, 2.0, 3.0))
    return t


def _affine() -> sitk.Transform:
    t = sitk.AffineTransform(3)
    t.SetMatrix((1.05, 0.04, -0.02, 0.03, 0.95, 0.06, -0.05, 0.01, 1.1))
    t.SetCenter((12.0, 0.0, -8.0))
    t.SetTranslation((-2.0, 14.0, 5.5))
    return t


def _composite() -> sitk.Transform:
    return sitk.CompositeTransform([_euler(), sitk.TranslationTransform(3, (3.0, -1.0, 2.0)), _affine()])


TRANSFORMS = {"euler": _euler, "versor": _versor, "similarity": _similarity, "affine": _affine,
              "composite": _composite}
FIXED_POINTS_RAS = np.array([[0.0, 0.0, 0.0], [55.0, -30.0, 12.0], [-80.0, 90.0, -45.0], [3.5, 7.25, 100.0]])


@pytest.mark.parametrize("make", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_transform_node_maps_fixed_points_to_the_same_moving_points_as_itk(scene, make):
    transform = make()
    node = glue.addTransformNodeFromTransform(scene, transform, "result")
    assert node.IsA("vtkMRMLLinearTransformNode")
    # World (fixed) -> frame of the nodes placed under the result, i.e. where the moving data lives.
    world_to_moving = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, node, world_to_moving)
    for point_ras in FIXED_POINTS_RAS:
        moving_ras = np.array(world_to_moving.TransformPoint(*point_ras))
        expected_lps = np.array(transform.TransformPoint(tuple(F3 @ point_ras)))
        np.testing.assert_allclose(F3 @ moving_ras, expected_lps, rtol=0, atol=1e-9)


@pytest.mark.parametrize("make", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_transform_file_written_by_slicer_is_the_itk_transform(scene, make, tmp_path):
    # Slicer's own transform writer must give back the ITK fixed->moving transform we started from.
    transform = make()
    node = glue.addTransformNodeFromTransform(scene, transform, "result")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(tmp_path / "t.tfm"))
    assert storage.WriteData(node)
    written = sitk.ReadTransform(str(tmp_path / "t.tfm"))
    for point_ras in FIXED_POINTS_RAS:
        p = tuple(F3 @ point_ras)
        np.testing.assert_allclose(written.TransformPoint(p), transform.TransformPoint(p), rtol=0, atol=1e-6)


def test_non_linear_transforms_are_refused_and_add_nothing(scene):
    field = sitk.Image(4, 4, 4, sitk.sitkVectorFloat64)
    displacement = sitk.DisplacementFieldTransform(field)
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="Expected a linear"):
        glue.addTransformNodeFromTransform(scene, displacement, "bad")
    with pytest.raises(InputError, match="Expected a linear"):
        glue.addTransformNodeFromTransform(scene, sitk.CompositeTransform([_euler(), displacement]), "bad")
    assert scene.GetNumberOfNodes() == count


def test_existing_transform_node_reads_back_as_the_itk_transform(scene):
    # The fixed volume lies under a transform; the judged transform sits under the same one, the way
    # the glue places its results, so the relative transform is the original ITK one.
    fixed = glue.addVolumeNodeFromImage(scene, make_image(np.eye(3), np.int16), "fixed")
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "patient position")
    parent.SetMatrixTransformToParent(glue.vtkMatrixFromArray(glue.rasMatrixFromTransform(_versor())))
    fixed.SetAndObserveTransformNodeID(parent.GetID())
    node = glue.addTransformNodeFromTransform(scene, _affine(), "candidate")
    node.SetAndObserveTransformNodeID(parent.GetID())
    recovered = glue.transformBetweenVolumes(fixed, node)
    for point_ras in FIXED_POINTS_RAS:
        p = tuple(F3 @ point_ras)
        np.testing.assert_allclose(recovered.TransformPoint(p), _affine().TransformPoint(p),
                                   rtol=0, atol=1e-9)


def test_non_linear_transform_node_cannot_be_judged(scene):
    fixed = glue.addVolumeNodeFromImage(scene, make_image(np.eye(3), np.int16), "fixed")
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    with pytest.raises(InputError, match="'warp' is not linear"):
        glue.transformBetweenVolumes(fixed, grid)


def test_node_metadata_feeds_modality_detection_with_dicom_tags(scene):
    from OneClickRegistrationLib.modality import Modality, detect_modality

    class DicomDatabaseStandIn:
        """slicer.dicomDatabase (ctkDICOMDatabase) is not in the wheel; same lookup, fixed answers."""

        def __init__(self, tags):
            self.tags, self.asked = tags, []

        def instanceValue(self, uid, tag):
            self.asked.append(uid)
            return self.tags.get(tag, "")

    node = glue.addVolumeNodeFromImage(scene, make_image(np.eye(3), np.int16), "Series 3")
    assert glue.nodeMetadata(node, dicomDatabase=DicomDatabaseStandIn({})) == {}  # not from DICOM
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3.4 1.2.3.5")
    database = DicomDatabaseStandIn({"0008,0060": "MR", "0008,103e": "AX FLAIR FS ", "0018,0081": "120"})
    metadata = glue.nodeMetadata(node, dicomDatabase=database)
    assert metadata == {"DICOM.instanceUIDs": "1.2.3.4 1.2.3.5", "0008,0060": "MR",
                        "0008,103e": "AX FLAIR FS", "0018,0081": "120"}
    assert set(database.asked) == {"1.2.3.4"}
    evidence = detect_modality(name=node.GetName(), metadata=metadata)
    assert evidence.modality is Modality.FLAIR and evidence.source == "metadata"
