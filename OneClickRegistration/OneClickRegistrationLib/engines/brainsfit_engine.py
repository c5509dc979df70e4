"""BRAINSFit ("General Registration (BRAINS)", BRAINSTools) behind the engine protocol.

Two halves, as for every engine:

* :func:`build_parameters` turns a request and the preset into BRAINSFit's parameter set, keyed by the
  parameter *names* of BRAINSFit's CLI description (``BRAINSFit.xml``); :func:`build_command_line`
  turns that set into ``--longflag value`` arguments for the ``BRAINSFit`` executable.
* :class:`BrainsFitEngine` runs it: inside Slicer through an injected host runner (Slicer's CLI
  module), outside Slicer through a ``BRAINSFit`` executable and
  :func:`~OneClickRegistrationLib.process_runner.run_process`.

Facts taken from BRAINSTools (``BRAINSFit/BRAINSFit.cxx``, ``BRAINSCommonLib/BRAINSFitHelperTemplate.hxx``,
``BRAINSCommonLib/GenericTransformImage.cxx``) that this module relies on:

* Every phase flag (``useRigid`` ... ``useComposite``) defaults to false; with none set and no
  initializer BRAINSFit refuses to run. Phases run in the order rigid, scale-versor, scale-skew, affine.
* ``numberOfIterations`` holds one value per phase (or one value for all).
* The linear phases run at a single, full-resolution level with no smoothing (the level count is
  hard-coded to 1), so BRAINSFit has no pyramid: see :func:`build_parameters` for how the preset's
  per-level fields are mapped.
* ``initialTransform`` may only be used with ``initializeTransformMode Off``. BRAINSFit starts its
  first phase *from* that transform and collapses it into the result: the ``linearTransform`` it
  writes is the complete fixed->moving transform, initialization included. Only
  VersorRigid3D/ScaleVersor3D/ScaleSkewVersor3D/Affine initial transforms are accepted (anything else,
  e.g. an Euler3D transform, makes it stop without registering and without writing a transform, yet
  exit 0), and its rigid phase keeps only the rigid part of a non-rigid start. So the initial
  transform is written as a VersorRigid3D or an Affine transform.
* With ``linearTransform`` set, the single transform component (VersorRigid3D after a rigid phase,
  Affine after an affine phase) is written with ITK's transform writer: an ITK *resampling*
  transform in LPS mapping fixed points to moving points, the project's convention. Slicer reads
  such a file as the transform "from parent" of the moving volume.
* The metric value BRAINSFit reports is not used: the pipeline computes its own score.

Host runner contract (inside Slicer)
------------------------------------
:class:`~OneClickRegistrationLib.engines.base.EngineSettings.host_runner` is a callable
``host_runner(parameters: Mapping[str, object]) -> None`` injected by the Slicer module. It receives
exactly the dictionary :func:`build_parameters` returns:

* keys are BRAINSFit parameter names (``fixedVolume``, ``useRigid``, ``costMetric``, ...);
* image parameters (``fixedVolume``, ``movingVolume``, and when present ``fixedBinaryVolume``,
  ``movingBinaryVolume``) are ``str`` paths of existing NRRD files in the engine's temporary
  folder; the two ``*BinaryVolume`` entries are label maps (0/1, uint8);
* ``initialTransform``, when present, is the ``str`` path of an existing ITK transform file
  (LPS, fixed->moving);
* ``linearTransform`` (always present) and ``outputVolume`` (rarely) are ``str`` paths the host must
  write after a successful run;
* every other value is a Python ``bool``, ``int``, ``float``, ``str`` (enumeration value), or a
  ``tuple`` of ``int``/``float`` (a vector parameter).

:func:`plan_host_call` sorts that dictionary for the host (which files to load as volumes, label
maps or transforms, which nodes to create, and the plain values with vectors already comma-joined),
so the host needs no knowledge of BRAINSFit.xml. The host must then:

1. load ``plan.input_volumes`` with ``slicer.util.loadVolume(path, {"show": False})``,
   ``plan.input_labelmaps`` with ``slicer.util.loadLabelVolume(path, {"show": False})``,
   ``plan.input_transforms`` with ``slicer.util.loadTransform``;
   create a ``vtkMRMLLinearTransformNode`` per ``plan.output_transforms`` entry and a
   ``vtkMRMLScalarVolumeNode`` per ``plan.output_volumes`` entry (all temporary nodes: the user's
   nodes are never passed, so BRAINSFit's "set the moving volume's parent transform" side effect
   only touches the temporary copy);
2. call ``cli_node = slicer.cli.runSync(slicer.modules.brainsfit, None, {**plan.values,
   **{name: node ...}})``;
3. check ``cli_node.GetStatus() & cli_node.ErrorsMask`` (runSync does not raise): on error raise
   :class:`~OneClickRegistrationLib.errors.EngineError` with ``cli_node.GetErrorText()`` split into
   lines as ``log_tail``; if the status is ``cli_node.Cancelled`` raise
   :class:`~OneClickRegistrationLib.errors.CancelledError`;
4. save each output node to its path with ``slicer.util.saveNode(node, path)`` (Slicer's storage
   node writes the ITK LPS "from parent" form, i.e. the same file BRAINSFit itself would write; do
   not convert anything);
5. remove every temporary node and the CLI node from the scene, in a ``finally``.

The engine checks that ``linearTransform`` exists afterwards, reads it and returns it. Cancel is
checked before and after the host call; the host call itself is synchronous, so ``timeout_s`` is not
applied to it.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import EngineError, EngineUnavailableError, InputError, OneClickError
from ..images import check_volume, read_transform, to_float32, write_image, write_transform
from ..process_runner import engine_workdir, find_executable, log_tail, run_process
from .base import (
    Availability,
    EngineOutput,
    EngineRequest,
    EngineSettings,
    RunOptions,
    TransformKind,
    check_cancel,
    report,
)

ENGINE_NAME = "brainsfit"
EXECUTABLE_NAME = "BRAINSFit"
ENV_VAR = "ONECLICK_BRAINSFIT"

# The parameters this adapter may set: name -> (XML element kind, long flag). The kinds are the
# XML's element tags plus the channel for files, so the host plan and the tests can check them.
# Every boolean here defaults to false in BRAINSFit.xml, so "bare flag" always means "true".
PARAMETERS: Mapping[str, tuple[str, str]] = {
    "fixedVolume": ("image-input", "fixedVolume"),
    "movingVolume": ("image-input", "movingVolume"),
    "fixedBinaryVolume": ("label-input", "fixedBinaryVolume"),
    "movingBinaryVolume": ("label-input", "movingBinaryVolume"),
    "initialTransform": ("transform-input", "initialTransform"),
    "linearTransform": ("transform-output", "linearTransform"),
    "outputVolume": ("image-output", "outputVolume"),
    "outputVolumePixelType": ("string-enumeration", "outputVolumePixelType"),
    "initializeTransformMode": ("string-enumeration", "initializeTransformMode"),
    "useRigid": ("boolean", "useRigid"),
    "useScaleVersor3D": ("boolean", "useScaleVersor3D"),
    "useScaleSkewVersor3D": ("boolean", "useScaleSkewVersor3D"),
    "useAffine": ("boolean", "useAffine"),
    "useBSpline": ("boolean", "useBSpline"),
    "useSyN": ("boolean", "useSyN"),
    "useComposite": ("boolean", "useComposite"),
    "histogramMatch": ("boolean", "histogramMatch"),
    "maskProcessingMode": ("string-enumeration", "maskProcessingMode"),
    "costMetric": ("string-enumeration", "costMetric"),
    "samplingPercentage": ("double", "samplingPercentage"),
    "numberOfHistogramBins": ("integer", "numberOfHistogramBins"),
    "numberOfIterations": ("integer-vector", "numberOfIterations"),
    "backgroundFillValue": ("double", "backgroundFillValue"),
    "interpolationMode": ("string-enumeration", "interpolationMode"),
    "numberOfThreads": ("integer", "numberOfThreads"),
}

# Preset vocabulary -> BRAINSFit vocabulary (data, not branches).
INITIALIZE_MODE = {
    "moments": "useMomentsAlign",
    "geometry": "useGeometryAlign",
    # Not used by the current preset table; accepted so a preset can ask for BRAINSFit's head finder.
    "center_of_head": "useCenterOfHeadAlign",
}
COST_METRIC = {"mi": "MMI", "ncc": "NC"}
INTERPOLATION_MODE = {"linear": "Linear", "bspline": "BSpline"}
# Phase flags in BRAINSFit's own execution order; all are set explicitly (true or false) so a host
# that reuses a CLI parameter node never inherits a phase from an earlier run.
PHASE_FLAGS = ("useRigid", "useScaleVersor3D", "useScaleSkewVersor3D", "useAffine", "useBSpline",
               "useSyN", "useComposite")

_RIGID_TOLERANCE = 1e-6  # how far from orthonormal a matrix may be and still count as a rotation
_LINEAR_TOLERANCE_MM = 1e-4  # how far a transform may deviate from affine and still count as linear


@dataclass(frozen=True)
class BrainsFitPaths:
    """Where one run's files live. ``None`` means "not used in this run"."""

    fixed: Path
    moving: Path
    linear_transform: Path
    fixed_mask: Path | None = None
    moving_mask: Path | None = None
    initial_transform: Path | None = None
    output_volume: Path | None = None

    @classmethod
    def in_folder(cls, folder: str | os.PathLike[str], request: EngineRequest, *,
                  output_volume: bool = False) -> BrainsFitPaths:
        """The standard file names in ``folder`` for ``request``."""
        root = Path(folder)
        return cls(
            fixed=root / "fixed.nrrd",
            moving=root / "moving.nrrd",
            # ITK text: exact (round-trip) numbers and readable in a kept temporary folder.
            linear_transform=root / "linear_transform.txt",
            fixed_mask=root / "fixed_mask.nrrd" if request.fixed_mask is not None else None,
            moving_mask=root / "moving_mask.nrrd" if request.moving_mask is not None else None,
            initial_transform=(root / "initial_transform.txt"
                               if request.initial_transform is not None else None),
            output_volume=root / "output_volume.nrrd" if output_volume else None,
        )


