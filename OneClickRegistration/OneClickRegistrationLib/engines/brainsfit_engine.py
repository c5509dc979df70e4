"""BRAINSFit ("General Registration (BRAINS)", BRAINSTools) behind the engine protocol.

Two halves, as for every engine:

* :func:`build_parameters` turns a request and the preset into BRAINSFit's parameter set, keyed by the
  parameter *names* of BRAINSFit's CLI description (``BRAINSFit.xml``); :func:`build_command_line`
  turns that set into ``--longflag value`` arguments for the ``BRAINSFit`` executable.
* :class:`BrainsFitEngine` runs it: through a ``BRAINSFit`` executable and the shared
  :class:`~.external_program.ExternalProgramEngine` skeleton, or inside Slicer through an injected
  host runner (Slicer's CLI module).

Facts taken from BRAINSTools (``BRAINSFit/BRAINSFit.cxx``, ``BRAINSCommonLib/BRAINSFitHelperTemplate.hxx``,
``BRAINSCommonLib/GenericTransformImage.cxx``) that this module relies on:

* Every phase flag (``useRigid`` ... ``useComposite``) defaults to false; with none set and no
  initializer BRAINSFit refuses to run. Phases run in the order rigid, scale-versor, scale-skew, affine.
* ``numberOfIterations`` holds one value per phase (or one value for all).
* The linear phases run at a single, full-resolution level with no smoothing (the level count is
  hard-coded to 1), so BRAINSFit has no pyramid: see :func:`build_parameters` for how the preset's
  per-level fields are mapped.
* ``initialTransform`` may only be used with ``initializeTransformMode Off`` (the pipeline always
  gives one, so BRAINSFit's own initializers are never used). BRAINSFit starts its
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
from ..images import check_volume, read_transform, write_transform
from ..process_runner import engine_workdir, find_executable, log_tail
from ..transforms import as_rigid_or_affine, as_versor_rigid, is_rotation, to_matrix, with_center
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
from .external_program import EngineFiles, ExternalProgramEngine, ProgramCommand

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
COST_METRIC = {"mi": "MMI", "ncc": "NC"}
INTERPOLATION_MODE = {"linear": "Linear", "bspline": "BSpline"}
# Phase flags in BRAINSFit's own execution order; all are set explicitly (true or false) so a host
# that reuses a CLI parameter node never inherits a phase from an earlier run.
PHASE_FLAGS = ("useRigid", "useScaleVersor3D", "useScaleSkewVersor3D", "useAffine", "useBSpline",
               "useSyN", "useComposite")

_RIGID_TOLERANCE = 1e-6  # how far from orthonormal a matrix may be and still count as a rotation
OUTPUT_TRANSFORM = "linear_transform.txt"  # ITK text: exact (round-trip) numbers, readable when kept
INITIAL_TRANSFORM = "initial_transform.txt"


def build_parameters(request: EngineRequest, files: EngineFiles, *, threads: int | None = None,
                     linear_transform: str = OUTPUT_TRANSFORM,
                     output_volume: str | None = None) -> dict[str, object]:
    """BRAINSFit's parameter set for ``request``, keyed by BRAINSFit.xml parameter names.

    Pure: reads the request and preset, touches no file; file names are those of ``files``.
    Mapping of the preset:

    * ``transform``: rigid -> ``useRigid``; affine -> ``useRigid`` then ``useAffine`` (BRAINSFit's
      usual sequence), except when the initial transform is itself non-rigid: then only
      ``useAffine``, because BRAINSFit's rigid phase would throw the initial scale/shear away.
    * The initial transform -> ``initialTransform`` and ``initializeTransformMode Off`` (BRAINSFit
      allows nothing else with an initial transform).
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
    initial_is_rigid = check_request(request)
    params: dict[str, object] = {
        "fixedVolume": files.fixed,
        "movingVolume": files.moving,
        "linearTransform": linear_transform,
        "initialTransform": files.initial_transform,
        "initializeTransformMode": "Off",
    }
    kind = request.transform_kind

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

    if files.fixed_mask is not None or files.moving_mask is not None:
        params["maskProcessingMode"] = "ROI"
        for path, name in ((files.fixed_mask, "fixedBinaryVolume"), (files.moving_mask, "movingBinaryVolume")):
            if path is not None:
                params[name] = path
    else:
        params["maskProcessingMode"] = "ROIAUTO"

    if output_volume is not None:
        params["outputVolume"] = output_volume
        params["outputVolumePixelType"] = "float"
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be a positive number; received {threads!r}.")
        params["numberOfThreads"] = int(threads)
    return params


