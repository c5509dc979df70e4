"""One-Click Registration: the Slicer module (panel, parameter node, logic, self-test).

The registration runs in a child process: the project's command line, started with Slicer's own
Python, on the two volumes written to a temporary folder; its outputs are read back and put into the
scene. The panel drives the child with ``qt.QProcess`` signals; the console runs it synchronously. The
MRML work lives in the ``OneClickRegistrationSlicer`` package, imported only when it is needed so that
Slicer's start-up loads neither numpy nor SimpleITK. Only this file touches Qt.
"""

import importlib
import logging
import os
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode, vtkMRMLTransformNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODALITY_CHOICES = ("auto", "T1", "T2", "FLAIR", "CT", "MR")
ENGINE_CHOICES = ("auto", "simpleitk", "elastix", "ants", "brainsfit")
MINIMUM_SLICER_VERSION = "5.8"
# Forgotten by the developer-mode Reload button, so that their next (lazy) import reads them afresh.
LIBRARY_PACKAGES = ("OneClickRegistrationSlicer", "OneClickRegistrationLib")


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
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["OneClickRegistration developers"]  # names: to fill at publication (README)
        self.parent.helpText = _(
            "Registers a moving brain volume (T1, T2, FLAIR or CT) to a fixed one with one click: the "
            "modality pair is detected, a preset is chosen for it, and the result is scored where both "
            "volumes have data and given a verdict (good, questionable, failed). The moving volume is "
            "placed under the output transform (not hardened); a transform it already has is the starting "
            "point. The registration runs as a separate process (the same command line as outside Slicer). "
            "Requires 3D Slicer {version} or later. The presets and measured accuracy are in the README."
        ).format(version=MINIMUM_SLICER_VERSION)
        self.parent.acknowledgementText = _(
            "Built on SimpleITK; uses elastix (SlicerElastix), ANTs (antspyx) and BRAINSFit if installed."
        )
        self.parent.icon = qt.QIcon(resourcePath("Icons/OneClickRegistration.png"))


@parameterNodeWrapper
class OneClickRegistrationParameterNode:
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    outputTransform: vtkMRMLLinearTransformNode  # none: a new transform node for each run
    fixedModality: Annotated[str, Choice(MODALITY_CHOICES)] = "auto"
    movingModality: Annotated[str, Choice(MODALITY_CHOICES)] = "auto"
    engine: Annotated[str, Choice(ENGINE_CHOICES)] = "auto"
    transformType: Annotated[str, Choice(("rigid", "affine"))] = "rigid"
    createResampledVolume: bool = False
    judgedTransform: vtkMRMLTransformNode
    resultText: str = ""  # the last result's summary, kept with the scene
    judgeResultText: str = ""


class OneClickRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._process = None  # the running child (qt.QProcess); the UI state is derived from it
        self._endedProcess = None  # kept until the next run: a QObject must outlive its own signal's emission
        self._job = None  # its OneClickRegistrationSlicer.child_job.ChildJob
        self._context = None  # (kind, fixed, moving, output transform, create resampled volume)
        self._detection = None
        self._enginesShown = False

    def resourcePath(self, filename):
        # The base class looks only beside this file; developer mode's "Edit UI" needs the source layout too.
        return resourcePath(filename)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/OneClickRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = OneClickRegistrationLogic()
        self._stopTimer = qt.QTimer()
        self._stopTimer.setSingleShot(True)
        self._stopTimer.timeout.connect(self._killChild)
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
        # Leaving Slicer (or reloading the module) must not leave a registration running.
        if self._process is not None:
            self._killChild()
            self._process.waitForFinished(5000)
        self.removeObservers()

    def onReload(self):
        """Developer mode: reload the library packages too, not only this file.

        This file imports them only inside functions, so dropping them from ``sys.modules`` is enough for
        every later import to read the edited sources (in dependency order, which a per-module reload
        would not guarantee).
        """
        for name in [m for m in sys.modules if m.split(".")[0] in LIBRARY_PACKAGES]:
            del sys.modules[name]
        importlib.invalidate_caches()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        if self._process is not None:
            self._stopChild()
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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._showEngineAvailability()
            self._showDetectedModalities()
        self._updateGUI()

    def _updateGUI(self, caller=None, event=None):
        p, running = self._parameterNode, self._process is not None
        ready = bool(p and p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        kind = self._context[0] if self._context else None
        self.ui.registerButton.text = _("Cancel") if kind == "register" else _("Register")
        self.ui.registerButton.enabled = kind == "register" or (ready and not running)
        self.ui.judgeButton.text = _("Cancel") if kind == "judge" else _("Judge transform")
        self.ui.judgeButton.enabled = kind == "judge" or bool(ready and not running and p.judgedTransform)
        self.ui.resultLabel.text = (p.resultText if p else "") or _("No registration yet.")
        self.ui.judgeResultLabel.text = p.judgeResultText if p else ""
        table = self._resultsTable()
        self.ui.resultsTableView.setMRMLTableNode(table)
        self.ui.resultsTableView.visible = table is not None

    def _resultsTable(self):
        if not self._parameterNode:
            return None
        from OneClickRegistrationSlicer.results_table import resultsTableNode

        return resultsTableNode(slicer.mrmlScene, create=False)

    def _showEngineAvailability(self):
        if self._enginesShown:  # once per session: it may start programs (elastix --version)
            return
        self._enginesShown = True
        available = self.logic.engineAvailability()
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
        label.text, label.toolTip = "", ""
        if not volume or not volume.GetImageData() or not volume.GetImageData().GetPointData().GetScalars():
            return
        from OneClickRegistrationLib.errors import OneClickError
        from OneClickRegistrationSlicer.detection import DetectionCache

        if self._detection is None:
            self._detection = DetectionCache()
        try:
            evidence = self._detection.detect(volume, self.logic.volumeMetadata(volume))
        except OneClickError as error:
            label.text = str(error)
            return
        label.text = _("detected: {m} ({source}, confidence {c:.2f})").format(
            m=evidence.modality.value, source=evidence.source, c=evidence.confidence)
        label.toolTip = evidence.detail

    # -- running the child ---------------------------------------------------------------------------

    def onRegisterButton(self):
        if self._process is not None:
            self._stopChild()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot start the registration."), waitCursor=True):
            command = self.logic.registrationCommand(p)
            self._start(command, ("register", p.fixedVolume, p.movingVolume, p.outputTransform,
                                  p.createResampledVolume))

    def onJudgeButton(self):
        if self._process is not None:
            self._stopChild()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot judge the transform."), waitCursor=True):
            command = self.logic.judgementCommand(p)
            self._start(command, ("judge", p.fixedVolume, p.movingVolume, None, False))

    def _start(self, command, context):
        from OneClickRegistrationSlicer.child_job import ChildJob

        self._job = ChildJob(command, progress=self._showProgress)
        self._context = context
        process = qt.QProcess()
        environment = qt.QProcessEnvironment()
        for key, value in command.env.items():
            environment.insert(key, value)
        process.setProcessEnvironment(environment)
        process.readyReadStandardOutput.connect(
            lambda: self._job.feedStdout(bytes(process.readAllStandardOutput().data())))
        process.readyReadStandardError.connect(
            lambda: self._job.feedStderr(bytes(process.readAllStandardError().data())))
        # A crashed child has no meaningful exit code (Qt): report it as a failure, never as success.
        process.finished.connect(lambda exitCode, exitStatus: self._finish(
            exitCode if exitStatus == qt.QProcess.NormalExit else -1))
        process.errorOccurred.connect(self._onProcessError)
        self._process = process
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.statusLabel.text = _("Starting…")
        self._updateGUI()
        process.start(command.argv[0], list(command.argv[1:]))

    def _showProgress(self, fraction, stage):
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.statusLabel.text = stage

    def _stopChild(self):
        """Cancel: ask the child to stop cleanly, and kill its whole tree if it has not after a grace period."""
        from OneClickRegistrationSlicer.child_job import STOP_GRACE_S, askToStop

        self._job.cancelled = True
        self.ui.statusLabel.text = _("Cancelling…")
        askToStop(int(self._process.processId()))
        self._stopTimer.start(int(STOP_GRACE_S * 1000))

    def _killChild(self):
        from OneClickRegistrationSlicer.child_job import killProcessTree

        if self._process is not None and self._process.state() != qt.QProcess.NotRunning:
            self._job.cancelled = True
            killProcessTree(int(self._process.processId()))

    def _onProcessError(self, error):
        if error == qt.QProcess.FailedToStart:
            self._finish(None, startError=self._process.errorString())

    def _finish(self, exitCode, startError=None):
        from OneClickRegistrationLib.errors import CancelledError, EngineUnavailableError

        process, job, context = self._process, self._job, self._context
        if process is None:
            return
        self._stopTimer.stop()
        job.feedStdout(bytes(process.readAllStandardOutput().data()))
        job.feedStderr(bytes(process.readAllStandardError().data()))
        self._endedProcess, self._process, self._job, self._context = process, None, None, None
        self.ui.progressBar.hide()
        kind, fixedNode, movingNode, outputTransform, createResampledVolume = context
        try:
            with slicer.util.tryWithErrorDisplay(_("The operation failed; the scene was not changed.")):
                if startError is not None:
                    raise EngineUnavailableError(f"Cannot start {job.command.argv[0]!r}: {startError}")
                if fixedNode.GetScene() is None or movingNode.GetScene() is None:  # the scene was closed
                    raise CancelledError("The volumes were removed while the operation ran.")
                outcome = job.outcome(exitCode)
                self.logic.showOutcome(self._parameterNode, kind, outcome, fixedNode, movingNode,
                                       outputTransformNode=outputTransform,
                                       createResampledVolume=createResampledVolume)
                self.ui.resultsCollapsibleButton.collapsed = False
                self.ui.statusLabel.text = _("Done.")
        except CancelledError:
            self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
        except Exception:  # already shown to the user by tryWithErrorDisplay
            self.ui.statusLabel.text = _("Failed; the scene was not changed.")
            logging.exception("OneClickRegistration failed")
        finally:
            job.command.cleanup()
            self._updateGUI()


class OneClickRegistrationLogic(ScriptedLoadableModuleLogic):
    """Console and batch API: ``register`` blocks until done, returns the nodes it made, raises on failure."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._environment = None
        self._availability = None

    def getParameterNode(self):
        return OneClickRegistrationParameterNode(super().getParameterNode())

    def register(self, fixedNode, movingNode, *, outputTransformNode=None, createResampledVolume=False,
                 showResult=True, progress=None, cancel=None, **options):
        """Register ``movingNode`` to ``fixedNode`` in a child process; blocks (Slicer's events keep flowing).

        ``options``: engine, transform ("rigid"/"affine"), fixed_modality, moving_modality, recover,
        timeout_s (per engine run), jobTimeoutS (the whole child). ``progress(fraction, stage)`` and
        ``cancel()`` are called from the calling (main) thread. Returns a ``SceneResult`` (``.outcome``,
        ``.transformNode``, ``.resampledNode``, ``.tableNode``); on failure the scene is unchanged.
        """
        from OneClickRegistrationSlicer.registration import registerNodes

        return registerNodes(fixedNode, movingNode, outputTransformNode=outputTransformNode,
                             createResampledVolume=createResampledVolume, showResult=showResult, progress=progress,
                             cancel=cancel, idle=slicer.app.processEvents, environment=self.engineEnvironment(),
                             dicomDatabase=self.dicomDatabase(), **options)

    def judge(self, fixedNode, movingNode, transformNode, *, cancel=None, **options):
        """Score and verdict of the moving volume placed under ``transformNode``; changes nothing."""
        from OneClickRegistrationSlicer.registration import judgeNodes

        return judgeNodes(fixedNode, movingNode, transformNode, cancel=cancel, idle=slicer.app.processEvents,
                          environment=self.engineEnvironment(), dicomDatabase=self.dicomDatabase(), **options)

    def registrationCommand(self, p):
        from OneClickRegistrationSlicer.command import registrationCommand

        return registrationCommand(p.fixedVolume, p.movingVolume, engine=p.engine, transform=p.transformType,
                                   fixedModality=p.fixedModality, movingModality=p.movingModality,
                                   environment=self.engineEnvironment(), dicomDatabase=self.dicomDatabase())

    def judgementCommand(self, p):
        from OneClickRegistrationSlicer.command import judgementCommand
        from OneClickRegistrationSlicer.convert import transformBetweenVolumes

        judged = transformBetweenVolumes(p.fixedVolume, p.judgedTransform)
        return judgementCommand(p.fixedVolume, p.movingVolume, judged,
                                fixedModality=p.fixedModality, movingModality=p.movingModality,
                                environment=self.engineEnvironment(), dicomDatabase=self.dicomDatabase())

    def showOutcome(self, p, kind, outcome, fixedNode, movingNode, **applyOptions):
        """Put a finished child's outcome into the scene and its summary into the parameter node."""
        from OneClickRegistrationSlicer.scene import applyOutcome
        from OneClickRegistrationSlicer.summary import resultSummaryHtml

        if kind == "register":
            applyOutcome(slicer.mrmlScene, fixedNode, movingNode, outcome, **applyOptions)
            if p:
                p.resultText = resultSummaryHtml(outcome, translate=_)
        elif p:
            p.judgeResultText = resultSummaryHtml(outcome, judged=True, translate=_)

    @staticmethod
    def dicomDatabase():
        return getattr(slicer, "dicomDatabase", None)

    def volumeMetadata(self, volumeNode):
        """Node attributes plus, for a volume loaded from DICOM, the tags modality detection reads."""
        from OneClickRegistrationSlicer.convert import nodeMetadata

        return nodeMetadata(volumeNode, dicomDatabase=self.dicomDatabase())

    def engineEnvironment(self):
        """Environment variables that point the child at the engines Slicer's extensions bundle."""
        if self._environment is not None:
            return self._environment
        environment = {}
        try:
            import Elastix  # SlicerElastix

            elastixLogic = Elastix.ElastixLogic()
            elastixDir = elastixLogic.getElastixBinDir()
            executable = os.path.join(elastixDir, "elastix.exe" if sys.platform == "win32" else "elastix")
            if os.path.isfile(executable):
                environment["ONECLICK_ELASTIX"] = executable
                environment.update(_libraryPathFor(os.path.join(os.path.dirname(elastixDir), "lib")))
        except (ImportError, ValueError, AttributeError) as error:
            logging.debug(f"SlicerElastix's elastix is not used: {error}")
        brainsfit = getattr(slicer.modules, "brainsfit", None)
        if brainsfit is not None and os.path.isfile(brainsfit.path):  # Slicer's own CLI executable
            environment["ONECLICK_BRAINSFIT"] = brainsfit.path
        self._environment = environment
        return environment

    def configureEngines(self):
        """Point the core running in this process (the batch script runs it in-process) at the same engines."""
        os.environ.update(self.engineEnvironment())

    def engineAvailability(self):
        """What the child will find: the core's answer with the same engine paths (cached)."""
        if self._availability is None:
            from OneClickRegistrationLib.engines import engine_availability

            saved = {key: os.environ.get(key) for key in self.engineEnvironment()}
            os.environ.update(self.engineEnvironment())
            try:
                self._availability = engine_availability()
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        return self._availability


def _libraryPathFor(folder):
    if not os.path.isdir(folder) or sys.platform == "win32":
        return {}
    variable = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
    return {variable: os.pathsep.join(p for p in (folder, os.environ.get(variable, "")) if p)}


class OneClickRegistrationTest(ScriptedLoadableModuleTest):
    """Registers a small synthetic T2 to a T1 with a known misalignment; errors in millimetres."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_PanelRegistersAPair, self.test_ConsoleRegisterAndJudge, self.test_Cancel):
            self.setUp()
            test()

    def _pair(self):
        from OneClickRegistrationLib import synthetic
        from OneClickRegistrationSlicer.convert import addVolumeNodeFromImage

        pair = synthetic.make_pair("T1", "T2", rotation_deg=(0.0, 0.0, 8.0), translation_mm=(6.0, -4.0, 3.0),
                                   coarsen=3.0, source="analytic")
        fixed = addVolumeNodeFromImage(slicer.mrmlScene, pair.fixed, "T1 fixed")
        moving = addVolumeNodeFromImage(slicer.mrmlScene, pair.moving, "T2 moving")
        return pair, fixed, moving

    def _assertAligned(self, pair, fixed, moving):
        from OneClickRegistrationLib.synthetic import target_registration_error
        from OneClickRegistrationSlicer.convert import transformBetweenVolumes

        inScene = transformBetweenVolumes(fixed, moving.GetParentTransformNode())
        error = target_registration_error(inScene, pair.truth, pair.brain_points)
        self.assertLess(float(error.max()), 3.0)
        self.assertLess(float(error.mean()), 1.5)

    def test_PanelRegistersAPair(self):
        """The widget itself: select the module, pick the volumes, press Register, wait for the result."""
        import time

        pair, fixed, moving = self._pair()
        slicer.util.selectModule("OneClickRegistration")
        widget = slicer.modules.oneclickregistration.widgetRepresentation().self()
        p = widget._parameterNode
        p.fixedVolume, p.movingVolume, p.engine = fixed, moving, "simpleitk"
        self.assertTrue(widget.ui.registerButton.enabled)
        widget.ui.registerButton.click()
        deadline = time.monotonic() + 300
        while widget._process is not None and time.monotonic() < deadline:
            slicer.app.processEvents(qt.QEventLoop.AllEvents, 50)
        self.assertIsNone(widget._process, "the registration did not finish in 300 s")
        self._assertAligned(pair, fixed, moving)
        self.assertIn("Good", p.resultText)
        self.assertEqual(widget.ui.resultLabel.text, p.resultText)

    def test_ConsoleRegisterAndJudge(self):
        pair, fixed, moving = self._pair()
        logic = OneClickRegistrationLogic()
        applied = logic.register(fixed, moving, engine="simpleitk")
        self._assertAligned(pair, fixed, moving)
        self.assertEqual(applied.outcome.verdict, "good")
        self.assertEqual(applied.tableNode.GetNumberOfRows(), 1)
        self.assertEqual(logic.judge(fixed, moving, applied.transformNode).verdict, "good")

    def test_Cancel(self):
        from OneClickRegistrationLib.errors import CancelledError

        _, fixed, moving = self._pair()
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(CancelledError):
            OneClickRegistrationLogic().register(fixed, moving, progress=lambda f, s: None, cancel=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.assertIsNone(moving.GetParentTransformNode())
