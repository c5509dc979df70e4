"""BRAINSFit ("General Registration (BRAINS)", BRAINSTools) behind the engine protocol.

Two halves, as for every engine:

* :func:`build_parameters` turns a request and the preset into BRAINSFit's parameter set, keyed by the
  parameter *names* of BRAINSFit's CLI description (``BRAINSFit.xml``); :func:`build_command_line`
  turns that set into ``--longflag value`` arguments for the ``BRAINSFit`` executable.
* :class:`BrainsFitEngine` runs it: a ``BRAINSFit`` executable, through the shared
  :class:`~.external_program.ExternalProgramEngine` skeleton, coarse to fine (:func:`brainsfit_levels`).

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

Inside Slicer the same adapter runs the BRAINSFit executable Slicer ships (its CLI module's
program), named by ``$ONECLICK_BRAINSFIT`` or the explicit setting: one runner everywhere.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import EngineError, EngineUnavailableError, InputError
from ..images import read_transform, to_float32, write_image, write_transform
from ..presets import Preset, level_shrink_factors
from ..process_runner import find_executable, log_tail
from ..transforms import as_rigid_or_affine, as_versor_rigid, is_rotation, to_matrix, with_center
from .base import (
    Availability,
    EngineRequest,
    EngineSettings,
    RunOptions,
    TransformKind,
)
from .elastix_engine import pyramid_schedule
from .external_program import EngineFiles, ExternalProgramEngine, ProgramCommand

ENGINE_NAME = "brainsfit"
EXECUTABLE_NAME = "BRAINSFit"
ENV_VAR = "ONECLICK_BRAINSFIT"

# The parameters this adapter may set: name -> (XML element kind, long flag). The kinds are the
# XML's element tags plus the channel for files, so the tests can check them against the XML.
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
    "maximumStepLength": ("double", "maximumStepLength"),
    "backgroundFillValue": ("double", "backgroundFillValue"),
    "interpolationMode": ("string-enumeration", "interpolationMode"),
    "numberOfThreads": ("integer", "numberOfThreads"),
}

# Preset vocabulary -> BRAINSFit vocabulary (data, not branches).
COST_METRIC = {"mi": "MMI", "ncc": "NC"}
INTERPOLATION_MODE = {"linear": "Linear", "bspline": "BSpline"}
# Phase flags in BRAINSFit's own execution order; all are set explicitly (true or false) so a run
# that reuses a CLI parameter node never inherits a phase from an earlier run.
PHASE_FLAGS = ("useRigid", "useScaleVersor3D", "useScaleSkewVersor3D", "useAffine", "useBSpline",
               "useSyN", "useComposite")

_RIGID_TOLERANCE = 1e-6  # how far from orthonormal a matrix may be and still count as a rotation
OUTPUT_TRANSFORM = "linear_transform.txt"  # ITK text: exact (round-trip) numbers, readable when kept
INITIAL_TRANSFORM = "initial_transform.txt"

# Metric samples per run. BRAINSFit's samplingPercentage is a share of every voxel of the fixed
# image (air included); its default 0.002 is about 70 samples on a small real T1 (about 34,000
# voxels; a known 0.38 rad rotation is then not recovered) and 0.1 is a million samples on a 1 mm
# head (160 s for one run).
# Measured on 1 mm T1/T2 and T1/CT pairs: 20-30 thousand samples gave 0.05-0.16 mm.
SAMPLES_PER_RUN = 25_000
# maximumStepLength per unit of shrink: BRAINSFit's optimizer (regular step gradient descent on
# versor and scaled translation parameters) starts with this step and halves it when it overshoots.
# 0.1 at 4 mm voxels, 0.025 at full resolution (its default, 0.05, is tuned for one full-resolution
# run from a close start).
STEP_PER_SHRINK = 0.025


@dataclass(frozen=True)
class BrainsFitLevel:
    """One BRAINSFit run of the coarse-to-fine schedule, on images shrunk by ``shrink``."""

    shrink: int
    sigma_mm: float
    iterations: int

    @property
    def maximum_step(self) -> float:
        return STEP_PER_SHRINK * self.shrink


def brainsfit_levels(preset: Preset, fixed_spacing: Sequence[float]) -> tuple[BrainsFitLevel, ...]:
    """The preset's pyramid as BRAINSFit runs it: its coarsest level, then its finest.

    BRAINSFit registers at one level (full resolution, no smoothing), so the adapter runs it once per
    level on smoothed, shrunk copies, each run starting from the last one's result. Only the
    coarsest level (which gives the capture range: a single full-resolution run from a 25-degree
    start ended 24 mm off) and the finest (which gives the accuracy) are run; each run re-reads its
    images and the middle level added time without changing the error (measured on 1 mm pairs).
    The finest run gets the iterations of every level but the first.
    """
    shrinks = level_shrink_factors(preset, tuple(fixed_spacing))
    if not (len(shrinks) == len(preset.smoothing_sigmas_mm) == len(preset.iterations)) or not shrinks:
        raise InputError(
            f"Preset {preset.name!r} must give one shrink factor, smoothing sigma and iteration count "
            f"per level; received {len(shrinks)}, {len(preset.smoothing_sigmas_mm)} and "
            f"{len(preset.iterations)}."
        )
    sigmas, iterations = preset.smoothing_sigmas_mm, [int(n) for n in preset.iterations]
    finest = BrainsFitLevel(shrinks[-1], float(sigmas[-1]), sum(iterations[1:]) or iterations[0])
    if shrinks[0] == shrinks[-1]:
        return (BrainsFitLevel(shrinks[-1], float(sigmas[-1]), sum(iterations)),)
    return (BrainsFitLevel(shrinks[0], float(sigmas[0]), iterations[0]), finest)


def level_factors(image: sitk.Image, level: BrainsFitLevel, fixed_spacing: Sequence[float]) -> tuple[int, ...]:
    """Per-axis shrink factors that bring ``image`` near the level's voxel size (5 mm slices stay)."""
    return pyramid_schedule(image.GetSpacing(), (level.shrink * min(fixed_spacing),))[0]


