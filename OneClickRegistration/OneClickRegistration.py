"""One-Click Registration: the Slicer module (panel, parameter node, logic facade, self-test).

Thin by design: the registration is ``OneClickRegistrationLib`` (numpy + SimpleITK), the MRML work is
``OneClickRegistrationSceneGlue``. Only what needs Qt, ``slicer.app`` or ``slicer.cli`` lives here.
"""

import logging
import os
import threading
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTransformNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import OneClickRegistrationSceneGlue as glue

MODALITY_CHOICES = ("auto", "T1", "T2", "FLAIR", "CT", "MR")
ENGINE_CHOICES = ("auto", "simpleitk", "elastix", "ants", "brainsfit")
PRESETS_URL = "https://github.com/OneClickRegistration/OneClickRegistration#presets"


def resourcePath(relativePath):
    """Resources/ sits beside this file when installed by CMake, one level up in the source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    for base in (here, os.path.dirname(here)):
        candidate = os.path.join(base, "Resources", relativePath)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"OneClickRegistration resource {relativePath!r} not found near {here!r}.")


class OneClickRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("One-Click Registration")
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["OneClickRegistration team"]
        self.parent.helpText = _(
            "Registers a moving brain volume (T1, T2, FLAIR or CT) to a fixed one with one click: the "
            "modality pair is detected, a preset is chosen for it, and the result is scored where both "
            "volumes have data and given a verdict (good, questionable, failed). The moving volume is "
            "placed under a linear transform (not hardened). "
        ) + f'<a href="{PRESETS_URL}">' + _("Presets and measured accuracy") + "</a>."
        self.parent.acknowledgementText = _(
            "Built on SimpleITK; uses elastix (SlicerElastix), ANTs (SlicerANTs) and BRAINSFit if installed."
        )
        self.parent.icon = qt.QIcon(resourcePath("Icons/OneClickRegistration.png"))


@parameterNodeWrapper
class OneClickRegistrationParameterNode:
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedModality: Annotated[str, Choice(MODALITY_CHOICES)] = "auto"
    movingModality: Annotated[str, Choice(MODALITY_CHOICES)] = "auto"
    engine: Annotated[str, Choice(ENGINE_CHOICES)] = "auto"
    transformType: Annotated[str, Choice(("rigid", "affine"))] = "rigid"
    createResampledVolume: bool = False
    judgedTransform: vtkMRMLTransformNode


class OneClickRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the running glue.BackgroundJob; the UI state is derived from it
        self._jobContext = None  # (kind, fixed node, moving node, create resampled volume) of that job

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourcePath("UI/OneClickRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = OneClickRegistrationLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._poll)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.judgeButton.connect("clicked(bool)", self.onJudgeButton)
        for selector, label in ((self.ui.fixedVolumeSelector, self.ui.fixedModalityDetectedLabel),
                                (self.ui.movingVolumeSelector, self.ui.movingModalityDetectedLabel)):
            selector.connect("currentNodeChanged(vtkMRMLNode*)",
                             lambda node, label=label: self._showDetectedModality(node, label))
        self.ui.progressBar.hide()
        self.initializeParameterNode()

    def cleanup(self):
        if self._job:
            self._job.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        if self._job:
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._showEngineAvailability()
            self._showDetectedModalities()
        self._updateButtons()

    def _updateButtons(self, caller=None, event=None):
        p, running = self._parameterNode, self._job is not None
        ready = bool(p and p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        self.ui.registerButton.text = _("Cancel") if running else _("Register")
        self.ui.registerButton.enabled = running or ready
        self.ui.judgeButton.enabled = bool(not running and ready and p.judgedTransform)

    def _showEngineAvailability(self):
        from OneClickRegistrationLib.engines import engine_availability

        self.logic.configureEngines()
        available = engine_availability()
        for index, name in enumerate(ENGINE_CHOICES):
            if name in available and not available[name].available:
                self.ui.engineComboBox.setItemText(index, _("{name} (not installed)").format(name=name))
        self.ui.engineStatusLabel.text = "\n".join(
            f"{'✓' if a.available else '✗'} {name}: {a.detail}" for name, a in available.items())

    def _showDetectedModalities(self):
        p = self._parameterNode
        self._showDetectedModality(p.fixedVolume if p else None, self.ui.fixedModalityDetectedLabel)
        self._showDetectedModality(p.movingVolume if p else None, self.ui.movingModalityDetectedLabel)

    def _showDetectedModality(self, volume, label):
        from OneClickRegistrationLib.errors import OneClickError
        from OneClickRegistrationLib.modality import detect_modality

        label.text, label.toolTip = "", ""
        try:
            if volume and volume.GetImageData():
                evidence = detect_modality(glue.imageFromVolumeNode(volume), name=volume.GetName(),
                                           metadata=self.logic.volumeMetadata(volume))
                label.text = _("detected: {m} ({source}, confidence {c:.2f})").format(
                    m=evidence.modality, source=evidence.source, c=evidence.confidence)
                label.toolTip = evidence.detail
        except OneClickError as error:
            label.text = str(error)

    def onRegisterButton(self):
        if self._job:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling…")
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot start the registration."), waitCursor=True):
            self.logic.configureEngines()  # here: it touches Slicer modules, so not from the worker
            inputs = glue.inputsFromNodes(p.fixedVolume, p.movingVolume)
            options = self.logic.optionsFromParameterNode(p)
            self._start("register", lambda progress, cancel: self.logic.runCore(
                inputs, progress=progress, cancel=cancel, **options))

    def onJudgeButton(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot judge the transform."), waitCursor=True):
            inputs = glue.inputsFromNodes(p.fixedVolume, p.movingVolume)
            transform = glue.transformBetweenVolumes(p.fixedVolume, p.judgedTransform)
            self._start("judge", lambda progress, cancel: self.logic.judgeCore(inputs, transform))

    def _start(self, kind, work):
        self._job = glue.BackgroundJob(work)
        p = self._parameterNode
        self._jobContext = (kind, p.fixedVolume, p.movingVolume, p.createResampledVolume)
        OneClickRegistrationLogic.cancelRequested = staticmethod(self._job.cancelRequested)  # BRAINSFit CLI
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.statusLabel.text = _("Starting…")
        self._updateButtons()
        self._job.start()
        self._timer.start()

    def _poll(self):
        self.logic.mainThreadCalls.runPending()  # MRML work the worker asked for (BRAINSFit)
        job = self._job
        progress = job.poll() if job else None
        if progress:
            self.ui.progressBar.value = round(100 * progress[0])
            self.ui.statusLabel.text = progress[1]
        if job and job.finished:
            self._timer.stop()
            self._job = None
            OneClickRegistrationLogic.cancelRequested = staticmethod(lambda: False)
            self.ui.progressBar.hide()
            self._updateButtons()
            self._finish(job)

    def _finish(self, job):
        from OneClickRegistrationLib.errors import CancelledError

        kind, fixedNode, movingNode, createResampledVolume = self._jobContext
        try:
            with slicer.util.tryWithErrorDisplay(_("Registration failed; the scene was not changed.")):
                removed = fixedNode.GetScene() is None or movingNode.GetScene() is None  # scene closed
                if isinstance(job.error, CancelledError) or removed:
                    self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
                    return
                if job.error is not None:
                    raise job.error
                if kind == "register":
                    glue.applyResult(slicer.mrmlScene, fixedNode, movingNode, job.result,
                                     createResampledVolume=createResampledVolume)
                    self.ui.resultLabel.text = glue.resultSummaryHtml(job.result)
                    self.ui.resultsCollapsibleButton.collapsed = False
                else:
                    self.ui.judgeResultLabel.text = glue.resultSummaryHtml(job.result, judged=True)
                self.ui.statusLabel.text = _("Done.")
        except Exception:  # already shown to the user by tryWithErrorDisplay
            self.ui.statusLabel.text = _("Failed; the scene was not changed.")
            logging.exception("OneClickRegistration failed")


class OneClickRegistrationLogic(ScriptedLoadableModuleLogic):
    """Console and batch API: ``register`` returns the result with its nodes and raises on failure."""

    # Shared by every instance: engine settings are global in the core, so whichever logic configured
    # BRAINSFit, its host runner must reach the queue the panel's timer serves and the panel's cancel.
    mainThreadCalls = glue.MainThreadCalls()
    cancelRequested = staticmethod(lambda: False)

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._enginesConfigured = False

    def getParameterNode(self):
        return OneClickRegistrationParameterNode(super().getParameterNode())

    def register(self, fixedNode, movingNode, *, createResampledVolume=False, showResult=True, **options):
        """Register ``movingNode`` to ``fixedNode``; blocks until done (call from the main thread).

        ``options`` go to ``OneClickRegistrationLib.pipeline.register`` (engine, transform,
        fixed_modality, moving_modality, progress, cancel, timeout_s...). Returns a
        ``glue.SceneResult``: ``.result`` (transform, scores, verdict, ...), ``.transform_node``,
        ``.resampled_node``, ``.table_node``. Raises ``OneClickError``; on failure the scene is unchanged.
        A ``progress``/``cancel`` callback is called from the worker thread the core runs in.
        """
        self.configureEngines()
        return glue.registerNodes(fixedNode, movingNode, register=self._register,
                                  createResampledVolume=createResampledVolume, showResult=showResult,
                                  **options)

    def judge(self, fixedNode, movingNode, transformNode):
        """Score and verdict of the moving volume placed under ``transformNode``; changes nothing."""
        inputs = glue.inputsFromNodes(fixedNode, movingNode)
        return self.judgeCore(inputs, glue.transformBetweenVolumes(fixedNode, transformNode))

    def optionsFromParameterNode(self, p):
        auto = lambda value: None if value == "auto" else value  # noqa: E731
        return {"fixed_modality": auto(p.fixedModality), "moving_modality": auto(p.movingModality),
                "engine": auto(p.engine), "transform": p.transformType}

    def runCore(self, inputs, **options):
        """The core on images taken from nodes; safe in a worker thread (call configureEngines first)."""
        return self._register(inputs.fixed, inputs.moving, **inputs.registerKwargs(), **options)

    def judgeCore(self, inputs, transform):
        from OneClickRegistrationLib.pipeline import judge_transform

        return judge_transform(inputs.fixed, inputs.moving, transform, **inputs.registerKwargs())

    def _register(self, fixed, moving, **options):
        from OneClickRegistrationLib.pipeline import register

        if threading.current_thread() is not threading.main_thread():  # the panel's worker
            return register(fixed, moving, **options)
        # Console/batch: the core's recovery threads may need the main thread (BRAINSFit), so the core
        # runs in a worker while this thread serves it and keeps Slicer's events flowing.
        return glue.runServingMainThread(lambda: register(fixed, moving, **options), self.mainThreadCalls,
                                         idle=slicer.app.processEvents)

    def volumeMetadata(self, volumeNode):
        """Node attributes plus, for a volume loaded from DICOM, the tags modality detection reads."""
        return glue.nodeMetadata(volumeNode, dicomDatabase=getattr(slicer, "dicomDatabase", None))

    def configureEngines(self):
        """Point the core at the engines Slicer extensions bundle (main thread; once per logic)."""
        from OneClickRegistrationLib.engines import configure_engine
        from OneClickRegistrationLib.engines.base import EngineSettings

        if self._enginesConfigured:
            return
        self._enginesConfigured = True

        try:
            import Elastix  # SlicerElastix

            elastixDir = Elastix.ElastixLogic().getElastixBinDir()
            configure_engine("elastix", EngineSettings(search_dirs=(elastixDir,)))
        except (ImportError, ValueError, AttributeError) as error:
            logging.debug(f"SlicerElastix's elastix is not used: {error}")
        antsCli = getattr(slicer.modules, "antsregistrationcli", None)
        if antsCli is not None:  # SlicerANTs builds ANTs; look for its programs near its CLI module
            cliDir = os.path.dirname(antsCli.path)
            dirs = (cliDir, os.path.dirname(cliDir), os.path.join(os.path.dirname(cliDir), "bin"))
            configure_engine("ants", EngineSettings(search_dirs=tuple(d for d in dirs if os.path.isdir(d))))
        if hasattr(slicer.modules, "brainsfit"):
            configure_engine("brainsfit", EngineSettings(host_runner=self._brainsFitHostRunner))

    @classmethod
    def _brainsFitHostRunner(cls, parameters):
        from OneClickRegistrationLib.engines.brainsfit_engine import plan_host_call

        def startCli(params, wait=False):
            return slicer.cli.run(slicer.modules.brainsfit, None, params, wait_for_completion=wait,
                                  update_display=False)

        plan = plan_host_call(parameters)
        if threading.current_thread() is threading.main_thread():  # console and batch scripts
            glue.runCliWithTemporaryNodes(slicer.mrmlScene, plan, lambda params: startCli(params, True))
        else:  # the GUI's worker thread: MRML only on the main thread, the CLI polled from here
            glue.runCliThroughMainThread(slicer.mrmlScene, plan, startCli, cls.mainThreadCalls,
                                         cancelRequested=cls.cancelRequested)


class OneClickRegistrationTest(ScriptedLoadableModuleTest):
    """Registers a small synthetic T2 to a T1 with a known misalignment; errors in millimetres."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_RegisterSyntheticPair, self.test_JudgeTransform, self.test_Cancel):
            self.setUp()
            test()

    def _pair(self):
        from OneClickRegistrationLib import synthetic

        pair = synthetic.make_pair("T1", "T2", rotation_deg=(0.0, 0.0, 8.0), translation_mm=(6.0, -4.0, 3.0),
                                   coarsen=3.0, source="analytic")
        fixed = glue.addVolumeNodeFromImage(slicer.mrmlScene, pair.fixed, "T1 fixed")
        moving = glue.addVolumeNodeFromImage(slicer.mrmlScene, pair.moving, "T2 moving")
        return pair, fixed, moving

    def test_RegisterSyntheticPair(self):
        from OneClickRegistrationLib.synthetic import target_registration_error

        pair, fixed, moving = self._pair()
        applied = OneClickRegistrationLogic().register(fixed, moving, engine="simpleitk")
        # The transform read back from the scene, against the ground truth, in millimetres.
        inScene = glue.transformBetweenVolumes(fixed, moving.GetParentTransformNode())
        error = target_registration_error(inScene, pair.truth, pair.brain_points)
        self.assertLess(float(error.max()), 3.0)
        self.assertLess(float(error.mean()), 1.5)
        self.assertEqual(applied.result.verdict.label, "good")
        self.assertEqual(applied.table_node.GetNumberOfRows(), 1)

    def test_JudgeTransform(self):
        pair, fixed, moving = self._pair()
        truthNode = glue.addTransformNodeFromTransform(slicer.mrmlScene, pair.truth, "truth")
        identityNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "identity")
        logic = OneClickRegistrationLogic()
        self.assertEqual(logic.judge(fixed, moving, truthNode).verdict.label, "good")
        self.assertNotEqual(logic.judge(fixed, moving, identityNode).verdict.label, "good")
        self.assertIsNone(moving.GetParentTransformNode())

    def test_Cancel(self):
        from OneClickRegistrationLib.errors import CancelledError

        _, fixed, moving = self._pair()
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(CancelledError):
            OneClickRegistrationLogic().register(fixed, moving, cancel=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.assertIsNone(moving.GetParentTransformNode())
