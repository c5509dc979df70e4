"""The scene glue: Slicer MRML nodes <-> SimpleITK images and transforms.

This is the only file that touches MRML. It imports neither Qt nor ``slicer.app``/``slicer.cli``/
``ScriptedLoadableModule``, so it runs (and is tested) with the ``slicer-core`` wheel as well as inside
Slicer.

Conventions handled here, once:

* ITK/SimpleITK physical space is LPS, Slicer's is RAS: ``M_ras = F @ M_lps @ F`` with
  ``F = diag(-1, -1, 1, 1)``.
* A registration result is an ITK *resampling* transform (fixed -> moving). In a Slicer transform node
  that is the "from parent" transform: the moving volume, placed under the node, is drawn where it lines
  up with the fixed volume. Rigid and affine results always become a plain linear transform node.
* Input nodes are never modified, except that the moving volume is placed under the result transform
  (without hardening). A failed or cancelled run leaves the scene as it was (:func:`restoredOnFailure`).
"""

from __future__ import annotations

import html
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from OneClickRegistrationLib.errors import CancelledError, EngineError, InputError

# LPS <-> RAS: negate the first two axes (its own inverse).
FLIP_3 = np.diag([-1.0, -1.0, 1.0])
FLIP_4 = np.diag([-1.0, -1.0, 1.0, 1.0])

RESULTS_TABLE_ATTRIBUTE = "OneClickRegistration.ResultsTable"
RESULT_ATTRIBUTE_PREFIX = "OneClickRegistration."
RESULTS_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    # (column name, kind): "s" string, "d" double (missing values are NaN)
    ("Fixed", "s"),
    ("Moving", "s"),
    ("Fixed modality", "s"),
    ("Moving modality", "s"),
    ("Preset", "s"),
    ("Engine", "s"),
    ("Metric", "s"),
    ("Score before", "d"),
    ("Score after", "d"),
    ("Verdict", "s"),
    ("Reasons", "s"),
    ("Time (s)", "d"),
    ("Transform", "s"),
)


# ---------------------------------------------------------------------------------------------------
# Matrices
# ---------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------
# Volumes
# ---------------------------------------------------------------------------------------------------

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
    image = sitk.GetImageFromArray(np.array(voxels).reshape(shape), isVector=components > 1)  # copies

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


# ---------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------
# Display and results table
# ---------------------------------------------------------------------------------------------------

def _nodesByClass(scene: Any, className: str) -> list[Any]:
    collection = scene.GetNodesByClass(className)
    nodes = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    return [node for node in nodes if node is not None]


def showInSliceViews(scene: Any, backgroundNode: Any, foregroundNode: Any, *, opacity: float = 0.5) -> int:
    """Fixed as background, registered as foreground at ``opacity``, in every slice view.

    Slice composite nodes exist only when Slicer has views; returns how many were set (0 in a bare scene).
    """
    composites = _nodesByClass(scene, "vtkMRMLSliceCompositeNode")
    for composite in composites:
        composite.SetBackgroundVolumeID(backgroundNode.GetID() if backgroundNode is not None else None)
        composite.SetForegroundVolumeID(foregroundNode.GetID() if foregroundNode is not None else None)
        composite.SetForegroundOpacity(opacity)
    return len(composites)


def resultsTableNode(scene: Any, *, create: bool = True) -> Any:
    """The scene's results table (one row per registration), created on first use."""
    for table in _nodesByClass(scene, "vtkMRMLTableNode"):
        if table.GetAttribute(RESULTS_TABLE_ATTRIBUTE) == "1":
            return table
    if not create:
        return None
    name = scene.GenerateUniqueName("OneClickRegistration results")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table.SetAttribute(RESULTS_TABLE_ATTRIBUTE, "1")
    for name, kind in RESULTS_TABLE_COLUMNS:
        column = vtk.vtkStringArray() if kind == "s" else vtk.vtkDoubleArray()
        column.SetName(name)
        table.AddColumn(column)
    return table


def _float(value: Any) -> float:
    return float(value) if value is not None and np.isfinite(value) else float("nan")