def sampling_percentage(request: EngineRequest, level: BrainsFitLevel) -> float:
    """samplingPercentage giving about SAMPLES_PER_RUN samples at ``level`` (inside the fixed mask)."""
    factors = level_factors(request.fixed, level, request.fixed.GetSpacing())
    voxels = float(np.prod([max(1, n // f) for n, f in zip(request.fixed.GetSize(), factors)]))
    share = 1.0
    if request.fixed_mask is not None:
        values = sitk.GetArrayViewFromImage(request.fixed_mask)
        share = max(float(np.count_nonzero(values)) / max(1, values.size), 1e-6)
    return float(min(1.0, SAMPLES_PER_RUN / (voxels * share)))


def build_parameters(request: EngineRequest, files: EngineFiles, *, level: BrainsFitLevel | None = None,
                     start_is_rigid: bool | None = None, threads: int | None = None,
                     linear_transform: str = OUTPUT_TRANSFORM,
                     output_volume: str | None = None) -> dict[str, object]:
    """BRAINSFit's parameter set for one run, keyed by BRAINSFit.xml parameter names.

    Pure: reads the request and preset, touches no file; file names are those of ``files`` (the
    run's images and its start). ``level`` defaults to one full-resolution run with the whole
    iteration budget; ``start_is_rigid`` (whether the run's start is a rotation) defaults to the
    request's initial transform's. Mapping of the preset:

    * ``transform``: rigid -> ``useRigid``; affine -> ``useRigid`` then ``useAffine`` (BRAINSFit's
      usual sequence), except when the start is itself non-rigid: then only ``useAffine``, because
      BRAINSFit's rigid phase would throw the start's scale/shear away.
    * The start -> ``initialTransform`` and ``initializeTransformMode Off`` (BRAINSFit allows
      nothing else with an initial transform; the pipeline always gives one).
    * ``similarity`` -> ``costMetric`` (mi -> MMI, ncc -> NC). ``histogramMatch`` is always false: it
      is wrong across modalities, needs masks, and the NC metric is insensitive to the linear
      intensity differences it would correct within a modality.
    * Pyramid: see :func:`brainsfit_levels`; the level's iterations go to every phase, its step to
      ``maximumStepLength``.
    * ``samplingPercentage`` by sample count (:func:`sampling_percentage`), not the preset's share;
      ``histogram_bins`` -> ``numberOfHistogramBins``; ``interpolation`` -> ``interpolationMode``;
      ``moving_fill_value`` -> ``backgroundFillValue``. ``winsorize`` is not passed on
      (``removeIntensityOutliers`` stays off): the pipeline has already winsorized or windowed the
      images, and BRAINSFit's clamp is a different, extrapolated one.
    * Masks: ``ROI`` with the given mask file(s) (read in physical space, so the full-resolution
      masks serve every level); without masks ``NOMASK``. BRAINSFit's own head mask (``ROIAUTO``)
      took 40 of 53 s of a run on a 1 mm head, and the metric samples at random anyway.
    """
    preset = request.preset
    initial_is_rigid = check_request(request)
    if level is None:
        level = BrainsFitLevel(1, 0.0, int(sum(preset.iterations)))
    if start_is_rigid is None:
        start_is_rigid = initial_is_rigid
    params: dict[str, object] = {
        "fixedVolume": files.fixed,
        "movingVolume": files.moving,
        "linearTransform": linear_transform,
        "initialTransform": files.initial_transform,
        "initializeTransformMode": "Off",
    }
    kind = request.transform_kind

    phases = {flag: False for flag in PHASE_FLAGS}
    phases["useRigid"] = kind == "rigid" or start_is_rigid
    phases["useAffine"] = kind == "affine"
    params.update(phases)
    phase_count = sum(phases.values())
    params["numberOfIterations"] = (max(1, int(level.iterations)),) * phase_count
    params["maximumStepLength"] = float(level.maximum_step)

    params["costMetric"] = _lookup(COST_METRIC, preset.similarity, "similarity", preset.name)
    params["histogramMatch"] = False
    params["samplingPercentage"] = sampling_percentage(request, level)
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
        params["maskProcessingMode"] = "NOMASK"

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
    brainsfit_levels(preset, request.fixed.GetSpacing())
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


class ProgressParser:
    """Turns the console output of BRAINSFit's runs into the fraction of the work done.

    BRAINSFit prints "Starting Transform Estimations for Rigid(1 of 2)" per phase and, when its
    iteration observer is on, one "<iteration> <metric> [ parameters ]" line per iteration
    (BRAINSCommonLib/BRAINSFitHelperTemplate.hxx, genericRegistrationHelper.h). The observer is off
    for linear phases in BRAINSTools v5.8.0 (checked by running it), so in practice progress moves
    per run and phase; iteration lines are used when a build prints them. A phase "(1 of n)" after
    the first one starts the next run.
    """

    _PHASE = re.compile(r"Starting Transform Estimations for (\w+)\((\d+) of (\d+)\)")
    _ITERATION = re.compile(r"^\s*(\d+)\s+[-+0-9.eE]+\s+\[")

    def __init__(self, iterations: Sequence[int]) -> None:
        self._iterations = tuple(max(1, int(n)) for n in iterations) or (1,)
        self._run, self._phase, self._phases = -1, 0, 1

    @property
    def phase(self) -> tuple[int, int]:
        return self._run, self._phase

    def feed(self, line: str) -> tuple[float, str] | None:
        phase = self._PHASE.search(line)
        if phase:
            self._phase, self._phases = int(phase.group(2)) - 1, max(1, int(phase.group(3)))
            if self._phase == 0 or self._run < 0:
                self._run = min(self._run + 1, len(self._iterations) - 1)
            return self._at(0.0), (f"BRAINSFit: level {self._run + 1}/{len(self._iterations)}, "
                                   f"{phase.group(1)} phase ({phase.group(2)} of {self._phases})")
        iteration = self._ITERATION.match(line)
        if iteration and self._run >= 0:
            done = min(1.0, int(iteration.group(1)) / self._iterations[self._run])
            return self._at(done), f"BRAINSFit: level {self._run + 1}, iteration {iteration.group(1)}"
        return None

    def _at(self, within_phase: float) -> float:
        runs = len(self._iterations)
        return (self._run + (self._phase + within_phase) / self._phases) / runs


def brainsfit_messages(lines: Sequence[str]) -> tuple[str, ...]:
    """BRAINSFit's own error sentences: ITK exception descriptions and its argument parser's errors."""
    found: list[str] = []
    for index, line in enumerate(lines):
        text = line.strip()
        if text.startswith("Description:"):
            text = text[len("Description:"):].strip()
            if text.startswith("ITK ERROR: Exception caught during registration"):
                continue  # a wrapper; the description that follows says what happened
        elif text.startswith("PARSE ERROR"):
            following = next((ln.strip() for ln in lines[index + 1:] if ln.strip()), "")
            text = f"{text} {following}".strip()
        elif not text.startswith(("ERROR:", "Error:")):
            continue
        if text and text not in found:
            found.append(text)
    return tuple(found)


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
        try:
            found = self._find_executable()
        except EngineUnavailableError as exc:
            return Availability(False, str(exc))
        if found is None:
            return Availability(
                False,
                f"no {EXECUTABLE_NAME} executable found (looked at the explicit setting, ${ENV_VAR}, the "
                "search folders and PATH)",
            )
        return Availability(True, f"{EXECUTABLE_NAME} executable {str(found)!r}")

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

    def commands(self, program: Path, request: EngineRequest, files: EngineFiles, work: Path,
                 options: RunOptions) -> tuple[ProgramCommand, ...]:
        levels = brainsfit_levels(request.preset, request.fixed.GetSpacing())
        commands, start = [], files.initial_transform
        for index, level in enumerate(levels):
            last = index == len(levels) - 1
            output = OUTPUT_TRANSFORM if last else f"level_{index + 1}_transform.txt"
            run_files = replace(files, fixed=_level_image(request.fixed, files.fixed, level, request, work),
                                moving=_level_image(request.moving, files.moving, level, request, work),
                                initial_transform=start)
            # After the first run the start is that run's result: affine once an affine phase ran.
            rigid_start = None if index == 0 else request.transform_kind == "rigid"
            args = build_command_line(program, build_parameters(
                request, run_files, level=level, start_is_rigid=rigid_start, threads=options.threads,
                linear_transform=output))
            commands.append(ProgramCommand(arguments=tuple(args), label=EXECUTABLE_NAME,
                                           shown="$ " + shlex.join(args)))
            start = output
        return tuple(commands)

    def progress_parser(self, request: EngineRequest) -> ProgressParser:
        return ProgressParser([level.iterations for level in brainsfit_levels(request.preset,
                                                                              request.fixed.GetSpacing())])

    def explain_failure(self, error: EngineError, log: Sequence[str], work: Path) -> EngineError:
        said = brainsfit_messages(log)
        message = str(error).splitlines()[0] + (" BRAINSFit says: " + " | ".join(said) if said else "")
        # After a parse error BRAINSFit prints its whole usage: its own sentences are the useful tail.
        return EngineError(message, log_tail=said or error.log_tail)

    def read_result(self, request: EngineRequest, work: Path, log: Sequence[str]) -> sitk.Transform:
        return _read_result(work / OUTPUT_TRANSFORM, request, log)


def _level_image(image: sitk.Image, name: str, level: BrainsFitLevel, request: EngineRequest,
                 work: Path) -> str:
    """The file of ``image`` at ``level``: smoothed (sigma in mm), then shrunk per axis by block means."""
    factors = level_factors(image, level, request.fixed.GetSpacing())
    if level.sigma_mm <= 0.0 and all(f == 1 for f in factors):
        return name
    smoothed = to_float32(image)
    if level.sigma_mm > 0.0:
        smoothed = sitk.SmoothingRecursiveGaussian(smoothed, float(level.sigma_mm))
    stem = name.rsplit(".", 1)[0]
    level_name = f"{stem}_shrink{level.shrink}.nrrd"
    # BinShrink (block means, centred): ShrinkImageFilter's subsampling labels an even-sized image
    # half an input voxel off (checked on a ramp image; elastix's recursive pyramid shows the same).
    write_image(sitk.BinShrink(smoothed, list(factors)), work / level_name, compress=False)
    return level_name


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
