"""The BRAINSFit host-runner plumbing of the scene glue, against real MRML (``slicer-core``).

Inside Slicer the host runner calls ``slicer.cli.runSync(slicer.modules.brainsfit, None, params)``.
Neither ``slicer.cli`` nor the BRAINSFit CLI module exist in the ``slicer-core`` wheel, so the CLI call
itself is replaced by a stand-in that does what BRAINSFit does to the scene: it reads the temporary
input nodes it is given and writes a known transform into the output transform node, then reports
its status on a real ``vtkMRMLCommandLineModuleNode``. Everything around that call is real: the
BRAINSFit adapter writes its files, the glue loads them into nodes with Slicer's storage nodes, saves
the output with Slicer's transform writer, and the adapter reads it back.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

import OneClickRegistrationSceneGlue as glue  # noqa: E402
from OneClickRegistrationLib.engines import brainsfit_engine  # noqa: E402
from OneClickRegistrationLib.engines.base import EngineRequest, EngineSettings, RunOptions  # noqa: E402
from OneClickRegistrationLib.errors import CancelledError, EngineError  # noqa: E402
from OneClickRegistrationLib.presets import preset_for  # noqa: E402

pytestmark = pytest.mark.slicer


def blob_image(center_mm=(0.0, 0.0, 0.0), size=(20, 22, 18), spacing=(2.0, 2.0, 2.5)) -> sitk.Image:
    image = sitk.GaussianSource(sitk.sitkFloat32, size, sigma=(6.0, 8.0, 5.0), mean=(18.0, 24.0, 20.0),
                                scale=100.0, origin=(-20.0, -22.0, -22.5), spacing=spacing)
    return image


def truth_transform() -> sitk.Transform:
    t = sitk.VersorRigid3DTransform()
    t.SetRotation((0.0, 0.0, 1.0), math.radians(7.0))
    t.SetTranslation((4.0, -3.0, 2.5))
    return t


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


class StandInBrainsFit:
    """Does to the scene what Slicer's BRAINSFit CLI module does (see the module docstring)."""

    def __init__(self, scene, *, status: str = "Completed", error_text: str = "",
                 transform: sitk.Transform | None = None) -> None:
        self.scene = scene
        self.transform = transform if transform is not None else truth_transform()
        self.status = status
        self.error_text = error_text
        self.received: dict | None = None
        self.fixed_image: sitk.Image | None = None

    def __call__(self, parameters: dict):
        self.received = dict(parameters)
        fixed_node = self.scene.GetNodeByID(parameters["fixedVolume"])
        self.fixed_image = glue.imageFromVolumeNode(fixed_node, role="fixed")
        if self.status == "Completed":
            output = self.scene.GetNodeByID(parameters["linearTransform"])
            glue.updateTransformNodeFromTransform(output, self.transform)
        # Slicer's CLI logic registers this node class; a bare scene has to be told about it.
        if not self.scene.IsNodeClassRegistered("vtkMRMLCommandLineModuleNode"):
            self.scene.RegisterNodeClass(slicer.vtkMRMLCommandLineModuleNode())
        cli_node = self.scene.AddNewNodeByClass("vtkMRMLCommandLineModuleNode", "BRAINSFit")
        cli_node.SetStatus(getattr(cli_node, self.status))
        cli_node.SetErrorText(self.error_text)
        return cli_node


def run_engine(scene, stand_in, tmp_path: Path, *, cancel=None):
    fixed = blob_image()
    moving = blob_image()
    settings = EngineSettings(host_runner=lambda params: glue.runCliWithTemporaryNodes(
        scene, brainsfit_engine.plan_host_call(params), stand_in))
    engine = brainsfit_engine.create_engine(settings)
    request = EngineRequest(fixed=fixed, moving=moving, preset=preset_for("T1", "T2"),
                            initial_transform=sitk.Euler3DTransform())
    return fixed, engine.run(request, RunOptions(cancel=cancel))