def build_parameters(request: EngineRequest, paths: BrainsFitPaths, *,
                     threads: int | None = None) -> dict[str, object]:
    """BRAINSFit's parameter set for ``request``, keyed by BRAINSFit.xml parameter names.

    Pure: reads the request and preset, touches no file. Mapping of the preset:

    * ``transform``: rigid -> ``useRigid``; affine -> ``useRigid`` then ``useAffine`` (BRAINSFit's
      usual sequence), except when the initial transform is itself non-rigid: then only
      ``useAffine``, because BRAINSFit's rigid phase would throw the initial scale/shear away.
    * ``initialization`` -> ``initializeTransformMode`` (moments -> useMomentsAlign, geometry ->
      useGeometryAlign); with an initial transform: ``initialTransform`` and mode ``Off`` (BRAINSFit
      allows nothing else).
    * ``similarity`` -> ``costMetric`` (mi -> MMI, ncc -> NC). ``histogramMatch`` is always false: it
      is wrong across modalities, needs masks, and the NC metric is insensitive to the linear
      intensity differences it would correct within a modality.
    * Pyramid (``shrink_factors``, ``smoothing_sigmas_mm``): BRAINSFit has none (one full-resolution
      level, no smoothing), so they are not used. ``iterations`` (one per preset level) becomes one
      ``numberOfIterations`` entry per phase equal to their sum: the whole budget the preset allows,
      spent at BRAINSFit's single level.
    * ``sampling_fraction`` -> ``samplingPercentage`` (BRAINSFit's value is a fraction too);
      ``histogram_bins`` -> ``numberOfHistogramBins``; ``interpolation`` -> ``interpolationMode``;
      ``moving_fill_value`` -> ``backgroundFillValue``. ``winsorize`` is not passed on
      (``removeIntensityOutliers`` stays off): the pipeline has already winsorized or windowed the
      images, and BRAINSFit's clamp is a different, extrapolated one.
    * Masks: ``ROI`` with the given mask file(s); without masks ``ROIAUTO`` (BRAINSFit's Otsu head
      mask), which keeps the metric on the head rather than on air or the scanner table.
    """
    preset = request.preset
    kind = _check_kind(request.transform_kind)
    if not 0.0 < preset.sampling_fraction <= 1.0:
        raise InputError(
            f"BRAINSFit needs a sampling fraction in (0, 1]; the preset {preset.name!r} has "
            f"{preset.sampling_fraction!r}."
        )
    initial_is_rigid = True
    params: dict[str, object] = {
        "fixedVolume": os.fspath(paths.fixed),
        "movingVolume": os.fspath(paths.moving),
        "linearTransform": os.fspath(paths.linear_transform),
    }
    if request.initial_transform is not None:
        if paths.initial_transform is None:
            raise InputError("The request has an initial transform but no file path was given for it.")
        initial_is_rigid = _is_rigid(_affine_of(request.initial_transform, request.fixed, role="initial")[0])
        if kind == "rigid" and not initial_is_rigid:
            raise InputError(
                "BRAINSFit's rigid phase keeps only the rigid part of its starting transform; "
                "expected a rigid initial transform for a rigid registration, received one with "
                "scaling or shear. Ask for an affine registration or use another engine."
            )
        params["initialTransform"] = os.fspath(paths.initial_transform)
        params["initializeTransformMode"] = "Off"
    else:
        try:
            params["initializeTransformMode"] = INITIALIZE_MODE[preset.initialization]
        except KeyError:
            raise InputError(
                f"The preset {preset.name!r} asks for initialization {preset.initialization!r}; "
                f"BRAINSFit supports {', '.join(sorted(INITIALIZE_MODE))}."
            ) from None

    phases = {flag: False for flag in PHASE_FLAGS}
    phases["useRigid"] = kind == "rigid" or initial_is_rigid
    phases["useAffine"] = kind == "affine"
    params.update(phases)
    phase_count = sum(phases.values())
    params["numberOfIterations"] = (int(sum(preset.iterations)),) * phase_count

    params["costMetric"] = _lookup(COST_METRIC, preset.similarity, "similarity", preset.name)
    params["histogramMatch"] = False
    params["samplingPercentage"] = float(preset.sampling_fraction)
    params["numberOfHistogramBins"] = int(preset.histogram_bins)
    params["interpolationMode"] = _lookup(INTERPOLATION_MODE, preset.interpolation, "interpolation",
                                          preset.name)
    params["backgroundFillValue"] = float(preset.moving_fill_value)

    if request.fixed_mask is not None or request.moving_mask is not None:
        params["maskProcessingMode"] = "ROI"
        for mask, path, name in ((request.fixed_mask, paths.fixed_mask, "fixedBinaryVolume"),
                                 (request.moving_mask, paths.moving_mask, "movingBinaryVolume")):
            if mask is None:
                continue
            if path is None:
                raise InputError(f"The request has a mask for {name} but no file path was given for it.")
            params[name] = os.fspath(path)
    else:
        params["maskProcessingMode"] = "ROIAUTO"

    if paths.output_volume is not None:
        params["outputVolume"] = os.fspath(paths.output_volume)
        params["outputVolumePixelType"] = "float"
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be a positive number; received {threads!r}.")
        params["numberOfThreads"] = int(threads)
    return params