def resultRow(result: Any, *, fixedName: str, movingName: str, transformName: str = "") -> dict[str, Any]:
    """One results-table row (column name -> value) for a pipeline ``RegistrationResult``."""
    return {
        "Fixed": fixedName,
        "Moving": movingName,
        "Fixed modality": str(result.fixed_modality.modality),
        "Moving modality": str(result.moving_modality.modality),
        "Preset": result.preset.name,
        "Engine": result.engine,
        "Metric": str(result.score_after.metric),
        "Score before": _float(result.score_before.value),
        "Score after": _float(result.score_after.value),
        "Verdict": result.verdict.label,
        "Reasons": "; ".join(result.verdict.reasons),
        "Time (s)": _float(result.elapsed_s),
        "Transform": transformName,
    }


def appendResultRow(table: Any, row: Mapping[str, Any]) -> int:
    """Append ``row`` to the results table; returns the new row's index."""
    index = table.AddEmptyRow()
    vtkTable = table.GetTable()
    for name, kind in RESULTS_TABLE_COLUMNS:
        column = vtkTable.GetColumnByName(name)
        if column is None:  # a table saved by an older version: add the missing column
            column = vtk.vtkStringArray() if kind == "s" else vtk.vtkDoubleArray()
            column.SetName(name)
            column.SetNumberOfValues(table.GetNumberOfRows())
            table.AddColumn(column)
        value = row.get(name, "" if kind == "s" else float("nan"))
        column.SetValue(index, str(value) if kind == "s" else _float(value))
    vtkTable.Modified()
    table.Modified()
    return index


# ---------------------------------------------------------------------------------------------------
# Leaving the scene as it was on failure
# ---------------------------------------------------------------------------------------------------

@dataclass
class SceneSnapshot:
    """What a registration run may change: new nodes, the moving volume's transform, slice layers."""

    scene: Any
    node_ids: frozenset[str]
    moving_node: Any
    moving_transform_node_id: str | None
    slice_layers: tuple[tuple[str, str | None, str | None, float], ...]

    def restore(self) -> None:
        if self.moving_node is not None:
            self.moving_node.SetAndObserveTransformNodeID(self.moving_transform_node_id)
        for nodeID, background, foreground, opacity in self.slice_layers:
            composite = self.scene.GetNodeByID(nodeID)
            if composite is not None:
                composite.SetBackgroundVolumeID(background)
                composite.SetForegroundVolumeID(foreground)
                composite.SetForegroundOpacity(opacity)
        added = [self.scene.GetNthNode(i) for i in range(self.scene.GetNumberOfNodes())]
        for node in reversed(added):
            # Removing a node may already have removed its display/storage nodes.
            if node is None or node.GetID() in self.node_ids:
                continue
            if self.scene.GetNodeByID(node.GetID()) is not None:
                self.scene.RemoveNode(node)


def snapshotScene(scene: Any, movingNode: Any = None) -> SceneSnapshot:
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    layers = tuple(
        (c.GetID(), c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), c.GetForegroundOpacity())
        for c in _nodesByClass(scene, "vtkMRMLSliceCompositeNode")
    )
    return SceneSnapshot(
        scene=scene,
        node_ids=frozenset(node.GetID() for node in nodes if node is not None),
        moving_node=movingNode,
        moving_transform_node_id=movingNode.GetTransformNodeID() if movingNode is not None else None,
        slice_layers=layers,
    )


@contextmanager
def restoredOnFailure(scene: Any, movingNode: Any = None) -> Iterator[SceneSnapshot]:
    """Run the body; if it raises (error or cancel), put the scene back as it was and re-raise."""
    snapshot = snapshotScene(scene, movingNode)
    try:
        yield snapshot
    except BaseException:
        snapshot.restore()
        raise


# ---------------------------------------------------------------------------------------------------
# A whole registration: nodes -> images -> core -> nodes
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegistrationInputs:
    """What the core needs, taken from the nodes on the main thread (safe to hand to a worker)."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_name: str
    moving_name: str
    fixed_metadata: Mapping[str, str] = field(default_factory=dict)
    moving_metadata: Mapping[str, str] = field(default_factory=dict)

    def registerKwargs(self) -> dict[str, Any]:
        return {
            "fixed_name": self.fixed_name,
            "moving_name": self.moving_name,
            "fixed_metadata": dict(self.fixed_metadata),
            "moving_metadata": dict(self.moving_metadata),
        }


@dataclass(frozen=True)
class SceneResult:
    """The nodes a registration produced, with the core's result."""

    result: Any
    transform_node: Any
    resampled_node: Any
    table_node: Any
    table_row: int


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