def check_request(request: EngineRequest) -> bool:
    """Refuse a request BRAINSFit cannot run; returns whether the initial transform is rigid."""
    preset = request.preset
    _check_kind(request.transform_kind)
    if not 0.0 < preset.sampling_fraction <= 1.0:
        raise InputError(
            f"BRAINSFit needs a sampling fraction in (0, 1]; the preset {preset.name!r} has "
            f"{preset.sampling_fraction!r}."
        )
    initial_is_rigid = is_rotation(_matrix_of(request.initial_transform, role="initial")[:3, :3],
                                   atol=_RIGID_TOLERANCE)
    if request.transform_kind == "rigid" and not initial_is_rigid:
        raise InputError(
            "BRAINSFit's rigid phase keeps only the rigid part of its starting transform; "
            "expected a rigid initial transform for a rigid registration, received one with "
            "scaling or shear. Ask for an affine registration or use another engine."
        )
    return initial_is_rigid


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


class ProgressParser:
    """Turns BRAINSFit's console output into the fraction of its work done.

    BRAINSFit prints "Starting Transform Estimations for Rigid(1 of 2)" per phase and, when its
    iteration observer is on, one "<iteration> <metric> [ parameters ]" line per iteration
    (BRAINSCommonLib/BRAINSFitHelperTemplate.hxx, genericRegistrationHelper.h). The observer is off
    for linear phases in BRAINSTools 07bdec3 (BRAINSFitHelper does not forward ObserveIterations),
    so in practice progress moves per phase; iteration lines are used when a build prints them.
    """

    _PHASE = re.compile(r"Starting Transform Estimations for (\w+)\((\d+) of (\d+)\)")
    _ITERATION = re.compile(r"^\s*(\d+)\s+[-+0-9.eE]+\s+\[")

    def __init__(self, iterations: Sequence[int]) -> None:
        self._iterations = tuple(iterations) or (1,)
        self.phase = -1
        self._phases = len(self._iterations)

    def feed(self, line: str) -> tuple[float, str] | None:
        phase = self._PHASE.search(line)
        if phase:
            self.phase = int(phase.group(2)) - 1
            self._phases = max(1, int(phase.group(3)))
            return self._at(0.0), f"BRAINSFit: {phase.group(1)} phase ({phase.group(2)} of {self._phases})"
        iteration = self._ITERATION.match(line)
        if iteration and self.phase >= 0:
            budget = self._iterations[min(self.phase, len(self._iterations) - 1)]
            return (self._at(min(1.0, int(iteration.group(1)) / max(1, budget))),
                    f"BRAINSFit: iteration {iteration.group(1)}")
        return None

    def _at(self, within_phase: float) -> float:
        return (min(self.phase, self._phases - 1) + within_phase) / self._phases