def build_command_line(executable: str | os.PathLike[str],
                       parameters: Mapping[str, object]) -> list[str]:
    """``[executable, --longflag, value, ...]`` for BRAINSFit; never a shell string.

    Booleans are bare switches when true and left out when false (BRAINSFit's switches flip a false
    default); vectors are comma-joined; numbers use Python's shortest exact form; paths stay as they
    are (spaces and non-ASCII included), because the result is an argument list.
    """
    args = [os.fspath(executable)]
    for name, value in parameters.items():
        if name not in PARAMETERS:
            raise InputError(
                f"Unknown BRAINSFit parameter {name!r}; expected one of {', '.join(sorted(PARAMETERS))}."
            )
        kind, flag = PARAMETERS[name]
        if kind == "boolean":
            if not isinstance(value, bool):
                raise InputError(f"BRAINSFit parameter {name!r} must be a bool; received {value!r}.")
            if value:
                args.append(f"--{flag}")
            continue
        args.extend((f"--{flag}", _format_value(name, value)))
    return args


def _format_value(name: str, value: object) -> str:
    if isinstance(value, bool):
        raise InputError(f"BRAINSFit parameter {name!r} is not a switch; received the bool {value!r}.")
    if isinstance(value, (tuple, list)):
        return ",".join(_format_value(name, v) for v in value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, str, os.PathLike)):
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    raise InputError(f"BRAINSFit parameter {name!r} has an unsupported value {value!r}.")