def inputsFromNodes(fixedNode: Any, movingNode: Any) -> RegistrationInputs:
    if fixedNode is not None and movingNode is not None and fixedNode.GetID() == movingNode.GetID():
        raise InputError(
            f"The fixed and moving volumes must be different nodes; both are {_nodeLabel(fixedNode)}."
        )
    fixed = imageFromVolumeNode(fixedNode, role="fixed")
    moving = imageFromVolumeNode(movingNode, role="moving")
    return RegistrationInputs(
        fixed=fixed,
        moving=moving,
        fixed_name=fixedNode.GetName() or "fixed",
        moving_name=movingNode.GetName() or "moving",
        fixed_metadata=nodeMetadata(fixedNode),
        moving_metadata=nodeMetadata(movingNode),
    )


def applyResult(scene: Any, fixedNode: Any, movingNode: Any, result: Any, *,
                createResampledVolume: bool = False, showResult: bool = True,
                addTableRow: bool = True) -> SceneResult:
    """Put a registration result into the scene; on any failure the scene is left as it was.

    The moving volume is placed under a new linear transform node (not hardened). If the fixed volume
    itself lies under a transform, the result goes under that same transform so the pair lines up
    in world coordinates too.
    """
    with restoredOnFailure(scene, movingNode):
        fixedName, movingName = fixedNode.GetName(), movingNode.GetName()
        transformNode = addTransformNodeFromTransform(scene, result.transform, f"{movingName} to {fixedName}")
        transformNode.SetAndObserveTransformNodeID(fixedNode.GetTransformNodeID())
        for key, value in (
            ("Verdict", result.verdict.label),
            ("Engine", result.engine),
            ("Preset", result.preset.name),
            ("ScoreBefore", str(result.score_before.value)),
            ("ScoreAfter", str(result.score_after.value)),
        ):
            transformNode.SetAttribute(RESULT_ATTRIBUTE_PREFIX + key, value)
        movingNode.SetAndObserveTransformNodeID(transformNode.GetID())

        resampledNode = None
        if createResampledVolume:
            resampledNode = addVolumeNodeFromImage(
                scene, result.registered, f"{movingName} registered",
                parentTransformNodeID=fixedNode.GetTransformNodeID(),
            )
        tableNode, tableRow = None, -1
        if addTableRow:
            tableNode = resultsTableNode(scene)
            tableRow = appendResultRow(
                tableNode,
                resultRow(result, fixedName=fixedName, movingName=movingName,
                          transformName=transformNode.GetName()),
            )
        if showResult:
            showInSliceViews(scene, fixedNode, resampledNode if resampledNode is not None else movingNode)
        return SceneResult(result, transformNode, resampledNode, tableNode, tableRow)


RegisterFunction = Callable[..., Any]


def registerNodes(fixedNode: Any, movingNode: Any, *, register: RegisterFunction | None = None,
                  createResampledVolume: bool = False, showResult: bool = True,
                  addTableRow: bool = True, **options: Any) -> SceneResult:
    """Register two volume nodes in the calling thread and put the result in their scene.

    ``options`` go to :func:`OneClickRegistrationLib.pipeline.register` (engine, transform, modality
    overrides, progress, cancel...). Raises the core's errors; the scene is unchanged on failure.
    """
    if register is None:
        from OneClickRegistrationLib.pipeline import register
    scene = fixedNode.GetScene() if fixedNode is not None else None
    if scene is None:
        raise InputError("The fixed volume must be a node in a scene; received a node without a scene.")
    with restoredOnFailure(scene, movingNode):
        inputs = inputsFromNodes(fixedNode, movingNode)
        result = register(inputs.fixed, inputs.moving, **{**inputs.registerKwargs(), **options})
        return applyResult(scene, fixedNode, movingNode, result, createResampledVolume=createResampledVolume,
                           showResult=showResult, addTableRow=addTableRow)


