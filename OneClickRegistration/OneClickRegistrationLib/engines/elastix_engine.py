"""The Elastix engine: the real ``elastix`` executable, run the way SlicerElastix users run it.

Where it is found, in order: an explicit path (``EngineSettings.executable``), ``$ONECLICK_ELASTIX``,
``EngineSettings.search_dirs`` (the Slicer module puts SlicerElastix's bundled ``bin`` folder there),
then ``elastix`` on PATH (Debian's package outside Slicer).

The parameter map is built from the preset by :func:`parameter_map` (pure, tested as a mapping);
files are written and read by :mod:`.elastix_parameters`. The run itself is the shared
:class:`~.external_program.ExternalProgramEngine` skeleton.

The initial transform is handed to elastix with ``-t0`` as an elastix ``AffineTransform`` parameter
file (never by resampling the moving image, which would lose information); elastix applies it
first, ``T(x) = T_optimized(T_initial(x))``, and the adapter returns that composition flattened into
one Euler3DTransform (rigid) or AffineTransform.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import EngineError, EngineUnavailableError, InputError
from ..images import MIN_VOXELS_PER_AXIS, write_text
from ..presets import level_shrink_factors
from ..process_runner import find_executable, log_tail, run_process
from .base import Availability, EngineRequest, EngineSettings, RegistrationEngine, RunOptions
from .elastix_parameters import (
    ParameterMap,
    initial_transform_text,
    transform_from_parameter_file,
    write_parameter_file,
)
from .external_program import EngineFiles, ExternalProgramEngine, ProgramCommand

ENGINE_NAME = "elastix"
ENV_VAR = "ONECLICK_ELASTIX"
RESULT_FILE = "TransformParameters.0.txt"
INITIAL_FILE = "InitialTransform.txt"
PARAMETER_FILE = "parameters.txt"
OUTPUT_FOLDER = "out"

# Spatial samples per metric evaluation: the preset's sampling fraction of each level's voxels,
# clamped to this range. ASGD draws fresh samples every iteration, so a 10% share of a 1 mm head
# (10^5-10^6 points) is never needed; but capping at 2048-4096 lost 25-degree CT->T1 starts in tuning
# (12 cases at 1 mm: 11/12 succeeded at 3000 or 4096, 12/12 at 8192), so the cap stays at 8192.
MIN_SPATIAL_SAMPLES = 2048
MAX_SPATIAL_SAMPLES = 8192

_ITERATION_LINE = re.compile(r"^(\d+)\t")
_RESOLUTION_LINE = re.compile(r"^Resolution:\s*(\d+)")
_FINAL_METRIC_LINE = re.compile(r"Final metric value\s*=\s*(\S+)")
_DEFAULT_NOTE = re.compile(r"^(WARNING: The parameter \"\w+\", requested at entry|\s+The default value )")


# ---------------------------------------------------------------------------------------------------
# The parameter map (pure)


def pyramid_schedule(spacing: Sequence[float],
                     target_spacing_mm: Sequence[float]) -> tuple[tuple[int, ...], ...]:
    """Per-level, per-axis shrink factors that bring each axis close to the level's target spacing.

    Per axis, because clinical volumes are anisotropic (5 mm CT slices): shrinking them isotropically
    would leave a handful of slices at the coarse levels.
    """
    return tuple(tuple(max(1, round(target / s)) for s in spacing) for target in target_spacing_mm)


def spatial_samples(size: Sequence[int], schedule: Sequence[Sequence[int]], fraction: float, *,
                    mask_voxels: int | None = None) -> tuple[int, ...]:
    """NumberOfSpatialSamples per level: the preset's fraction of the level's (masked) voxels, clamped."""
    full = int(np.prod(size)) if mask_voxels is None else int(mask_voxels)
    counts = []
    for factors in schedule:
        level_voxels = full / float(np.prod(factors))
        counts.append(int(min(MAX_SPATIAL_SAMPLES, max(MIN_SPATIAL_SAMPLES, round(fraction * level_voxels)))))
    return tuple(counts)


def _mask_voxels(mask: sitk.Image | None, fixed: sitk.Image) -> int | None:
    """How many fixed-image voxels the mask covers (it may lie on another grid)."""
    if mask is None:
        return None
    inside = np.count_nonzero(sitk.GetArrayViewFromImage(mask))
    return round(inside * float(np.prod(mask.GetSpacing())) / float(np.prod(fixed.GetSpacing())))


def itk_rule_sigmas(targets_mm: Sequence[float], finest_mm: float) -> tuple[float, ...]:
    """The smoothing ITK's standard pyramids apply per level: half the level's voxel size, none at 1x."""
    return tuple(0.0 if t <= finest_mm * 1.0001 else 0.5 * t for t in targets_mm)


def _pyramid_entries(sigmas_mm: Sequence[float], targets_mm: Sequence[float], finest_mm: float,
                     fixed_schedule: Sequence[Sequence[int]],
                     moving_schedule: Sequence[Sequence[int]]) -> ParameterMap:
    """The recursive pyramid when the preset's sigmas are ITK's rule, else the generic one.

    Both give the preset's smoothing. The recursive pyramid builds each level from the previous
    one and cut elastix's time by about a quarter on 1 mm heads at the same accuracy (tuning runs,
    README); the generic pyramid takes any sigma but smooths the full-resolution image per level.
    """
    fixed = tuple(f for level in fixed_schedule for f in level)
    moving = tuple(f for level in moving_schedule for f in level)
    rule = itk_rule_sigmas(targets_mm, finest_mm)
    # The recursive pyramid shrinks by subsampling (ITK's ShrinkImageFilter), which labels an
    # even-sized image half an input voxel off; at the finest level that offset stays in the result
    # (-0.25 mm along both in-plane axes of a 0.5 mm moving image under a 1 mm fixed one).
    unshrunk_finest = all(f == 1 for f in (*fixed_schedule[-1], *moving_schedule[-1]))
    if unshrunk_finest and all(abs(s - r) <= 0.25 * finest_mm for s, r in zip(sigmas_mm, rule)):
        return {"FixedImagePyramid": ("FixedRecursiveImagePyramid",),
                "MovingImagePyramid": ("MovingRecursiveImagePyramid",),
                "FixedImagePyramidSchedule": fixed,
                "MovingImagePyramidSchedule": moving}
    return {"FixedImagePyramid": ("FixedGenericImagePyramid",),
            "MovingImagePyramid": ("MovingGenericImagePyramid",),
            "FixedImagePyramidRescaleSchedule": fixed,
            "MovingImagePyramidRescaleSchedule": moving,
            # Generic pyramid sigmas are physical (mm), like the preset's.
            "ImagePyramidSmoothingSchedule": tuple(float(s) for s in sigmas_mm for _ in range(3)),
            "ComputePyramidImagesPerResolution": (True,)}


def level_spacings_mm(request: EngineRequest) -> tuple[float, ...]:
    """The voxel size each pyramid level aims at: the preset's shrink factors times the finest fixed spacing."""
    preset = request.preset
    levels = len(preset.shrink_factors)
    if not (len(preset.smoothing_sigmas_mm) == len(preset.iterations) == levels):
        raise InputError(
            f"The preset {preset.name!r} must give one smoothing sigma and one iteration count per pyramid "
            f"level; received {levels} shrink factors, {len(preset.smoothing_sigmas_mm)} sigmas and "
            f"{len(preset.iterations)} iteration counts."
        )
    fixed_spacing = request.fixed.GetSpacing()
    finest = min(fixed_spacing)
    return tuple(s * finest for s in level_shrink_factors(preset, fixed_spacing))