@dataclass(frozen=True)
class HostParameterPlan:
    """:func:`build_parameters`' dictionary sorted for a host (Slicer) that works with nodes."""

    input_volumes: dict[str, str]
    input_labelmaps: dict[str, str]
    input_transforms: dict[str, str]
    output_transforms: dict[str, str]
    output_volumes: dict[str, str]
    # Plain values; vectors already comma-joined (slicer.cli would otherwise write "a, b").
    values: dict[str, bool | int | float | str]


def plan_host_call(parameters: Mapping[str, object]) -> HostParameterPlan:
    """Split a parameter set into files to load, nodes to create and plain values."""
    groups: dict[str, dict[str, str]] = {
        "image-input": {}, "label-input": {}, "transform-input": {},
        "transform-output": {}, "image-output": {},
    }
    values: dict[str, bool | int | float | str] = {}
    for name, value in parameters.items():
        if name not in PARAMETERS:
            raise InputError(f"Unknown BRAINSFit parameter {name!r}.")
        kind = PARAMETERS[name][0]
        if kind in groups:
            groups[kind][name] = os.fspath(value)  # type: ignore[arg-type]
        elif isinstance(value, (tuple, list)):
            values[name] = _format_value(name, value)
        else:
            values[name] = value  # type: ignore[assignment]
    return HostParameterPlan(
        input_volumes=groups["image-input"],
        input_labelmaps=groups["label-input"],
        input_transforms=groups["transform-input"],
        output_transforms=groups["transform-output"],
        output_volumes=groups["image-output"],
        values=values,
    )


