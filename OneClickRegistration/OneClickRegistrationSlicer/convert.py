"""Slicer MRML nodes <-> SimpleITK images, transforms and files.

Conventions handled here, once:

* ITK/SimpleITK physical space is LPS, Slicer's is RAS: ``M_ras = F @ M_lps @ F`` with
  ``F = diag(-1, -1, 1, 1)``.
* A registration result is an ITK *resampling* transform (fixed -> moving). In a Slicer transform node
  that is the "from parent" transform: the moving volume, placed under the node, is drawn where it lines
  up with the fixed volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from OneClickRegistrationLib.errors import InputError

# LPS <-> RAS: negate the first two axes (its own inverse).
FLIP_3 = np.diag([-1.0, -1.0, 1.0])
FLIP_4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def arrayFromVtkMatrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def vtkMatrixFromArray(array: np.ndarray) -> vtk.vtkMatrix4x4:
    values = np.asarray(array, dtype=float)
    if values.shape != (4, 4):
        raise InputError(f"Expected a 4x4 matrix; received shape {values.shape}.")
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(values[r, c]))
    return matrix


def lpsMatrixFromTransform(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 LPS matrix of a linear SimpleITK transform (a composite of linear ones is flattened).

    Raises :class:`InputError` for a non-linear transform: rigid/affine results must stay a plain
    matrix, and a deformable one cannot be represented by one.
    """
    if not isinstance(transform, sitk.Transform):
        raise InputError(f"Expected a SimpleITK transform; received {type(transform).__name__}.")
    if transform.GetDimension() != 3:
        raise InputError(f"Expected a 3D transform; received a {transform.GetDimension()}D one.")
    if not transform.IsLinear():
        raise InputError(
            f"Expected a linear (rigid or affine) transform; received a non-linear "
            f"{transform.GetName()}. Only linear results can become a linear transform node."
        )
    # Probing the transform at the origin and the unit vectors works for every linear ITK type
    # (Euler, Versor, Similarity, Affine, Translation, Scale, composites of them) without a case
    # per class, and is exact up to floating-point rounding.
    offset = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.array(transform.TransformPoint(unit)) - offset
    matrix[:3, 3] = offset
    return matrix


def rasMatrixFromTransform(transform: sitk.Transform) -> np.ndarray:
    """Fixed->moving resampling transform (ITK, LPS) as a RAS 4x4 matrix (Slicer's "from parent")."""
    return FLIP_4 @ lpsMatrixFromTransform(transform) @ FLIP_4


def transformFromRasMatrix(rasMatrix: np.ndarray) -> sitk.AffineTransform:
    """A RAS "from parent" matrix back to an ITK fixed->moving resampling transform (LPS)."""
    lps = FLIP_4 @ np.asarray(rasMatrix, dtype=float) @ FLIP_4
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(float(v) for v in lps[:3, :3].ravel()))
    transform.SetTranslation(tuple(float(v) for v in lps[:3, 3]))
    return transform


def _nodeLabel(node: Any) -> str:
    return repr(node.GetName()) if node is not None else "None"


def imageFromVolumeNode(volumeNode: Any, *, role: str = "volume") -> sitk.Image:
    """A SimpleITK image (LPS) holding a copy of the volume node's voxels and its exact geometry.

    The node's own parent transform is not applied: the image is in the node's local frame.
    """
    if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        kind = volumeNode.GetClassName() if volumeNode is not None else "nothing"
        raise InputError(f"The {role} must be a scalar volume node; received {kind}.")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData() is None or imageData.GetPointData().GetScalars() is None:
        raise InputError(f"The {role} volume {_nodeLabel(volumeNode)} has no image data (empty node).")
    scalars = imageData.GetPointData().GetScalars()
    nx, ny, nz = imageData.GetDimensions()
    components = scalars.GetNumberOfComponents()
    # VTK stores x fastest; numpy (z, y, x) matches SimpleITK's array order.
    voxels = numpy_support.vtk_to_numpy(scalars)
    shape = (nz, ny, nx) if components == 1 else (nz, ny, nx, components)
    image = sitk.GetImageFromArray(voxels.reshape(shape), isVector=components > 1)  # one copy, from a view

    directions = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(directions)
    directionRas = arrayFromVtkMatrix(directions)[:3, :3]
    image.SetSpacing(tuple(float(s) for s in volumeNode.GetSpacing()))
    image.SetOrigin(tuple(float(v) for v in FLIP_3 @ np.array(volumeNode.GetOrigin())))
    image.SetDirection(tuple(float(v) for v in (FLIP_3 @ directionRas).ravel()))
    return image


def updateVolumeNodeFromImage(volumeNode: Any, image: sitk.Image) -> Any:
    """Replace a volume node's voxels and geometry with a copy of ``image`` (LPS -> RAS)."""
    if image.GetDimension() != 3:
        raise InputError(f"Expected a 3D image for a volume node; received {image.GetDimension()}D.")
    voxels = sitk.GetArrayFromImage(image)  # (z, y, x[, c]), a copy
    components = image.GetNumberOfComponentsPerPixel()
    flat = np.ascontiguousarray(voxels.reshape(-1) if components == 1 else voxels.reshape(-1, components))
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(*image.GetSize())
    scalars = numpy_support.numpy_to_vtk(flat, deep=True)
    scalars.SetName("ImageScalars")
    imageData.GetPointData().SetScalars(scalars)

    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    directions = np.eye(4)
    directions[:3, :3] = FLIP_3 @ direction
    volumeNode.SetSpacing(*image.GetSpacing())
    volumeNode.SetOrigin(*(FLIP_3 @ np.array(image.GetOrigin(), dtype=float)))
    volumeNode.SetIJKToRASDirectionMatrix(vtkMatrixFromArray(directions))
    volumeNode.SetAndObserveImageData(imageData)
    return volumeNode