# ---------------------------------------------------------------------------------------------------
# Files (batch scripts): Slicer's own storage nodes, so no slicer.app is needed
# ---------------------------------------------------------------------------------------------------

def loadVolumeFile(scene: Any, path: str, *, name: str | None = None) -> Any:
    """Read a volume file (NRRD, NIfTI, MHA, ...) into a new scalar volume node, as Slicer does."""
    from pathlib import Path

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


# ---------------------------------------------------------------------------------------------------
# Running a CLI module (BRAINSFit) on files, through temporary nodes
# ---------------------------------------------------------------------------------------------------

_TEMPORARY_PREFIX = "OneClickRegistration temporary "


@dataclass
class CliNodes:
    """Temporary nodes standing for a CLI module's file parameters; remove them with :meth:`cleanup`."""

    scene: Any
    parameters: dict[str, Any]  # plain values plus node IDs, ready for slicer.cli.run/runSync
    outputs: list[tuple[Any, str]]  # (output node, file to write it to)
    temporary: list[Any]

    def cleanup(self) -> None:
        for node in reversed(self.temporary):
            if node is not None and node.GetScene() is self.scene:
                self.scene.RemoveNode(node)
        self.temporary.clear()


def _temporaryNode(nodes: CliNodes, className: str, label: str) -> Any:
    node = nodes.scene.AddNewNodeByClass(className, _TEMPORARY_PREFIX + label)
    node.SetHideFromEditors(True)
    node.SetSaveWithScene(False)
    nodes.temporary.append(node)
    return node


def _storageFor(nodes: CliNodes, node: Any, path: str) -> Any:
    className = ("vtkMRMLTransformStorageNode" if node.IsA("vtkMRMLTransformNode")
                 else "vtkMRMLVolumeArchetypeStorageNode")
    storage = _temporaryNode(nodes, className, "storage")
    storage.SetFileName(str(path))
    return storage


def prepareCliNodes(scene: Any, plan: Any, *, name: str = "BRAINSFit") -> CliNodes:
    """Load a host plan's input files into temporary nodes and create its output nodes.

    ``plan`` is :class:`OneClickRegistrationLib.engines.brainsfit_engine.HostParameterPlan`: the input
    volumes, label maps and transforms to load, the outputs to create and the plain values. The user's
    own nodes are never passed to the CLI module, so its side effects touch only these copies.
    """
    nodes = CliNodes(scene=scene, parameters=dict(plan.values), outputs=[], temporary=[])
    try:
        inputs = (
            (plan.input_volumes, "vtkMRMLScalarVolumeNode"),
            (plan.input_labelmaps, "vtkMRMLLabelMapVolumeNode"),
            (plan.input_transforms, "vtkMRMLLinearTransformNode"),
        )
        for files, className in inputs:
            for parameter, path in files.items():
                node = _temporaryNode(nodes, className, parameter)
                if not _storageFor(nodes, node, path).ReadData(node):
                    raise EngineError(f"Cannot load {str(path)!r} for the {name} parameter {parameter!r}.")
                nodes.parameters[parameter] = node.GetID()
        outputs = ((plan.output_transforms, "vtkMRMLLinearTransformNode"),
                   (plan.output_volumes, "vtkMRMLScalarVolumeNode"))
        for files, className in outputs:
            for parameter, path in files.items():
                node = _temporaryNode(nodes, className, parameter)
                nodes.parameters[parameter] = node.GetID()
                nodes.outputs.append((node, str(path)))
    except BaseException:
        nodes.cleanup()
        raise
    return nodes


def checkCliNode(cliNode: Any, *, name: str = "BRAINSFit") -> None:
    """Raise if a finished CLI node did not complete: ``slicer.cli.runSync`` itself never raises."""
    status = cliNode.GetStatus()
    if status & cliNode.ErrorsMask:
        text = (cliNode.GetErrorText() or "").strip().splitlines()
        raise EngineError(f"{name} (Slicer CLI module) failed: {cliNode.GetStatusString()}.",
                          log_tail=tuple(text[-20:]))
    if status == cliNode.Cancelled:
        raise CancelledError(f"The {name} run was cancelled.")
    if status != cliNode.Completed:
        raise EngineError(
            f"{name} (Slicer CLI module) stopped without completing: {cliNode.GetStatusString()}."
        )