class _Progress:
    """Turns BRAINSFit's console output into monotonic progress.

    BRAINSFit prints "Starting Transform Estimations for Rigid(1 of 2)" per phase and, when its
    iteration observer is on, one "<iteration> <metric> [ parameters ]" line per iteration
    (BRAINSCommonLib/BRAINSFitHelperTemplate.hxx, genericRegistrationHelper.h). The observer is off
    for linear phases in BRAINSTools 07bdec3 (BRAINSFitHelper does not forward ObserveIterations),
    so in practice progress moves per phase; iteration lines are used when a build prints them.
    """

    _PHASE = re.compile(r"Starting Transform Estimations for (\w+)\((\d+) of (\d+)\)")
    _ITERATION = re.compile(r"^\s*(\d+)\s+[-+0-9.eE]+\s+\[")
    _START, _END = 0.1, 0.92

    def __init__(self, options: RunOptions, iterations: Sequence[int]) -> None:
        self._options = options
        self._iterations = tuple(iterations) or (1,)
        self._phase = 0
        self._phases = len(self._iterations)
        self._done = 0.0

    def send(self, fraction: float, message: str) -> None:
        self._done = max(self._done, fraction)
        report(self._options, self._done, message)

    def __call__(self, line: str) -> None:
        phase = self._PHASE.search(line)
        if phase:
            self._phase = int(phase.group(2)) - 1
            self._phases = max(1, int(phase.group(3)))
            self.send(self._at(0.0),
                      f"BRAINSFit: {phase.group(1)} phase ({phase.group(2)} of {self._phases})")
            return
        iteration = self._ITERATION.match(line)
        if iteration:
            budget = self._iterations[min(self._phase, len(self._iterations) - 1)]
            self.send(self._at(min(1.0, int(iteration.group(1)) / max(1, budget))),
                      f"BRAINSFit: iteration {iteration.group(1)}")
        elif line.startswith("Initializing transform with"):
            self.send(self._START * 0.9, "BRAINSFit: initializing")

    def _at(self, within_phase: float) -> float:
        span = (self._END - self._START) / self._phases
        return self._START + span * (min(self._phase, self._phases - 1) + within_phase)


