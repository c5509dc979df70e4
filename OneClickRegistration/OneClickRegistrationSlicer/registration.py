"""Console and batch use: register or judge two volume nodes synchronously through the child process.

``registerNodes`` is the whole Slicer side in three steps: write the inputs, run the child, apply the
outputs. The panel takes the same steps with ``qt.QProcess`` in place of :func:`runChild`. The node and
file helpers a script needs besides are importable from here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from .child_job import runChild
from .command import judgementCommand, registrationCommand
from .convert import (
    addVolumeNodeFromImage,
    imageFromVolumeNode,
    loadVolumeFile,
    saveNodeToFile,
    transformBetweenVolumes,
)
from .outcome import RegistrationOutcome
from .scene import SceneResult, applyOutcome

__all__ = ["addVolumeNodeFromImage", "imageFromVolumeNode", "judgeNodes", "loadVolumeFile", "registerNodes",
           "saveNodeToFile"]


def registerNodes(fixedNode: Any, movingNode: Any, *, outputTransformNode: Any = None,
                  createResampledVolume: bool = False, showResult: bool = True, addTableRow: bool = True,
                  engine: str | None = None, transform: str = "rigid", fixed_modality: str | None = None,
                  moving_modality: str | None = None, recover: bool = True, timeout_s: float | None = None,
                  progress: Callable[[float, str], None] | None = None,
                  cancel: Callable[[], bool] | None = None, jobTimeoutS: float | None = None,
                  idle: Callable[[], Any] | None = None, environment: Mapping[str, str] | None = None,
                  python: str | None = None, dicomDatabase: Any = None) -> SceneResult:
    """Register ``movingNode`` onto ``fixedNode`` and put the result in their scene; blocks until done.

    ``timeout_s`` limits each engine run, ``jobTimeoutS`` the whole child process. ``progress`` and
    ``cancel`` are called from the calling thread. Raises the core's errors; on failure the scene is as
    it was and no process or temporary file is left.
    """
    scene = fixedNode.GetScene() if fixedNode is not None else None
    if scene is None:
        from OneClickRegistrationLib.errors import InputError

        raise InputError("The fixed volume must be a node in a scene; received a node without a scene.")
    command = registrationCommand(fixedNode, movingNode, engine=engine, transform=transform,
                                  fixedModality=fixed_modality, movingModality=moving_modality, recover=recover,
                                  engineTimeoutS=timeout_s, python=python, environment=environment,
                                  dicomDatabase=dicomDatabase)
    try:
        outcome = runChild(command, progress=progress, cancel=cancel, timeoutS=jobTimeoutS, idle=idle)
        return applyOutcome(scene, fixedNode, movingNode, outcome, outputTransformNode=outputTransformNode,
                            createResampledVolume=createResampledVolume, showResult=showResult,
                            addTableRow=addTableRow)
    finally:
        command.cleanup()


def judgeNodes(fixedNode: Any, movingNode: Any, transformNode: Any, *, fixed_modality: str | None = None,
               moving_modality: str | None = None, cancel: Callable[[], bool] | None = None,
               idle: Callable[[], Any] | None = None, environment: Mapping[str, str] | None = None,
               python: str | None = None, dicomDatabase: Any = None) -> RegistrationOutcome:
    """Score and verdict of the moving volume placed under ``transformNode``; changes nothing in the scene."""
    command = judgementCommand(fixedNode, movingNode, transformBetweenVolumes(fixedNode, transformNode),
                               fixedModality=fixed_modality, movingModality=moving_modality, python=python,
                               environment=environment, dicomDatabase=dicomDatabase)
    try:
        return runChild(command, cancel=cancel, idle=idle)
    finally:
        command.cleanup()