def finishCliNodes(nodes: CliNodes, cliNode: Any, *, name: str = "BRAINSFit") -> None:
    """Check the CLI node's status, then write every output node to its requested file."""
    checkCliNode(cliNode, name=name)
    for node, path in nodes.outputs:
        if not _storageFor(nodes, node, path).WriteData(node):
            raise EngineError(f"{name} finished but its output could not be written to {path!r}.")


def runCliWithTemporaryNodes(scene: Any, plan: Any, runCli: Callable[[dict[str, Any]], Any], *,
                             name: str = "BRAINSFit") -> None:
    """Synchronous host runner body: load, ``runCli(parameters) -> cliNode``, check, save, clean up.

    ``runCli`` is ``lambda p: slicer.cli.runSync(slicer.modules.brainsfit, None, p)`` inside Slicer.
    Every temporary node (and the CLI node) is removed whatever happens.
    """
    nodes = prepareCliNodes(scene, plan, name=name)
    cliNode = None
    try:
        cliNode = runCli(dict(nodes.parameters))
        finishCliNodes(nodes, cliNode, name=name)
    finally:
        nodes.cleanup()
        if cliNode is not None:
            _removeIfInScene(scene, cliNode)


class MainThreadCalls:
    """Lets a worker thread run MRML code on the main thread (MRML is not thread-safe).

    The worker calls :meth:`call` and waits; the main thread runs :meth:`runPending` from a timer.
    On the main thread itself :meth:`call` runs the function directly.
    """

    def __init__(self) -> None:
        self._pending: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], threading.Event, dict]] = (
            queue.Queue())

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            return function(*args)
        done: threading.Event = threading.Event()
        box: dict[str, Any] = {}
        self._pending.put((function, args, done, box))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def runPending(self) -> int:
        """Run every waiting call (main thread); returns how many ran."""
        count = 0
        while True:
            try:
                function, args, done, box = self._pending.get_nowait()
            except queue.Empty:
                return count
            try:
                box["value"] = function(*args)
            except BaseException as error:  # handed back to the waiting thread
                box["error"] = error
            done.set()
            count += 1


def runCliThroughMainThread(scene: Any, plan: Any, startCli: Callable[[dict[str, Any]], Any],
                            calls: MainThreadCalls, *, cancelRequested: Callable[[], bool] = lambda: False,
                            name: str = "BRAINSFit", pollSeconds: float = 0.2) -> None:
    """Host runner body for a worker thread: every MRML step runs on the main thread via ``calls``.

    ``startCli`` starts the CLI asynchronously (``slicer.cli.run``) and returns its node; the worker
    polls it, so the GUI stays responsive, and cancels it when ``cancelRequested()`` turns true.
    """
    nodes = calls.call(prepareCliNodes, scene, plan)
    cliNode = None
    try:
        cliNode = calls.call(startCli, dict(nodes.parameters))
        cancelled = False
        while calls.call(cliNode.IsBusy):
            if not cancelled and cancelRequested():
                calls.call(cliNode.Cancel)
                cancelled = True
            time.sleep(pollSeconds)
        calls.call(finishCliNodes, nodes, cliNode)
    finally:
        calls.call(nodes.cleanup)
        if cliNode is not None:
            calls.call(_removeIfInScene, scene, cliNode)


def _removeIfInScene(scene: Any, node: Any) -> None:
    if node.GetScene() is scene:
        scene.RemoveNode(node)


# ---------------------------------------------------------------------------------------------------
# Running the core off the main thread, and saying what it found
# ---------------------------------------------------------------------------------------------------