def test_host_runner_round_trip_returns_the_transform_the_cli_wrote(tmp_path):
    scene = slicer.vtkMRMLScene()
    before = node_ids(scene)
    stand_in = StandInBrainsFit(scene)
    fixed, output = run_engine(scene, stand_in, tmp_path)

    # The CLI saw node IDs for files and plain values for everything else.
    received = stand_in.received
    assert received is not None
    for key in ("fixedVolume", "movingVolume", "linearTransform"):
        assert received[key].startswith("vtkMRML"), key
    assert received["useRigid"] is True and received["useAffine"] is False
    assert received["costMetric"] == "MMI"
    assert isinstance(received["numberOfIterations"], str)  # vectors comma-joined for slicer.cli
    # The temporary fixed node holds the fixed image with its geometry (file -> node, exactly).
    loaded = stand_in.fixed_image
    assert loaded.GetSize() == fixed.GetSize()
    np.testing.assert_allclose(loaded.GetOrigin(), fixed.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(fixed), atol=1e-4)

    # Saved by Slicer's transform writer and read back by the adapter: the same fixed->moving map.
    truth = truth_transform()
    for point in [(0.0, 0.0, 0.0), (30.0, -20.0, 10.0), (-25.0, 40.0, -15.0)]:
        np.testing.assert_allclose(output.transform.TransformPoint(point), truth.TransformPoint(point),
                                   atol=1e-5)
    # Every temporary node and the CLI node are gone.
    assert node_ids(scene) == before


def test_cli_errors_become_engine_errors_with_the_log_and_a_clean_scene(tmp_path):
    scene = slicer.vtkMRMLScene()
    before = node_ids(scene)
    stand_in = StandInBrainsFit(scene, status="CompletedWithErrors",
                                error_text="line one\nException: fixed image is empty\n")
    with pytest.raises(EngineError, match="BRAINSFit") as caught:
        run_engine(scene, stand_in, tmp_path)
    assert "Exception: fixed image is empty" in caught.value.log_tail
    assert node_ids(scene) == before


def test_cancelled_cli_becomes_cancelled_error(tmp_path):
    scene = slicer.vtkMRMLScene()
    before = node_ids(scene)
    with pytest.raises(CancelledError):
        run_engine(scene, StandInBrainsFit(scene, status="Cancelled"), tmp_path)
    assert node_ids(scene) == before


def test_unreadable_input_file_is_an_engine_error_and_leaves_no_node(tmp_path):
    scene = slicer.vtkMRMLScene()
    before = node_ids(scene)
    plan = brainsfit_engine.HostParameterPlan(
        input_volumes={"fixedVolume": str(tmp_path / "missing.nrrd")}, input_labelmaps={},
        input_transforms={}, output_transforms={"linearTransform": str(tmp_path / "out.txt")},
        output_volumes={}, values={"useRigid": True},
    )
    called = []
    with pytest.raises(EngineError, match="Cannot load"):
        glue.runCliWithTemporaryNodes(scene, plan, called.append)
    assert called == []
    assert node_ids(scene) == before
    assert not (tmp_path / "out.txt").exists()


def test_label_maps_and_initial_transforms_are_loaded_as_their_node_types(tmp_path):
    scene = slicer.vtkMRMLScene()
    mask = sitk.Cast(blob_image() > 50, sitk.sitkUInt8)
    sitk.WriteImage(mask, str(tmp_path / "mask.nrrd"))
    sitk.WriteTransform(truth_transform(), str(tmp_path / "init.txt"))
    plan = brainsfit_engine.HostParameterPlan(
        input_volumes={}, input_labelmaps={"fixedBinaryVolume": str(tmp_path / "mask.nrrd")},
        input_transforms={"initialTransform": str(tmp_path / "init.txt")},
        output_transforms={}, output_volumes={}, values={},
    )
    nodes = glue.prepareCliNodes(scene, plan)
    try:
        label = scene.GetNodeByID(nodes.parameters["fixedBinaryVolume"])
        assert label.IsA("vtkMRMLLabelMapVolumeNode")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(glue.imageFromVolumeNode(label)),
                                      sitk.GetArrayFromImage(mask))
        initial = scene.GetNodeByID(nodes.parameters["initialTransform"])
        read_back = glue.transformBetweenVolumes(None, initial)
        np.testing.assert_allclose(read_back.TransformPoint((10.0, 5.0, -3.0)),
                                   truth_transform().TransformPoint((10.0, 5.0, -3.0)), atol=1e-9)
    finally:
        nodes.cleanup()
    assert scene.GetNumberOfNodes() == 0


