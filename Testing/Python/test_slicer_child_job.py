"""The Slicer side's one path, for real: write the inputs, run the command line as a child, apply its outputs.

The child is the real ``python -m OneClickRegistrationLib.cli`` (``sys.executable`` stands for Slicer's
``PythonSlicer``), the scene is real MRML from ``slicer-core``. Checked: progress arrives in the calling
thread; cancel, timeout, a failing engine and bad input all leave the scene as it was, no process of the
child's tree and no temporary folder; only what the operation created is removed on failure; the moving
volume's own transform is the starting point; the metadata detection reads reaches the child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from OneClickRegistrationLib import synthetic  # noqa: E402
from OneClickRegistrationLib.errors import (  # noqa: E402
    CancelledError,
    EngineError,
    EngineTimeoutError,
    InputError,
)
from OneClickRegistrationSlicer import convert  # noqa: E402
from OneClickRegistrationSlicer.child_job import ChildJob, descendants, killProcessTree  # noqa: E402
from OneClickRegistrationSlicer.command import TEMP_PREFIX, ChildCommand, registrationCommand  # noqa: E402
from OneClickRegistrationSlicer.registration import judgeNodes, registerNodes  # noqa: E402
from OneClickRegistrationSlicer.scene import _nodesByClass  # noqa: E402

pytestmark = [pytest.mark.slicer,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")]


@pytest.fixture(scope="module")
def pair() -> synthetic.SyntheticPair:
    return synthetic.make_pair("T1", "T2", rotation_deg=(0.0, 0.0, 8.0), translation_mm=(6.0, -4.0, 3.0),
                               coarsen=3.0, source="analytic")


@pytest.fixture
def scene_with_pair(pair):
    scene = slicer.vtkMRMLScene()
    fixed = convert.addVolumeNodeFromImage(scene, pair.fixed, "T1 fixed")
    moving = convert.addVolumeNodeFromImage(scene, pair.moving, "T2 moving")
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    composite.SetBackgroundVolumeID(moving.GetID())
    return scene, fixed, moving


def state(scene, moving):
    nodes = frozenset(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    layers = tuple((c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), c.GetForegroundOpacity())
                   for c in _nodesByClass(scene, "vtkMRMLSliceCompositeNode"))
    image = convert.imageFromVolumeNode(moving)
    return nodes, moving.GetTransformNodeID(), layers, sitk.GetArrayViewFromImage(image).tobytes()


def job_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*")}


def tre(pair, fixed, moving) -> np.ndarray:
    in_scene = convert.transformBetweenVolumes(fixed, moving.GetParentTransformNode())
    return synthetic.target_registration_error(in_scene, pair.truth, pair.brain_points)


@pytest.mark.engine
def test_register_nodes_runs_the_command_line_and_aligns_the_pair_in_millimetres(scene_with_pair, pair):
    _, fixed, moving = scene_with_pair
    folders = job_folders()
    seen = []
    applied = registerNodes(fixed, moving, engine="simpleitk", createResampledVolume=True,
                            progress=lambda f, s: seen.append((f, s, threading.current_thread())))
    error = tre(pair, fixed, moving)
    print(f"TRE through the child and the scene: mean {error.mean():.2f} mm, max {error.max():.2f} mm")
    assert error.mean() < 1.5 and error.max() < 3.0  # the engine's own baseline: mean 1.1, max 1.8 mm
    assert applied.outcome.verdict == "good" and applied.outcome.engine == "simpleitk"
    assert moving.GetParentTransformNode() is applied.transformNode
    assert applied.tableNode.GetNumberOfRows() == 1
    assert applied.resampledNode.GetImageData().GetDimensions() == pair.fixed.GetSize()
    # Progress came as the child ran, in this thread, never backwards, up to the end.
    assert len(seen) > 5 and {t for _, _, t in seen} == {threading.current_thread()}
    fractions = [f for f, _, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert job_folders() == folders


@pytest.mark.engine
def test_the_moving_volume_transform_is_the_starting_point(scene_with_pair, pair):
    scene, fixed, moving = scene_with_pair
    # A manual pre-alignment: the ground truth, off by 2 degrees and 3 mm.
    start = sitk.Euler3DTransform(pair.truth)
    start.SetTranslation(tuple(np.add(start.GetTranslation(), (3.0, 0.0, 0.0))))
    start.SetRotation(start.GetAngleX(), start.GetAngleY(), start.GetAngleZ() + np.radians(2.0))
    manual = convert.addTransformNodeFromTransform(scene, start, "manual")
    moving.SetAndObserveTransformNodeID(manual.GetID())
    command = registrationCommand(fixed, moving, engine="simpleitk")
    try:
        initial = sitk.ReadTransform(str(command.folder / "initial.tfm"))
        assert "--initial-transform" in command.argv
        points = pair.brain_points[:10]
        np.testing.assert_allclose([initial.TransformPoint(p) for p in points],
                                   [start.TransformPoint(p) for p in points], atol=1e-6)
    finally:
        command.cleanup()
    manual_before = convert.arrayFromVtkMatrix(manual.GetMatrixTransformToParent())
    applied = registerNodes(fixed, moving, engine="simpleitk", recover=False)
    assert tre(pair, fixed, moving).max() < 3.0
    assert [a["start"] for a in applied.outcome.report["attempts"]] == ["the given initial transform"]
    # The pre-alignment node itself is kept as it was; the result is a new transform.
    np.testing.assert_array_equal(convert.arrayFromVtkMatrix(manual.GetMatrixTransformToParent()), manual_before)
    assert applied.transformNode is not manual and manual.GetScene() is scene


@pytest.mark.engine
def test_a_chosen_output_transform_is_reused_and_judge_agrees(scene_with_pair, pair):
    scene, fixed, moving = scene_with_pair
    chosen = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "my output")
    transforms_before = len(_nodesByClass(scene, "vtkMRMLLinearTransformNode"))
    applied = registerNodes(fixed, moving, engine="simpleitk", outputTransformNode=chosen)
    assert applied.transformNode is chosen and moving.GetParentTransformNode() is chosen
    assert len(_nodesByClass(scene, "vtkMRMLLinearTransformNode")) == transforms_before
    before = state(scene, moving)
    judged = judgeNodes(fixed, moving, chosen)
    identity = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "identity")
    assert judged.verdict == "good" and judged.scoreAfter > judged.scoreBefore
    assert judgeNodes(fixed, moving, identity).verdict != "good"
    scene.RemoveNode(identity)
    assert state(scene, moving) == before


def test_an_output_transform_that_moves_the_fixed_volume_is_refused(scene_with_pair):
    scene, fixed, moving = scene_with_pair
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "fixed's own")
    fixed.SetAndObserveTransformNodeID(parent.GetID())
    before = state(scene, moving)
    with pytest.raises(InputError, match="moves the fixed volume"):
        registerNodes(fixed, moving, outputTransformNode=parent, engine="simpleitk")
    assert state(scene, moving) == before


@pytest.mark.engine
def test_cancel_stops_the_child_and_its_engine_and_leaves_the_scene_as_it_was(scene_with_pair):
    scene, fixed, moving = scene_with_pair
    before, folders = state(scene, moving), job_folders()
    engines_seen: list[int] = []
    started = time.monotonic()

    def cancel() -> bool:
        # Once elastix runs below the child, cancel: the whole tree must stop.
        me = os.getpid()
        engines_seen.extend(pid for pid in descendants(me) if _name(pid) == "elastix")
        return bool(engines_seen)

    with pytest.raises(CancelledError):
        registerNodes(fixed, moving, engine="elastix", recover=False, cancel=cancel)
    assert engines_seen, "elastix never started below the child"
    assert time.monotonic() - started < 60
    assert state(scene, moving) == before
    assert job_folders() == folders
    assert not [pid for pid in engines_seen if _alive(pid)]


def test_timeout_stops_the_child_and_leaves_the_scene_as_it_was(scene_with_pair):
    scene, fixed, moving = scene_with_pair
    before, folders = state(scene, moving), job_folders()
    # Earlier tests in the same session may leave helpers of their own (multiprocessing's resource
    # tracker after a local Dask cluster): only processes started by this run must be gone.
    earlier = set(descendants(os.getpid()))
    with pytest.raises(EngineTimeoutError, match="did not finish in time"):
        registerNodes(fixed, moving, engine="elastix", jobTimeoutS=0.5)
    assert state(scene, moving) == before
    assert job_folders() == folders

    def started_here() -> list[int]:
        return [pid for pid in descendants(os.getpid()) if pid not in earlier and _alive(pid)]

    # The killed tree may take a moment to be reaped: wait for it (generous deadline), then insist.
    deadline = time.monotonic() + 10.0
    while started_here() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started_here() == []  # (the listing's own ps has ended)


def broken_elastix(folder: Path) -> Path:
    """An installed but broken elastix: it answers --version, then every registration exits with an error.

    The failure goes through the real child, adapter and process runner; only the program is a stand-in.
    """
    program = folder / "elastix"
    program.write_text('#!/bin/sh\n'
                       'if [ "$1" = "--version" ]; then echo "elastix version: 5.0.1"; exit 0; fi\n'
                       'echo "itk::ExceptionObject: broken install" >&2\nexit 3\n', encoding="utf-8")
    program.chmod(0o755)
    return program


def test_a_failing_engine_is_reported_with_its_message_and_the_scene_is_unchanged(scene_with_pair, tmp_path):
    scene, fixed, moving = scene_with_pair
    program = broken_elastix(tmp_path)
    before, folders = state(scene, moving), job_folders()
    with pytest.raises(EngineError, match="elastix") as caught:
        registerNodes(fixed, moving, engine="elastix", recover=False, environment={"ONECLICK_ELASTIX": str(program)})
    assert "broken install" in str(caught.value)
    assert state(scene, moving) == before
    assert job_folders() == folders


def test_bad_input_is_refused_before_a_child_starts(scene_with_pair):
    scene, fixed, moving = scene_with_pair
    blank = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "blank")
    before, folders = state(scene, moving), job_folders()
    with pytest.raises(InputError, match="'blank' has no image data"):
        registerNodes(fixed, blank)
    with pytest.raises(InputError, match="must be different nodes"):
        registerNodes(fixed, fixed)
    assert state(scene, moving) == before
    assert job_folders() == folders


def test_bad_input_found_by_the_core_comes_back_as_the_same_error(scene_with_pair):
    scene, fixed, moving = scene_with_pair
    flat = sitk.Image(12, 12, 12, sitk.sitkInt16)
    constant = convert.addVolumeNodeFromImage(scene, flat, "constant")
    before = state(scene, moving)
    with pytest.raises(InputError, match="constant"):
        registerNodes(fixed, constant, engine="simpleitk")
    assert state(scene, moving) == before


@pytest.mark.engine
def test_a_failure_removes_only_what_the_operation_created(scene_with_pair, tmp_path):
    scene, fixed, moving = scene_with_pair
    registerNodes(fixed, moving, engine="simpleitk", recover=False)  # a table and a transform exist now
    table = _nodesByClass(scene, "vtkMRMLTableNode")[0]
    others: list = []

    def someone_else_adds_a_node(fraction: float, stage: str) -> None:
        if not others:  # e.g. the user loads a volume while the registration runs
            others.append(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loaded meanwhile"))

    before = state(scene, moving)
    broken = broken_elastix(tmp_path)
    with pytest.raises(EngineError):
        registerNodes(fixed, moving, engine="elastix", recover=False, progress=someone_else_adds_a_node,
                      environment={"ONECLICK_ELASTIX": str(broken)})
    assert others and others[0].GetScene() is scene  # not ours: kept
    assert state(scene, moving)[1:] == before[1:]
    assert state(scene, moving)[0] == before[0] | {others[0].GetID()}
    assert table.GetNumberOfRows() == 1


def test_the_metadata_detection_reads_reaches_the_child(scene_with_pair, pair):
    _, fixed, moving = scene_with_pair
    moving.SetAttribute("DICOM.instanceUIDs", "1.2.3")

    class DicomDatabaseStandIn:
        """slicer.dicomDatabase is not in the wheel; the same lookup with fixed answers."""

        def instanceValue(self, uid, tag):
            return {"0008,0060": "MR", "0008,103e": "AX FLAIR"}.get(tag, "")

    command = registrationCommand(fixed, moving, dicomDatabase=DicomDatabaseStandIn())
    try:
        moving_file = Path(command.argv[command.argv.index(str(command.outdir)) - 2])
        completed = subprocess.run(
            [sys.executable, "-c", "import sys; from OneClickRegistrationLib.modality import detect_modality,"
             " metadata_from_file; import SimpleITK as sitk; p = sys.argv[1];"
             " e = detect_modality(sitk.ReadImage(p), name=p, metadata=metadata_from_file(p));"
             " print(e.modality.value, e.source)", str(moving_file)],
            env=dict(command.env), capture_output=True, text=True, timeout=120, check=True)
    finally:
        command.cleanup()
    assert completed.stdout.split() == ["FLAIR", "metadata"]
    assert moving_file.name == "T2 moving.nrrd"


def test_progress_lines_split_anywhere_are_read_whole(tmp_path):
    seen = []
    job = ChildJob(ChildCommand("register", ("x",), {}, tmp_path, tmp_path), progress=lambda f, s: seen.append((f, s)))
    stream = (b'noise from a library\n{"event": "progress", "fraction": 0.25, "stage": "Preparing"}\n'
              b'{"event": "progress", "fraction": 0.5, "stage": "Registering \xc3\xa9"}\n{"event": "done"}\n')
    for i in range(0, len(stream), 7):
        job.feedStdout(stream[i:i + 7])
    assert seen == [(0.25, "Preparing"), (0.5, "Registering é")]
    assert job.done == {"event": "done"}
    job.feedStderr(b"oneclick-register: error: something")
    with pytest.raises(EngineError, match="code 1"):
        job.outcome(1)


def test_kill_process_tree_ends_a_tree_that_ignores_the_polite_signal():
    # A real tree: a child that ignores SIGINT and started a grandchild in its own session.
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN);"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True);"
            "print(p.pid, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    grandchild = int(child.stdout.readline())
    os.kill(child.pid, signal.SIGINT)
    time.sleep(0.2)
    assert child.poll() is None and _alive(grandchild)
    killProcessTree(child.pid)
    child.wait(10)
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