class BrainsFitEngine(ExternalProgramEngine[Path]):
    """The BRAINSFit adapter (see the module docstring for both runners)."""

    name = ENGINE_NAME
    label = "BRAINSFit"
    image_suffix = ".nrrd"

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
        if self._settings.host_runner is None:
            return super().run(request, options)
        return self._run_in_host(request, options)

    # --- skeleton hooks ------------------------------------------------------------------------

    def program(self) -> Path:
        executable = self._find_executable()
        if executable is None:
            raise EngineUnavailableError(f"The {ENGINE_NAME} engine is not available: {self.availability().detail}.")
        return executable

    def validate(self, request: EngineRequest) -> None:
        check_request(request)

    def write_initial_transform(self, request: EngineRequest, work: Path) -> str:
        # BRAINSFit starts only from VersorRigid3D/ScaleVersor3D/ScaleSkewVersor3D/Affine transforms,
        # rotating about the fixed image's centre, which is where its optimizer expects the centre.
        center = _center_of(request.fixed)
        initial = request.initial_transform
        rigid = is_rotation(to_matrix(initial)[:3, :3], atol=_RIGID_TOLERANCE)
        write_transform(as_versor_rigid(initial, center) if rigid else with_center(initial, center),
                        work / INITIAL_TRANSFORM)
        return INITIAL_TRANSFORM

    def command(self, program: Path, request: EngineRequest, files: EngineFiles, work: Path,
                options: RunOptions) -> ProgramCommand:
        args = build_command_line(program, build_parameters(request, files, threads=options.threads))
        return ProgramCommand(arguments=tuple(args), label=EXECUTABLE_NAME, shown="$ " + shlex.join(args))

    def progress_parser(self, request: EngineRequest) -> ProgressParser:
        return ProgressParser(_phase_iterations(request))

    def read_result(self, request: EngineRequest, work: Path, log: Sequence[str]) -> sitk.Transform:
        return _read_result(work / OUTPUT_TRANSFORM, request, log)

    # --- inside Slicer -------------------------------------------------------------------------

    def _run_in_host(self, request: EngineRequest, options: RunOptions) -> EngineOutput:
        check_volume(request.fixed, role="fixed image")
        check_volume(request.moving, role="moving image")
        self.validate(request)
        runner = self._settings.host_runner
        assert runner is not None
        check_cancel(options, ENGINE_NAME)
        kept: list[str] = []
        with engine_workdir(ENGINE_NAME, keep_temp=options.keep_temp,
                            on_kept=lambda folder: kept.append(str(folder))) as folder:
            report(options, 0.0, "BRAINSFit: writing inputs")
            files = self.write_inputs(request, folder)
            # The host loads files by path: give it absolute ones.
            absolute = EngineFiles(*(None if name is None else os.fspath(folder / name)
                                     for name in (files.fixed, files.moving, files.initial_transform,
                                                  files.fixed_mask, files.moving_mask)))
            parameters = build_parameters(request, absolute, threads=options.threads,
                                          linear_transform=os.fspath(folder / OUTPUT_TRANSFORM))
            check_cancel(options, ENGINE_NAME)
            report(options, 0.1, "BRAINSFit: running in Slicer")
            try:
                runner(dict(parameters))
            except OneClickError:
                raise
            except Exception as exc:
                # The contract asks the host for EngineError; anything else still reaches the user as one.
                raise EngineError(f"BRAINSFit (Slicer CLI module) failed: {exc}") from exc
            check_cancel(options, ENGINE_NAME)
            log = ("BRAINSFit ran inside the host through its CLI module.",)
            report(options, 0.95, "BRAINSFit: reading the result")
            transform = self.read_result(request, folder, log)
        report(options, 1.0, "BRAINSFit: done")
        return EngineOutput(transform=transform, log=log, kept_temp_dir=kept[0] if kept else None)


def _phase_iterations(request: EngineRequest) -> tuple[int, ...]:
    files = EngineFiles(fixed="f", moving="m", initial_transform="t")
    return tuple(build_parameters(request, files)["numberOfIterations"])  # type: ignore[arg-type]


def _read_result(path: Path, request: EngineRequest, log: Sequence[str]) -> sitk.Transform:
    if not path.is_file():
        raise EngineError(
            f"BRAINSFit finished without error but wrote no transform at {str(path)!r} "
            "(expected its linearTransform output).",
            log_tail=log_tail(log),
        )
    try:
        written = read_transform(path)
        matrix = _matrix_of(written, role="output")
    except InputError as exc:
        raise EngineError(f"BRAINSFit's output transform cannot be read: {exc}", log_tail=log_tail(log)) from None
    rigid = _check_kind(request.transform_kind) == "rigid"
    if rigid and not is_rotation(matrix[:3, :3], atol=_RIGID_TOLERANCE):
        raise EngineError(
            f"BRAINSFit was asked for a rigid transform but wrote one with scaling or shear "
            f"(matrix {np.round(matrix[:3, :3], 6).tolist()}) to {str(path)!r}.",
            log_tail=log_tail(log),
        )
    return as_rigid_or_affine(written, rigid=rigid, atol=_RIGID_TOLERANCE, center=_center_of(request.fixed))


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


def _center_of(image: sitk.Image) -> tuple[float, float, float]:
    size = np.asarray(image.GetSize(), dtype=float)
    return tuple(image.TransformContinuousIndexToPhysicalPoint(((size - 1.0) / 2.0).tolist()))  # type: ignore[return-value]


def _matrix_of(transform: sitk.Transform, *, role: str) -> np.ndarray:
    """The 4x4 matrix of a linear transform, or InputError saying this one is not linear/finite."""
    try:
        matrix = to_matrix(transform)
    except InputError:
        raise InputError(f"The {role} transform must be linear (rigid or affine) for BRAINSFit; received a "
                         f"{transform.GetName()}.") from None
    if not np.all(np.isfinite(matrix)):
        raise InputError(f"The {role} transform for BRAINSFit has non-finite values.")
    return matrix


def create_engine(settings: EngineSettings) -> BrainsFitEngine:
    """Registry entry point (see :mod:`OneClickRegistrationLib.engines`)."""
    return BrainsFitEngine(settings)
