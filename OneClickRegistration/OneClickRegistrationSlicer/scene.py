"""Putting a registration's outputs into the scene, and taking back exactly that on failure.

The moving volume is placed under the output transform (not hardened); the output transform is a new
linear transform node unless the caller chose one. Everything this changes is recorded in a
:class:`SceneChanges`, so a failure removes only the nodes this operation created and puts back only
what it modified: nodes other code added meanwhile are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import vtk

from OneClickRegistrationLib.errors import InputError

from .convert import addVolumeNodeFromImage, arrayFromVtkMatrix, rasMatrixFromTransform, vtkMatrixFromArray
from .results_table import appendResultRow, resultRow, resultsTableNode

RESULT_ATTRIBUTE_PREFIX = "OneClickRegistration."


def _nodesByClass(scene: Any, className: str) -> list[Any]:
    collection = scene.GetNodesByClass(className)
    nodes = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    return [node for node in nodes if node is not None]


@dataclass
class SceneChanges:
    """What one operation did to a scene, in order, so that :meth:`undo` can take back just that."""

    scene: Any
    created: list[Any] = field(default_factory=list)
    undoSteps: list[Any] = field(default_factory=list)

    def addNode(self, className: str, name: str) -> Any:
        node = self.scene.AddNewNodeByClass(className, self.scene.GenerateUniqueName(name))
        self.created.append(node)
        return node

    def adopt(self, node: Any) -> Any:
        """Record a node created by someone else on this operation's behalf (e.g. a table)."""
        self.created.append(node)
        return node

    def setParentTransform(self, node: Any, transformNodeID: str | None) -> None:
        previous = node.GetTransformNodeID()
        self.undoSteps.append(lambda: node.SetAndObserveTransformNodeID(previous))
        node.SetAndObserveTransformNodeID(transformNodeID)

    def setMatrixFromParent(self, transformNode: Any, matrix: Any) -> None:
        previous = vtk.vtkMatrix4x4()  # the direction the node stores, so that undo is exact
        transformNode.GetMatrixTransformToParent(previous)
        self.undoSteps.append(lambda: transformNode.SetMatrixTransformToParent(previous))
        transformNode.SetMatrixTransformFromParent(vtkMatrixFromArray(matrix))

    def setAttribute(self, node: Any, name: str, value: str) -> None:
        previous = node.GetAttribute(name)
        self.undoSteps.append(lambda: node.SetAttribute(name, previous) if previous is not None
                              else node.RemoveAttribute(name))
        node.SetAttribute(name, value)

    def appendRow(self, table: Any, row: dict[str, Any]) -> int:
        index = appendResultRow(table, row)
        if table not in self.created:
            self.undoSteps.append(lambda: table.RemoveRow(index))
        return index

    def showInSliceViews(self, background: Any, foreground: Any, *, opacity: float = 0.5) -> None:
        """Fixed as background, registered as foreground, in every slice view (none in a bare scene)."""
        for composite in _nodesByClass(self.scene, "vtkMRMLSliceCompositeNode"):
            layers = (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(),
                      composite.GetForegroundOpacity())
            self.undoSteps.append(lambda c=composite, old=layers: (
                c.SetBackgroundVolumeID(old[0]), c.SetForegroundVolumeID(old[1]), c.SetForegroundOpacity(old[2])))
            composite.SetBackgroundVolumeID(background.GetID())
            composite.SetForegroundVolumeID(foreground.GetID())
            composite.SetForegroundOpacity(opacity)

    def undo(self) -> None:
        for step in reversed(self.undoSteps):
            step()
        self.undoSteps.clear()
        for node in reversed(self.created):
            # Removing a node may already have removed its display and storage nodes.
            if node is not None and node.GetScene() is self.scene:
                self.scene.RemoveNode(node)
        self.created.clear()


@dataclass(frozen=True)
class SceneResult:
    """The nodes a registration produced, with the outcome read from the child's files."""

    outcome: Any
    transformNode: Any
    resampledNode: Any
    tableNode: Any
    tableRow: int