def test_worker_thread_runner_does_all_mrml_work_on_the_main_thread(tmp_path):
    # The GUI path: the pipeline (and so the host runner) runs in a worker thread, every MRML step is
    # handed to the main thread, which here plays the part of the panel's timer.
    import threading

    scene = slicer.vtkMRMLScene()
    before = node_ids(scene)
    calls = glue.MainThreadCalls()
    stand_in = StandInBrainsFit(scene)
    threads_seen: set[str] = set()

    def start_cli(parameters):
        threads_seen.add(threading.current_thread().name)
        return stand_in(parameters)

    settings = EngineSettings(host_runner=lambda params: glue.runCliThroughMainThread(
        scene, brainsfit_engine.plan_host_call(params), start_cli, calls, pollSeconds=0.01))
    engine = brainsfit_engine.create_engine(settings)
    request = EngineRequest(fixed=blob_image(), moving=blob_image(), preset=preset_for("T1", "T2"),
                            initial_transform=sitk.Euler3DTransform())
    job = glue.BackgroundJob(lambda progress, cancel: engine.run(request, RunOptions(progress=progress)))
    job.start()
    while not job.finished:
        calls.runPending()
        job.poll()
        job.join(0.005)
    assert job.error is None, job.error
    assert threads_seen == {threading.main_thread().name}
    point = (12.0, -8.0, 5.0)
    np.testing.assert_allclose(job.result.transform.TransformPoint(point),
                               truth_transform().TransformPoint(point), atol=1e-5)
    assert node_ids(scene) == before


def test_main_thread_calls_hand_back_values_and_errors():
    import threading

    calls = glue.MainThreadCalls()
    assert calls.call(lambda: threading.current_thread().name) == threading.main_thread().name
    outcome = {}

    def worker():
        outcome["value"] = calls.call(lambda a, b: (threading.current_thread().name, a + b), 2, 3)
        try:
            calls.call(lambda: 1 / 0)
        except ZeroDivisionError as error:
            outcome["error"] = error

    thread = threading.Thread(target=worker)
    thread.start()
    while thread.is_alive():
        calls.runPending()
        thread.join(0.005)
    assert outcome["value"] == (threading.main_thread().name, 5)
    assert isinstance(outcome["error"], ZeroDivisionError)


def test_serving_the_main_thread_lets_worker_pools_reach_it():
    # Console/batch mode: the core runs in a worker and its recovery uses a thread pool; MRML calls
    # from any of those threads must be run by the main thread, which is waiting in this call.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    calls = glue.MainThreadCalls()

    def core():
        with ThreadPoolExecutor(max_workers=2) as pool:
            names = list(pool.map(lambda _: calls.call(lambda: threading.current_thread().name), range(4)))
        return names

    assert glue.runServingMainThread(core, calls, pollSeconds=0.001) == [threading.main_thread().name] * 4
    with pytest.raises(EngineError, match="boom"):
        glue.runServingMainThread(lambda: calls.call(lambda: (_ for _ in ()).throw(EngineError("boom"))),
                                  calls)


@pytest.mark.engine
def test_console_registration_with_brainsfit_goes_through_the_host_runner():
    # The whole console path with the BRAINSFit engine: pipeline in a worker, host runner, temporary
    # nodes and file exchange on the main thread, result applied to the scene. The stand-in CLI writes
    # the ground-truth transform, so the scene must end up holding it (up to file round-off).
    import threading

    from OneClickRegistrationLib import pipeline, synthetic
    from OneClickRegistrationLib.engines import configure_engine, engine_settings

    pair = synthetic.make_pair("T1", "T2", rotation_deg=(2.0, -3.0, 6.0), translation_mm=(5.0, -4.0, 2.0),
                               coarsen=3.0, source="analytic", seed=6)
    scene = slicer.vtkMRMLScene()
    fixed = glue.addVolumeNodeFromImage(scene, pair.fixed, "T1")
    moving = glue.addVolumeNodeFromImage(scene, pair.moving, "T2")
    calls = glue.MainThreadCalls()
    stand_in = StandInBrainsFit(scene, transform=pair.truth)
    threads_seen: set[str] = set()

    def start_cli(parameters):
        threads_seen.add(threading.current_thread().name)
        return stand_in(parameters)

    saved = engine_settings("brainsfit")
    configure_engine("brainsfit", EngineSettings(host_runner=lambda params: glue.runCliThroughMainThread(
        scene, brainsfit_engine.plan_host_call(params), start_cli, calls, pollSeconds=0.005)))
    try:
        applied = glue.registerNodes(
            fixed, moving, engine="brainsfit", recover=False,
            register=lambda f, m, **o: glue.runServingMainThread(lambda: pipeline.register(f, m, **o), calls))
    finally:
        configure_engine("brainsfit", saved)
    assert applied.result.engine == "brainsfit"
    assert threads_seen == {threading.main_thread().name}
    in_scene = glue.transformBetweenVolumes(fixed, moving.GetParentTransformNode())
    error = synthetic.target_registration_error(in_scene, pair.truth, pair.brain_points)
    assert error.max() < 1e-3
    names = sorted(scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes()))
    assert not any(name.startswith("OneClickRegistration temporary") for name in names), names