class BrainsFitEngine:
    """The BRAINSFit adapter (see the module docstring for both runners)."""

    name = ENGINE_NAME

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings

    def _find_executable(self) -> Path | None:
        return find_executable(EXECUTABLE_NAME, explicit=self._settings.executable, env_var=ENV_VAR,
                               extra_dirs=self._settings.search_dirs)

    def availability(self) -> Availability:
        if self._settings.host_runner is not None:
            return Availability(True, "runs inside the host application (Slicer's BRAINSFit CLI module)")
        try:
            found = self._find_executable()
        except EngineUnavailableError as exc:
            return Availability(False, str(exc))
        if found is None:
            return Availability(
                False,
                f"no host runner configured (not inside Slicer) and no {EXECUTABLE_NAME} executable found "
                f"(looked at the explicit setting, ${ENV_VAR}, the search folders and PATH)",
            )
        return Availability(True, f"{EXECUTABLE_NAME} executable {str(found)!r}")

    def run(self, request: EngineRequest, options: RunOptions) -> EngineOutput:
        check_volume(request.fixed, role="fixed image")
        check_volume(request.moving, role="moving image")
        executable: Path | None = None
        if self._settings.host_runner is None:
            executable = self._find_executable()
            if executable is None:
                raise EngineUnavailableError(
                    f"The {ENGINE_NAME} engine is not available: {self.availability().detail}."
                )
        check_cancel(options, ENGINE_NAME)
        kept: list[str] = []
        with engine_workdir(ENGINE_NAME, keep_temp=options.keep_temp,
                            on_kept=lambda folder: kept.append(str(folder))) as folder:
            paths = BrainsFitPaths.in_folder(folder, request)
            parameters = build_parameters(request, paths, threads=options.threads)
            progress = _Progress(options, parameters["numberOfIterations"])  # type: ignore[arg-type]
            progress.send(0.0, "BRAINSFit: writing inputs")
            _write_inputs(request, paths)
            check_cancel(options, ENGINE_NAME)
            if executable is None:
                log = self._run_in_host(parameters, progress)
            else:
                log = self._run_executable(executable, parameters, folder, options, progress)
            check_cancel(options, ENGINE_NAME)
            progress.send(0.95, "BRAINSFit: reading the result")
            transform = _read_result(paths.linear_transform, request, log)
        progress.send(1.0, "BRAINSFit: done")
        return EngineOutput(transform=transform, log=log, engine_metric_value=None,
                            kept_temp_dir=kept[0] if kept else None)

    def _run_in_host(self, parameters: dict[str, object], progress: _Progress) -> tuple[str, ...]:
        runner = self._settings.host_runner
        assert runner is not None
        progress.send(0.1, "BRAINSFit: running in Slicer")
        try:
            runner(dict(parameters))
        except OneClickError:
            raise
        except Exception as exc:
            # The contract asks the host for EngineError; anything else still reaches the user as one.
            raise EngineError(f"BRAINSFit (Slicer CLI module) failed: {exc}") from exc
        return ("BRAINSFit ran inside the host through its CLI module.",)

    def _run_executable(self, executable: Path, parameters: dict[str, object], folder: Path,
                        options: RunOptions, progress: _Progress) -> tuple[str, ...]:
        args = build_command_line(executable, parameters)
        progress.send(0.05, "BRAINSFit: starting")
        outcome = run_process(args, name=EXECUTABLE_NAME, cwd=folder, on_line=progress,
                              cancel=options.cancel, timeout_s=options.timeout_s)
        return ("$ " + shlex.join(args), *outcome.log)


def _write_inputs(request: EngineRequest, paths: BrainsFitPaths) -> None:
    write_image(to_float32(request.fixed), paths.fixed)
    write_image(to_float32(request.moving), paths.moving)
    for mask, path, role in ((request.fixed_mask, paths.fixed_mask, "fixed mask"),
                             (request.moving_mask, paths.moving_mask, "moving mask")):
        if mask is not None and path is not None:
            check_volume(mask, role=role)
            # BRAINSFit reads masks as unsigned char label maps; any non-zero voxel is inside.
            write_image(sitk.Cast(mask != 0, sitk.sitkUInt8), path)
    if request.initial_transform is not None and paths.initial_transform is not None:
        matrix, offset = _affine_of(request.initial_transform, request.fixed, role="initial")
        write_transform(_linear_transform(matrix, offset, _center_of(request.fixed)),
                        paths.initial_transform)