def addVolumeNodeFromImage(scene: Any, image: sitk.Image, name: str, *,
                           parentTransformNodeID: str | None = None) -> Any:
    """A new scalar volume node (with a default display node) holding ``image``."""
    volumeNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    updateVolumeNodeFromImage(volumeNode, image)
    volumeNode.CreateDefaultDisplayNodes()
    if parentTransformNodeID:
        volumeNode.SetAndObserveTransformNodeID(parentTransformNodeID)
    return volumeNode


def updateTransformNodeFromTransform(transformNode: Any, transform: sitk.Transform) -> Any:
    """Set a linear transform node to an ITK fixed->moving resampling transform (its "from parent")."""
    transformNode.SetMatrixTransformFromParent(vtkMatrixFromArray(rasMatrixFromTransform(transform)))
    return transformNode


def addTransformNodeFromTransform(scene: Any, transform: sitk.Transform, name: str) -> Any:
    """A new ``vtkMRMLLinearTransformNode`` for an ITK fixed->moving resampling transform."""
    matrix = rasMatrixFromTransform(transform)  # validates before anything is added to the scene
    transformNode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", scene.GenerateUniqueName(name))
    transformNode.SetMatrixTransformFromParent(vtkMatrixFromArray(matrix))
    return transformNode


def transformBetweenVolumes(fixedNode: Any, transformNode: Any) -> sitk.AffineTransform:
    """The ITK fixed->moving transform implied by placing the moving volume under ``transformNode``.

    It maps the fixed volume's local frame to the local frame of nodes under ``transformNode``, so it
    can be scored against the two volumes' own images (used to judge an existing transform).
    """
    if transformNode is None:
        raise InputError("Expected a transform node to judge; received none.")
    fixedParent = fixedNode.GetParentTransformNode() if fixedNode is not None else None
    matrix = vtk.vtkMatrix4x4()
    linear = transformNode.GetMatrixTransformBetweenNodes(fixedParent, transformNode, matrix)
    if not linear:
        raise InputError(
            f"The transform node {_nodeLabel(transformNode)} is not linear (or lies under a non-linear "
            "transform); only rigid/affine transforms can be judged here."
        )
    return transformFromRasMatrix(arrayFromVtkMatrix(matrix))


# DICOM tags modality detection reads: Modality, SeriesDescription, ProtocolName, SequenceName,
# TR, TE, TI, ScanningSequence, SOPClassUID.
DICOM_TAGS = ("0008,0060", "0008,103e", "0018,1030", "0018,0024", "0018,0080", "0018,0081", "0018,0082",
              "0018,0020", "0008,0016")


def nodeMetadata(volumeNode: Any, *, dicomDatabase: Any = None) -> dict[str, str]:
    """What modality detection may read about a node (the name is passed separately).

    The node's attributes, plus, for a volume loaded from DICOM (``DICOM.instanceUIDs`` attribute),
    the :data:`DICOM_TAGS` of its first instance from ``dicomDatabase`` (Slicer's
    ``slicer.dicomDatabase``: ``instanceValue(uid, "gggg,eeee")``). Empty values are left out.
    """
    metadata: dict[str, str] = {}
    names = vtk.vtkStringArray()
    volumeNode.GetAttributeNames(names)
    for i in range(names.GetNumberOfValues()):
        key = names.GetValue(i)
        metadata[key] = volumeNode.GetAttribute(key) or ""
    uids = metadata.get("DICOM.instanceUIDs", "").split()
    if uids and dicomDatabase is not None:
        for tag in DICOM_TAGS:
            metadata[tag] = str(dicomDatabase.instanceValue(uids[0], tag) or "").strip()
    return {key: value for key, value in metadata.items() if value}


def loadVolumeFile(scene: Any, path: str, *, name: str | None = None) -> Any:
    """Read a volume file (NRRD, NIfTI, MHA, ...) into a new scalar volume node, as Slicer does."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"The volume file does not exist: {str(file)!r}.")
    base = name or file.name.split(".")[0]
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(base))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(file))
    if not storage.ReadData(node):
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
        raise InputError(f"Cannot read {str(file)!r} as a volume (expected NRRD, NIfTI, MHA, ...).")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def saveNodeToFile(node: Any, path: str) -> None:
    """Write a volume or transform node with Slicer's writers (transforms: ITK LPS "from parent")."""
    scene = node.GetScene()
    className = ("vtkMRMLTransformStorageNode" if node.IsA("vtkMRMLTransformNode")
                 else "vtkMRMLVolumeArchetypeStorageNode")
    storage = scene.AddNewNodeByClass(className)
    try:
        storage.SetFileName(str(path))
        if not storage.WriteData(node):
            raise InputError(f"Cannot write {_nodeLabel(node)} to {str(path)!r}.")
    finally:
        scene.RemoveNode(storage)