def checkOutputTransform(fixedNode: Any, movingNode: Any, outputTransformNode: Any) -> None:
    """Refuse an output transform that would make a loop or move the fixed volume."""
    if outputTransformNode is None:
        return
    if not outputTransformNode.IsA("vtkMRMLLinearTransformNode"):
        raise InputError(f"The output transform must be a linear transform node; received "
                         f"{outputTransformNode.GetClassName()}.")
    node = fixedNode
    while node is not None:  # the fixed volume's own chain of transforms
        parent = node.GetParentTransformNode()
        if parent is not None and parent.GetID() == outputTransformNode.GetID():
            raise InputError(f"The output transform {outputTransformNode.GetName()!r} moves the fixed volume "
                             f"{fixedNode.GetName()!r}; choose another transform or create a new one.")
        node = parent


def applyOutcome(scene: Any, fixedNode: Any, movingNode: Any, outcome: Any, *, outputTransformNode: Any = None,
                 createResampledVolume: bool = False, showResult: bool = True,
                 addTableRow: bool = True) -> SceneResult:
    """Put a registration outcome into the scene; on any failure the scene is left as it was.

    If the fixed volume lies under a transform, the output transform goes under that same transform so
    the pair also lines up in world coordinates. The outcome's transform already includes the moving
    volume's previous transform (it was the starting point), so that one is left as it is.
    """
    checkOutputTransform(fixedNode, movingNode, outputTransformNode)
    changes = SceneChanges(scene)
    try:
        fixedName, movingName = fixedNode.GetName(), movingNode.GetName()
        matrix = rasMatrixFromTransform(outcome.transform)  # validates before anything changes
        transformNode = outputTransformNode
        if transformNode is None:
            transformNode = changes.addNode("vtkMRMLLinearTransformNode", f"{movingName} to {fixedName}")
        changes.setMatrixFromParent(transformNode, matrix)
        if transformNode.GetTransformNodeID() != fixedNode.GetTransformNodeID():
            changes.setParentTransform(transformNode, fixedNode.GetTransformNodeID())
        for key, value in (("Verdict", outcome.verdict), ("Engine", outcome.engine), ("Preset", outcome.preset),
                           ("ScoreBefore", str(outcome.scoreBefore)), ("ScoreAfter", str(outcome.scoreAfter))):
            changes.setAttribute(transformNode, RESULT_ATTRIBUTE_PREFIX + key, str(value))
        changes.setParentTransform(movingNode, transformNode.GetID())

        resampledNode = None
        if createResampledVolume:
            resampledNode = changes.adopt(addVolumeNodeFromImage(
                scene, outcome.registeredImage(), f"{movingName} registered",
                parentTransformNodeID=fixedNode.GetTransformNodeID()))
        tableNode, tableRow = None, -1
        if addTableRow:
            tableNode = resultsTableNode(scene, create=False)
            if tableNode is None:
                tableNode = changes.adopt(resultsTableNode(scene))
            tableRow = changes.appendRow(tableNode, resultRow(outcome, fixedName=fixedName, movingName=movingName,
                                                              transformName=transformNode.GetName()))
        if showResult:
            changes.showInSliceViews(fixedNode, resampledNode if resampledNode is not None else movingNode)
    except BaseException:
        changes.undo()
        raise
    return SceneResult(outcome, transformNode, resampledNode, tableNode, tableRow)


def initialTransformMatrix(fixedNode: Any, movingNode: Any) -> Any:
    """The RAS "from parent" matrix of the moving volume's current transform, seen from the fixed volume.

    None when the moving volume is not under a transform (the registration then initializes itself).
    Raises :class:`InputError` when that transform is not linear.
    """
    parent = movingNode.GetParentTransformNode()
    if parent is None:
        return None
    matrix = vtk.vtkMatrix4x4()
    if not parent.GetMatrixTransformBetweenNodes(fixedNode.GetParentTransformNode(), parent, matrix):
        raise InputError(f"The moving volume {movingNode.GetName()!r} is under a non-linear transform "
                         f"({parent.GetName()!r}); harden it or remove it before registering.")
    return arrayFromVtkMatrix(matrix)