def finest_level_request(request: EngineRequest) -> EngineRequest:
    """``request`` with each image block-averaged to the grid elastix's finest level works on.

    A 0.5 mm CT under the presets' 1 mm finest level is shrunk at every level anyway; given whole,
    elastix writes, reads and smooths all of it per level (the 512x512x300 CT: 2.7 s of pyramid
    preparation and 3 s in its middle level, of 7.4 s). Averaging blocks (BinShrink) puts each new
    voxel at its block's centre, so no half-voxel shift enters; the finest level saw the image at
    that voxel size anyway. The levels are then computed on the new grids (the same voxel sizes
    when the fine spacing divides 1 mm; a 0.45 mm image's levels move by under a tenth). Masks stay
    as they are: elastix looks them up by physical point.
    """
    targets = level_spacings_mm(request)

    def at_finest_level(image: sitk.Image) -> sitk.Image:
        # Never below MIN_VOXELS_PER_AXIS along an axis: a thin image stays readable.
        factors = [min(f, max(1, n // MIN_VOXELS_PER_AXIS))
                   for f, n in zip(pyramid_schedule(image.GetSpacing(), targets)[-1], image.GetSize())]
        return image if all(f == 1 for f in factors) else sitk.BinShrink(image, factors)

    fixed, moving = at_finest_level(request.fixed), at_finest_level(request.moving)
    if fixed is request.fixed and moving is request.moving:
        return request
    return replace(request, fixed=fixed, moving=moving)


def parameter_map(request: EngineRequest) -> ParameterMap:
    """The elastix parameter map for ``request`` (pure: reads only image geometry and the preset)."""
    preset = request.preset
    levels = len(preset.shrink_factors)
    targets = level_spacings_mm(request)
    fixed_spacing = request.fixed.GetSpacing()
    finest = min(fixed_spacing)
    fixed_schedule = pyramid_schedule(fixed_spacing, targets)
    moving_schedule = pyramid_schedule(request.moving.GetSpacing(), targets)
    samples = spatial_samples(request.fixed.GetSize(), fixed_schedule, preset.sampling_fraction,
                              mask_voxels=_mask_voxels(request.fixed_mask, request.fixed))
    rigid = request.transform_kind == "rigid"
    order = 1 if preset.interpolation == "linear" else 3
    parameters: ParameterMap = {
        "FixedInternalImagePixelType": ("float",),
        "MovingInternalImagePixelType": ("float",),
        "FixedImageDimension": (3,),
        "MovingImageDimension": (3,),
        "UseDirectionCosines": (True,),
        "Registration": ("MultiResolutionRegistration",),
        "Transform": ("EulerTransform" if rigid else "AffineTransform",),
        "HowToCombineTransforms": ("Compose",),
        "AutomaticScalesEstimation": (True,),
        # The -t0 file already places the moving image (the pipeline always gives a start); a
        # second initialization would undo it.
        "AutomaticTransformInitialization": (False,),
    }
    if preset.similarity == "mi":
        parameters["Metric"] = ("AdvancedMattesMutualInformation",)
        parameters["NumberOfHistogramBins"] = (int(preset.histogram_bins),)
    else:
        parameters["Metric"] = ("AdvancedNormalizedCorrelation",)
    parameters["NumberOfResolutions"] = (levels,)
    parameters.update(_pyramid_entries(preset.smoothing_sigmas_mm, targets, finest, fixed_schedule,
                                       moving_schedule))
    parameters.update({
        "Optimizer": ("AdaptiveStochasticGradientDescent",),
        "AutomaticParameterEstimation": (True,),
        # The original (gradient-sampling) step estimate. DisplacementDistribution saved 15% of
        # elastix's time on 1 mm heads but failed 2 of 12 rigid cases on 2.5 mm grids (median TRE
        # 0.69 vs 0.19 mm) and left an affine 1.4 mm off.
        "ASGDParameterEstimationMethod": ("Original",),
        # That estimate computes an "exact" gradient per level from 100000 samples by default, about
        # a quarter of elastix's time on 1 mm heads; 20000 gave the same TRE and success on 28
        # tuning cases at 1 and 2.5 mm, in about 20% less time.
        "NumberOfSamplesForExactGradient": (20000,),
        # Largest voxel displacement per step, per level: the level's voxel size. elastix's default
        # (the mean input spacing at every level) makes the coarse level crawl, and 25-degree starts
        # then run out of iterations (bench_elastix_peers.py, README).
        "MaximumStepLength": tuple(float(t) for t in targets),
        "MaximumNumberOfIterations": tuple(int(n) for n in preset.iterations),
        "ImageSampler": ("RandomCoordinate",),
        "NumberOfSpatialSamples": samples,
        "NewSamplesEveryIteration": (True,),
        "MaximumNumberOfSamplingAttempts": (8,),
        # Fixed seed: the same inputs give the same result.
        "RandomSeed": (20261121,),
        "Interpolator": ("LinearInterpolator" if order == 1 else "BSplineInterpolator",),
        "BSplineInterpolationOrder": (order,),
        "ResampleInterpolator": ("FinalBSplineInterpolator",),
        "FinalBSplineInterpolationOrder": (order,),
        "Resampler": ("DefaultResampler",),
        "DefaultPixelValue": (float(preset.moving_fill_value),),
        # The pipeline resamples with the returned transform itself.
        "WriteResultImage": (False,),
        "ResultImageFormat": ("mha",),
        "WriteIterationInfo": (False,),
        # Newer elastix (SlicerElastix's bundle) also writes an ITK transform, handy with keep_temp;
        # the Debian 5.0.1 build ignores both keys, so TransformParameters.0.txt is what we read.
        "WriteITKCompositeTransform": (True,),
        "ITKTransformOutputFileNameExtension": ("tfm",),
    })
    if request.fixed_mask is not None or request.moving_mask is not None:
        # The masks mark the region of interest, not the valid voxels: do not shrink them.
        parameters["ErodeMask"] = (False,)
    return parameters


# ---------------------------------------------------------------------------------------------------
# Progress and errors from elastix's log


class ProgressParser:
    """Turns elastix's log lines into the fraction of its work done (levels weighted by iterations)."""

    def __init__(self, iterations: Sequence[int]) -> None:
        self._iterations = [max(1, int(n)) for n in iterations]
        self._total = float(sum(self._iterations))
        self._level = -1
        self.fraction = 0.0

    @property
    def phase(self) -> int:
        return self._level

    def feed(self, line: str) -> tuple[float, str] | None:
        """The new (fraction, message) when ``line`` moves the run forward, else None."""
        match = _RESOLUTION_LINE.match(line)
        if match is not None:
            self._level = min(int(match.group(1)), len(self._iterations) - 1)
            return self._at(0, f"elastix: level {self._level + 1}/{len(self._iterations)}")
        match = _ITERATION_LINE.match(line)
        if match is None or self._level < 0:
            return None
        iteration = min(int(match.group(1)) + 1, self._iterations[self._level])
        return self._at(iteration, f"elastix: level {self._level + 1}/{len(self._iterations)}, "
                                   f"iteration {iteration}/{self._iterations[self._level]}")

    def _at(self, iteration: int, message: str) -> tuple[float, str]:
        done = sum(self._iterations[: self._level]) + iteration
        self.fraction = done / self._total
        return self.fraction, message


def elastix_messages(lines: Sequence[str]) -> tuple[str, ...]:
    """elastix's own error sentences from its log: ITK exception descriptions and ERROR lines.

    elastix writes some errors as a bare ``Error:``/``ERROR:`` line followed by the sentence.
    """
    found: list[str] = []
    after_header = False
    for line in lines:
        text = line.strip()
        if text.startswith("Description:"):
            text = text[len("Description:"):].strip()
        elif re.fullmatch(r"(ERROR|Error):?", text):
            after_header = True
            continue
        elif not (after_header or re.match(r"^(ERROR|Error)\b", text)):
            continue
        after_header = False
        text = text.strip()
        if text and text not in ("Errors occurred!",) and text not in found:
            found.append(text)
    return tuple(found)


# ---------------------------------------------------------------------------------------------------
# The adapter


def _library_env(executable: Path) -> dict[str, str] | None:
    """Bundled binaries (SlicerElastix) find their shared libraries in ``../lib``; system ones need none."""
    if sys.platform == "win32":
        return None
    # abspath, not resolve: a bundle's layout is where the program was found, not where links lead.
    folder = Path(os.path.abspath(executable)).parent
    path_dirs = {Path(os.path.abspath(p)) for p in os.environ.get("PATH", "").split(os.pathsep) if p}
    lib_dir = folder.parent / "lib"
    if folder in path_dirs or not lib_dir.is_dir():
        return None
    env = dict(os.environ)
    key = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
    env[key] = os.pathsep.join(p for p in (str(lib_dir), env.get(key, "")) if p)
    return env


class ElastixEngine(ExternalProgramEngine[Path]):
    """Adapter for the ``elastix`` command-line program."""

    name = ENGINE_NAME
    label = "elastix"

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings

    def executable(self) -> Path:
        """The elastix program to run; raises :class:`EngineUnavailableError` when there is none."""
        found = find_executable("elastix", explicit=self._settings.executable, env_var=ENV_VAR,
                                extra_dirs=self._settings.search_dirs)
        if found is None:
            places = ["PATH"] + [repr(d) for d in self._settings.search_dirs]
            raise EngineUnavailableError(
                f"elastix was not found (looked in {', '.join(places)} and ${ENV_VAR}). Install the "
                "SlicerElastix extension in Slicer, or the 'elastix' package (e.g. apt install elastix), "
                f"or set ${ENV_VAR} to the elastix executable."
            )
        return found

    def availability(self) -> Availability:
        try:
            executable = self.executable()
            outcome = run_process([str(executable), "--version"], name="elastix --version",
                                  env=_library_env(executable), timeout_s=30.0)
        except (EngineUnavailableError, EngineError) as exc:
            return Availability(False, str(exc).splitlines()[0])
        version = next((line.split(":", 1)[1].strip() for line in outcome.log if "version" in line.lower()
                        and ":" in line), "")
        if not version:
            return Availability(False, f"{executable} --version did not print an elastix version "
                                       f"(printed {' / '.join(outcome.log[:2])!r}).")
        return Availability(True, f"elastix {version} at {executable}")

    # --- skeleton hooks ------------------------------------------------------------------------

    def program(self) -> Path:
        return self.executable()

    def validate(self, request: EngineRequest) -> None:
        self.parameters(request)  # an inconsistent preset is refused before anything is written

    def parameters(self, request: EngineRequest) -> ParameterMap:
        """The parameter map elastix runs with (a subclass may adapt it with ``dict.update``)."""
        return parameter_map(request)

    def adapt_request(self, request: EngineRequest) -> EngineRequest:
        return finest_level_request(request)

    def write_initial_transform(self, request: EngineRequest, work: Path) -> str:
        write_text(initial_transform_text(request.initial_transform, request.fixed), work / INITIAL_FILE)
        return INITIAL_FILE

    def commands(self, program: Path, request: EngineRequest, files: EngineFiles, work: Path,
                 options: RunOptions) -> tuple[ProgramCommand, ...]:
        write_parameter_file(self.parameters(request), work / PARAMETER_FILE,
                             header=f"OneClickRegistration: elastix parameters for preset "
                                    f"{request.preset.describe()}")
        (work / OUTPUT_FOLDER).mkdir()
        # Every path is relative to the work folder elastix runs in: elastix 5.0 mangles an output
        # folder whose path has a space ("a\\ b/out/ does not exist"), and a quote in a path would
        # break the file names it writes into its parameter files.
        args = [str(program), "-f", files.fixed, "-m", files.moving]
        if files.fixed_mask is not None:
            args += ["-fMask", files.fixed_mask]
        if files.moving_mask is not None:
            args += ["-mMask", files.moving_mask]
        args += ["-t0", files.initial_transform, "-p", PARAMETER_FILE]
        if options.threads:
            args += ["-threads", str(int(options.threads))]
        args += ["-out", OUTPUT_FOLDER]
        shown = f"$ cd {shlex.quote(str(work))} && {' '.join(shlex.quote(a) for a in args)}"
        return (ProgramCommand(arguments=tuple(args), label="elastix", env=_library_env(program), shown=shown),)

    def progress_parser(self, request: EngineRequest) -> ProgressParser:
        return ProgressParser(request.preset.iterations)

    def explain_failure(self, error: EngineError, log: Sequence[str], work: Path) -> EngineError:
        return _failure(str(error).splitlines()[0], error.log_tail, work / OUTPUT_FOLDER)

    def read_result(self, request: EngineRequest, work: Path, log: Sequence[str]) -> sitk.Transform:
        result_file = work / OUTPUT_FOLDER / RESULT_FILE
        if not result_file.is_file():
            raise _failure(f"elastix exited normally but wrote no {RESULT_FILE}.", log, work / OUTPUT_FOLDER)
        return transform_from_parameter_file(result_file, rigid=request.transform_kind == "rigid", base=work)

    def metric_value(self, log: Sequence[str], parser: object) -> float | None:
        return _final_metric(log)


def _failure(what: str, stdout_tail: Sequence[str], out_dir: Path) -> EngineError:
    # elastix warns about every parameter left at its default; those lines would push the error
    # out of the tail.
    tail = log_tail([line for line in stdout_tail if not _DEFAULT_NOTE.match(line)])
    log_file = out_dir / "elastix.log"
    if log_file.is_file():
        # elastix.log mostly repeats the console, but it can hold lines the console lost (a crash).
        file_tail = log_tail(log_file.read_text(encoding="utf-8", errors="replace").splitlines(), 10)
        if not set(file_tail) <= set(tail):
            tail = (*tail, f"--- {log_file.name} (last lines) ---", *file_tail)
    said = elastix_messages(stdout_tail) or elastix_messages(tail)
    message = what + (" elastix says: " + " | ".join(said) if said else "")
    return EngineError(message, log_tail=tail)


def _final_metric(lines: Sequence[str]) -> float | None:
    for line in reversed(lines):
        match = _FINAL_METRIC_LINE.search(line)
        if match is not None:
            try:
                return float(match.group(1))
            except ValueError:
                return None
    return None


def create_engine(settings: EngineSettings) -> RegistrationEngine:
    return ElastixEngine(settings)


__all__ = [
    "ElastixEngine", "ProgressParser", "create_engine", "elastix_messages", "parameter_map", "pyramid_schedule",
    "spatial_samples",
]