class BackgroundJob:
    """Runs ``work(progress, cancelRequested)`` in a daemon thread; the main thread polls it.

    The worker never touches the scene or the GUI: it only puts messages on a thread-safe queue.
    :meth:`poll` (called from a timer on the main thread) returns the latest progress and, once the work
    has ended, sets ``finished`` with either ``result`` or ``error``.
    """

    def __init__(self, work: Callable[[Callable[[float, str], None], Callable[[], bool]], Any], *,
                 name: str = "OneClickRegistration") -> None:
        self._work = work
        self._messages: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            value = self._work(lambda f, m: self._messages.put(("progress", (float(f), str(m)))),
                               self._cancel.is_set)
            self._messages.put(("done", value))
        except BaseException as error:  # handed to the main thread
            self._messages.put(("error", error))

    def start(self) -> BackgroundJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def cancelRequested(self) -> bool:
        return self._cancel.is_set()

    def poll(self) -> tuple[float, str] | None:
        """Drain the queue: the latest (fraction, message) seen, or None if there was none."""
        latest = None
        while not self.finished:
            try:
                kind, payload = self._messages.get_nowait()
            except queue.Empty:
                break
            if kind == "progress":
                latest = payload
            else:
                self.finished = True
                self.result, self.error = (payload, None) if kind == "done" else (None, payload)
        return latest

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


def runServingMainThread(function: Callable[[], Any], calls: MainThreadCalls, *,
                         idle: Callable[[], Any] | None = None, pollSeconds: float = 0.02) -> Any:
    """Run ``function`` in a worker while this (main) thread serves ``calls``; return or raise its outcome.

    For console and batch use: the core's recovery runs candidates in its own threads, and a BRAINSFit
    run from any of them needs the main thread for MRML. ``idle`` (Slicer: ``slicer.app.processEvents``)
    keeps the application's events flowing meanwhile, as ``slicer.cli.runSync`` itself does.
    """
    job = BackgroundJob(lambda progress, cancel: function()).start()
    while not job.finished:
        calls.runPending()
        if idle is not None:
            idle()
        job.poll()
        job.join(pollSeconds)
    if job.error is not None:
        raise job.error
    return job.result


VERDICT_WORDS = {
    "good": ("Good", "#1a7f37", "the volumes are aligned; the result can be used."),
    "questionable": ("Questionable", "#b35900", "check the alignment visually before using it."),
    "failed": ("Failed", "#c62828", "the volumes are not aligned; do not use this result."),
}


def _scoreText(value: Any) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"


def resultSummaryHtml(result: Any, *, judged: bool = False) -> str:
    """The panel's plain-words summary of a ``RegistrationResult`` (rich text for a QLabel)."""
    e = html.escape
    label = result.verdict.label
    word, colour, meaning = VERDICT_WORDS.get(label, (label.title(), "#000000", ""))
    before, after = result.score_before, result.score_after
    lines = [f'<p><b style="color:{colour}">{e(word)}</b>: {e(meaning)}</p>']
    if result.verdict.reasons:
        lines.append("<ul>" + "".join(f"<li>{e(r)}</li>" for r in result.verdict.reasons) + "</ul>")
    score_label = "Score of the transform" if judged else "Score"
    lines.append(
        f"<p>{score_label} ({e(str(after.metric).upper())}, higher is better): "
        f"{_scoreText(before.value)} &rarr; <b>{_scoreText(after.value)}</b>"
        + (f" <i>({e(after.message)})</i>" if not after.ok and after.message else "") + "</p>"
    )
    fixed, moving = result.fixed_modality, result.moving_modality
    lines.append(
        f"<p>Modalities: fixed {e(str(fixed.modality))} ({e(fixed.source)}), "
        f"moving {e(str(moving.modality))} ({e(moving.source)})<br>"
        f"Preset: {e(result.preset.describe())}"
        + ("" if judged else f"<br>Engine: {e(result.engine)} &middot; time {result.elapsed_s:.1f} s")
        + "</p>"
    )
    if len(result.attempts) > 1:
        rows = "".join(
            f"<li>{e(a.engine)} ({e(a.start)}): {_scoreText(a.score)}"
            + (f", {e(a.verdict)}" if a.verdict else "") + (f", error: {e(a.error)}" if a.error else "")
            + "</li>"
            for a in result.attempts
        )
        lines.append(f"<p>{len(result.attempts)} attempts, the best one kept:</p><ul>{rows}</ul>")
    return "".join(lines)