def _read_result(path: Path, request: EngineRequest, log: Sequence[str]) -> sitk.Transform:
    if not path.is_file():
        raise EngineError(
            f"BRAINSFit finished without error but wrote no transform at {str(path)!r} "
            "(expected its linearTransform output).",
            log_tail=log_tail(log),
        )
    try:
        written = read_transform(path)
    except InputError as exc:
        raise EngineError(f"BRAINSFit's output transform cannot be read: {exc}",
                          log_tail=log_tail(log)) from None
    try:
        matrix, offset = _affine_of(written, request.fixed, role="output")
    except InputError as exc:
        raise EngineError(str(exc), log_tail=log_tail(log)) from None
    kind = _check_kind(request.transform_kind)
    if kind == "rigid" and not _is_rigid(matrix):
        raise EngineError(
            f"BRAINSFit was asked for a rigid transform but wrote one with scaling or shear "
            f"(matrix {np.round(matrix, 6).tolist()}) to {str(path)!r}.",
            log_tail=log_tail(log),
        )
    return _linear_transform(matrix, offset, _center_of(request.fixed), rigid=kind == "rigid")


def _check_kind(kind: str) -> TransformKind:
    if kind not in ("rigid", "affine"):
        raise InputError(f"BRAINSFit registers 'rigid' or 'affine' transforms; received {kind!r}.")
    return kind  # type: ignore[return-value]


def _lookup(table: Mapping[str, str], key: str, field: str, preset: str) -> str:
    try:
        return table[key]
    except KeyError:
        raise InputError(
            f"The preset {preset!r} has {field} {key!r}; BRAINSFit supports {', '.join(sorted(table))}."
        ) from None


def _center_of(image: sitk.Image) -> np.ndarray:
    size = np.asarray(image.GetSize(), dtype=float)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(((size - 1.0) / 2.0).tolist()))


def _affine_of(transform: sitk.Transform, fixed: sitk.Image, *, role: str) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``transform(x) == A @ x + b``, or InputError if it is not linear.

    Probing points works for every linear transform class and for composites of them alike.
    """
    if transform.GetDimension() != 3:
        raise InputError(f"The {role} transform must be 3D; received {transform.GetDimension()}D.")
    center = _center_of(fixed)
    step = 100.0  # mm: large enough that rounding in the probe does not matter
    origin = np.asarray(transform.TransformPoint(center.tolist()))
    matrix = np.column_stack([
        (np.asarray(transform.TransformPoint((center + step * axis).tolist())) - origin) / step
        for axis in np.eye(3)
    ])
    offset = origin - matrix @ center
    for signs in np.ndindex(2, 2, 2):
        point = center + (2.0 * np.asarray(signs) - 1.0) * 60.0
        mapped = np.asarray(transform.TransformPoint(point.tolist()))
        error = float(np.linalg.norm(mapped - (matrix @ point + offset)))
        if not np.isfinite(error) or error > _LINEAR_TOLERANCE_MM:
            raise InputError(
                f"The {role} transform must be linear (rigid or affine) for BRAINSFit; received a "
                f"{transform.GetName()} that is not (off by {error:.3g} mm from its linear fit)."
            )
    return matrix, offset


def _is_rigid(matrix: np.ndarray) -> bool:
    return bool(np.allclose(matrix.T @ matrix, np.eye(3), atol=_RIGID_TOLERANCE)
                and np.linalg.det(matrix) > 0)


def _linear_transform(matrix: np.ndarray, offset: np.ndarray, center: np.ndarray, *,
                      rigid: bool | None = None) -> sitk.Transform:
    """A VersorRigid3D (rotation) or Affine transform mapping ``x`` to ``matrix @ x + offset``.

    Those are the two classes BRAINSFit accepts as a start and writes as a result. The centre is the
    fixed image's centre, which is where BRAINSFit's optimizer expects to rotate about.
    """
    if rigid is None:
        rigid = _is_rigid(matrix)
    if rigid:
        u, _, vt = np.linalg.svd(matrix)
        rotation = u @ vt  # nearest exact rotation; the input is within _RIGID_TOLERANCE of one
        result: sitk.Transform = sitk.VersorRigid3DTransform()
        result.SetCenter(center.tolist())
        result.SetMatrix(rotation.ravel().tolist())
        result.SetTranslation((offset + rotation @ center - center).tolist())
        return result
    affine = sitk.AffineTransform(3)
    affine.SetCenter(center.tolist())
    affine.SetMatrix(matrix.ravel().tolist())
    affine.SetTranslation((offset + matrix @ center - center).tolist())
    return affine


def create_engine(settings: EngineSettings) -> BrainsFitEngine:
    """Registry entry point (see :mod:`OneClickRegistrationLib.engines`)."""
    return BrainsFitEngine(settings)
