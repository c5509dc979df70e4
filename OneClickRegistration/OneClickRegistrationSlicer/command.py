"""The child's command line: the two volumes written to a temporary folder, and the arguments.

The child is the project's own command line, run with Slicer's Python (``sys.executable`` inside
Slicer is ``PythonSlicer``)::

    PythonSlicer -m OneClickRegistrationLib.cli FIXED.nrrd MOVING.nrrd -o OUT --progress-lines ...

The volumes are written with the metadata modality detection reads (node attributes and, for DICOM
volumes, the tags from Slicer's DICOM database) in their NRRD headers, so the run sees exactly what the
panel's "detected" label saw. The moving volume's current transform becomes ``--initial-transform``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from OneClickRegistrationLib.errors import InputError

from .convert import imageFromVolumeNode, nodeMetadata, transformFromRasMatrix
from .scene import initialTransformMatrix

TEMP_PREFIX = "oneclickreg-slicer-"
CHILD_MODULE = "OneClickRegistrationLib.cli"
_UNSAFE = re.compile(r"[^A-Za-z0-9 _+-]+")


@dataclass(frozen=True)
class ChildCommand:
    """One child run: its arguments and environment, and the temporary folder it reads and writes."""

    kind: str  # "register" or "judge"
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    folder: Path
    outdir: Path

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def libraryFolder() -> str:
    """The folder holding ``OneClickRegistrationLib`` (and this package), for the child's PYTHONPATH."""
    return str(Path(__file__).resolve().parent.parent)


def childEnvironment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, the library folder first on PYTHONPATH, plus ``extra`` (engine paths)."""
    env = dict(os.environ)
    env.update(extra or {})
    paths = [libraryFolder(), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def fileStem(name: str, default: str) -> str:
    """A file name that keeps the node's name readable (detection reads the words of the name)."""
    stem = _UNSAFE.sub("_", name or "").strip(" _")
    return stem[:100] or default


def headerMetadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Node metadata as NRRD header fields: DICOM tags as ``gggg|eeee`` (as SimpleITK names them)."""
    header = {}
    for key, value in metadata.items():
        text = " ".join(str(value).split())
        if not text or key == "DICOM.instanceUIDs" or ":=" in key or not key.isprintable():
            continue  # UIDs are long and say nothing about the modality; the others cannot be NRRD keys
        tag = re.fullmatch(r"\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?", key)
        header[f"{tag.group(1)}|{tag.group(2)}".lower() if tag else key] = text
    return header


def writeVolume(node: Any, path: Path, *, role: str, dicomDatabase: Any = None) -> None:
    image = imageFromVolumeNode(node, role=role)
    for key, value in headerMetadata(nodeMetadata(node, dicomDatabase=dicomDatabase)).items():
        image.SetMetaData(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), False)  # no compression: this runs on Slicer's main thread


def _checkPair(fixedNode: Any, movingNode: Any) -> None:
    if fixedNode is None or movingNode is None:
        raise InputError("Expected a fixed and a moving volume; received "
                         f"{'no fixed volume' if fixedNode is None else 'no moving volume'}.")
    if fixedNode.GetID() == movingNode.GetID():
        raise InputError(f"The fixed and moving volumes must be different nodes; both are {fixedNode.GetName()!r}.")


def _writePair(folder: Path, fixedNode: Any, movingNode: Any, dicomDatabase: Any) -> tuple[Path, Path]:
    fixedFile = folder / "fixed" / (fileStem(fixedNode.GetName(), "fixed") + ".nrrd")
    movingFile = folder / "moving" / (fileStem(movingNode.GetName(), "moving") + ".nrrd")
    writeVolume(fixedNode, fixedFile, role="fixed", dicomDatabase=dicomDatabase)
    writeVolume(movingNode, movingFile, role="moving", dicomDatabase=dicomDatabase)
    return fixedFile, movingFile


def _modalityOptions(fixedModality: str | None, movingModality: str | None) -> list[str]:
    options = []
    for option, value in (("--fixed-modality", fixedModality), ("--moving-modality", movingModality)):
        if value and value != "auto":
            options += [option, value]
    return options


def _inFolder(build: Any) -> Any:
    folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    try:
        return build(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def registrationCommand(fixedNode: Any, movingNode: Any, *, engine: str | None = None, transform: str = "rigid",
                        fixedModality: str | None = None, movingModality: str | None = None,
                        recover: bool = True, engineTimeoutS: float | None = None,
                        useInitialTransform: bool = True, python: str | None = None,
                        environment: Mapping[str, str] | None = None, dicomDatabase: Any = None,
                        extraArguments: Sequence[str] = ()) -> ChildCommand:
    """Write the inputs of a registration and build its command line (main thread; MRML is read here)."""
    _checkPair(fixedNode, movingNode)
    initial = initialTransformMatrix(fixedNode, movingNode) if useInitialTransform else None

    def build(folder: Path) -> ChildCommand:
        fixedFile, movingFile = _writePair(folder, fixedNode, movingNode, dicomDatabase)
        outdir = folder / "out"
        argv = [python or sys.executable, "-m", CHILD_MODULE, str(fixedFile), str(movingFile), "-o", str(outdir),
                "--progress-lines", "--transform", transform, *_modalityOptions(fixedModality, movingModality)]
        if engine and engine != "auto":
            argv += ["--engine", engine]
        if not recover:
            argv.append("--no-recover")
        if engineTimeoutS is not None:
            argv += ["--timeout", f"{float(engineTimeoutS):g}"]
        if initial is not None:
            initialFile = folder / "initial.tfm"
            sitk.WriteTransform(transformFromRasMatrix(initial), str(initialFile))
            argv += ["--initial-transform", str(initialFile)]
        argv += list(extraArguments)
        return ChildCommand("register", tuple(argv), childEnvironment(environment), folder, outdir)

    return _inFolder(build)


def judgementCommand(fixedNode: Any, movingNode: Any, transform: sitk.Transform, *,
                     fixedModality: str | None = None, movingModality: str | None = None,
                     python: str | None = None, environment: Mapping[str, str] | None = None,
                     dicomDatabase: Any = None) -> ChildCommand:
    """Write the inputs of ``oneclick-register score ... --verdict`` and build its command line."""
    _checkPair(fixedNode, movingNode)

    def build(folder: Path) -> ChildCommand:
        fixedFile, movingFile = _writePair(folder, fixedNode, movingNode, dicomDatabase)
        transformFile = folder / "judged.tfm"
        sitk.WriteTransform(transform, str(transformFile))
        argv = [python or sys.executable, "-m", CHILD_MODULE, "score", str(fixedFile), str(movingFile),
                "--transform", str(transformFile), "--verdict", *_modalityOptions(fixedModality, movingModality)]
        return ChildCommand("judge", tuple(argv), childEnvironment(environment), folder, folder)

    return _inFolder(build)
