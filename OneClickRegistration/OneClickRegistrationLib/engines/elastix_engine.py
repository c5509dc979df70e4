"""The Elastix engine: the real ``elastix`` executable, run the way SlicerElastix users run it.

Where it is found, in order: an explicit path (``EngineSettings.executable``), ``$ONECLICK_ELASTIX``,
``EngineSettings.search_dirs`` (the Slicer module puts SlicerElastix's bundled ``bin`` folder there),
then ``elastix`` on PATH (Debian's package outside Slicer).

The parameter file is generated from the preset by :func:`parameter_text` (pure, tested as text).
The result is read from elastix's own ``TransformParameters.0.txt`` and converted to the project's
convention (ITK fixed->moving, LPS, centre included) by :func:`transform_from_parameter_file`.
That path works with every elastix version: the Debian 5.0.1 build silently ignores
``WriteITKCompositeTransform`` (checked by running it), so the ITK file cannot be relied upon.

An initial transform is handed to elastix with ``-t0`` as an elastix ``AffineTransform`` parameter
file (never by resampling the moving image, which would lose information); elastix applies it
first, ``T(x) = T_optimized(T_initial(x))``, and the adapter returns that composition flattened into
one Euler3DTransform (rigid) or AffineTransform.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from ..errors import CancelledError, EngineError, EngineTimeoutError, EngineUnavailableError, InputError
from ..images import check_volume, to_float32, write_image, write_text
from ..presets import level_shrink_factors
from ..process_runner import engine_workdir, find_executable, log_tail, run_process
from ..transforms import affine_from_matrix, nearest_rotation, to_matrix
from .base import (
    Availability,
    EngineOutput,
    EngineRequest,
    EngineSettings,
    RegistrationEngine,
    RunOptions,
    check_cancel,
    report,
)

ENGINE_NAME = "elastix"
ENV_VAR = "ONECLICK_ELASTIX"
RESULT_FILE = "TransformParameters.0.txt"
INITIAL_FILE = "InitialTransform.txt"

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
_PARAMETER_LINE = re.compile(r"^\s*\(\s*(\w+)\s*(.*?)\s*\)\s*(?://.*)?$")

ParameterValue = Union[str, int, float, bool]  # evaluated at import: no PEP 604 on Python 3.9
ParameterValues = tuple[ParameterValue, ...]


# ---------------------------------------------------------------------------------------------------
# Parameter files: writing (pure) and reading


def _format_value(value: ParameterValue) -> str:
    if isinstance(value, bool):
        return '"true"' if value else '"false"'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"An elastix parameter must be a finite number; received {value!r}.")
        return repr(value)  # shortest text that reads back to the same double
    return f'"{value}"'


def format_parameters(entries: Sequence[tuple[str, ParameterValues]]) -> str:
    """elastix parameter-file text, one ``(Name value ...)`` line per entry."""
    return "".join(f"({name} {' '.join(_format_value(v) for v in values)})\n" for name, values in entries)


def _parse_token(token: str) -> str | float:
    if token.startswith('"'):
        return token.strip('"')
    try:
        return float(token)
    except ValueError:
        return token


def parse_parameters(text: str) -> dict[str, tuple[str | float, ...]]:
    """Read elastix parameter-file text: ``{name: values}``; quoted values stay strings."""
    parameters: dict[str, tuple[str | float, ...]] = {}
    for line in text.splitlines():
        match = _PARAMETER_LINE.match(line)
        if match is None:
            continue
        parameters[match.group(1)] = tuple(_parse_token(t) for t in shlex.split(match.group(2), posix=False))
    return parameters


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
                     moving_schedule: Sequence[Sequence[int]]) -> list[tuple[str, ParameterValues]]:
    """The recursive pyramid when the preset's sigmas are ITK's rule, else the generic one.

    Both give the preset's smoothing. The recursive pyramid builds each level from the previous
    one and cut elastix's time by about a quarter on 1 mm heads at the same accuracy (tuning runs,
    README); the generic pyramid takes any sigma but smooths the full-resolution image per level.
    """
    fixed = tuple(f for level in fixed_schedule for f in level)
    moving = tuple(f for level in moving_schedule for f in level)
    rule = itk_rule_sigmas(targets_mm, finest_mm)
    if all(abs(s - r) <= 0.25 * finest_mm for s, r in zip(sigmas_mm, rule)):
        return [("FixedImagePyramid", ("FixedRecursiveImagePyramid",)),
                ("MovingImagePyramid", ("MovingRecursiveImagePyramid",)),
                ("FixedImagePyramidSchedule", fixed),
                ("MovingImagePyramidSchedule", moving)]
    return [("FixedImagePyramid", ("FixedGenericImagePyramid",)),
            ("MovingImagePyramid", ("MovingGenericImagePyramid",)),
            ("FixedImagePyramidRescaleSchedule", fixed),
            ("MovingImagePyramidRescaleSchedule", moving),
            # Generic pyramid sigmas are physical (mm), like the preset's.
            ("ImagePyramidSmoothingSchedule", tuple(float(s) for s in sigmas_mm for _ in range(3))),
            ("ComputePyramidImagesPerResolution", (True,))]


def parameter_entries(request: EngineRequest) -> list[tuple[str, ParameterValues]]:
    """The elastix parameters for ``request`` (pure: reads only image geometry and the preset)."""
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
    targets = [s * finest for s in level_shrink_factors(preset, fixed_spacing)]
    fixed_schedule = pyramid_schedule(fixed_spacing, targets)
    moving_schedule = pyramid_schedule(request.moving.GetSpacing(), targets)
    samples = spatial_samples(request.fixed.GetSize(), fixed_schedule, preset.sampling_fraction,
                              mask_voxels=_mask_voxels(request.fixed_mask, request.fixed))
    rigid = request.transform_kind == "rigid"
    order = 1 if preset.interpolation == "linear" else 3
    entries: list[tuple[str, ParameterValues]] = [
        ("FixedInternalImagePixelType", ("float",)),
        ("MovingInternalImagePixelType", ("float",)),
        ("FixedImageDimension", (3,)),
        ("MovingImageDimension", (3,)),
        ("UseDirectionCosines", (True,)),
        ("Registration", ("MultiResolutionRegistration",)),
        ("Transform", ("EulerTransform" if rigid else "AffineTransform",)),
        ("HowToCombineTransforms", ("Compose",)),
        ("AutomaticScalesEstimation", (True,)),
    ]
    if request.initial_transform is None:
        # Only the geometric centres are left to elastix; centre-of-mass starts come from
        # moments_initial_transform, because elastix's CenterOfGravity weighs raw intensities and
        # breaks on negative ones (windowed CT: "Too many samples map outside moving image buffer").
        entries += [
            ("AutomaticTransformInitialization", (True,)),
            ("AutomaticTransformInitializationMethod", ("GeometricalCenter",)),
        ]
    else:
        # The -t0 file already places the moving image; a second initialization would undo it.
        entries.append(("AutomaticTransformInitialization", (False,)))
    if preset.similarity == "mi":
        entries += [("Metric", ("AdvancedMattesMutualInformation",)),
                    ("NumberOfHistogramBins", (int(preset.histogram_bins),))]
    else:
        entries.append(("Metric", ("AdvancedNormalizedCorrelation",)))
    entries.append(("NumberOfResolutions", (levels,)))
    entries += _pyramid_entries(preset.smoothing_sigmas_mm, targets, finest, fixed_schedule, moving_schedule)
    entries += [
        ("Optimizer", ("AdaptiveStochasticGradientDescent",)),
        ("AutomaticParameterEstimation", (True,)),
        # The original (gradient-sampling) step estimate. DisplacementDistribution saved 15% of
        # elastix's time on 1 mm heads but failed 2 of 12 rigid cases on 2.5 mm grids (median TRE
        # 0.69 vs 0.19 mm) and left an affine 1.4 mm off.
        ("ASGDParameterEstimationMethod", ("Original",)),
        # That estimate computes an "exact" gradient per level from 100000 samples by default, about
        # a quarter of elastix's time on 1 mm heads; 20000 gave the same TRE and success on 28
        # tuning cases at 1 and 2.5 mm, in about 20% less time.
        ("NumberOfSamplesForExactGradient", (20000,)),
        # Largest voxel displacement per step, per level: the level's voxel size. elastix's default
        # (the mean input spacing at every level) makes the coarse level crawl, and 25-degree starts
        # then run out of iterations (bench_elastix_peers.py, README).
        ("MaximumStepLength", tuple(float(t) for t in targets)),
        ("MaximumNumberOfIterations", tuple(int(n) for n in preset.iterations)),
        ("ImageSampler", ("RandomCoordinate",)),
        ("NumberOfSpatialSamples", samples),
        ("NewSamplesEveryIteration", (True,)),
        ("MaximumNumberOfSamplingAttempts", (8,)),
        # Fixed seed: the same inputs give the same result.
        ("RandomSeed", (20261121,)),
        ("Interpolator", ("LinearInterpolator" if order == 1 else "BSplineInterpolator",)),
        ("BSplineInterpolationOrder", (order,)),
        ("ResampleInterpolator", ("FinalBSplineInterpolator",)),
        ("FinalBSplineInterpolationOrder", (order,)),
        ("Resampler", ("DefaultResampler",)),
        ("DefaultPixelValue", (float(preset.moving_fill_value),)),
        # The pipeline resamples with the returned transform itself.
        ("WriteResultImage", (False,)),
        ("ResultImageFormat", ("mha",)),
        ("WriteIterationInfo", (False,)),
        # Newer elastix (SlicerElastix's bundle) also writes an ITK transform, handy with keep_temp;
        # the Debian 5.0.1 build ignores both keys, so TransformParameters.0.txt is what we read.
        ("WriteITKCompositeTransform", (True,)),
        ("ITKTransformOutputFileNameExtension", ("tfm",)),
    ]
    if request.fixed_mask is not None or request.moving_mask is not None:
        # The masks mark the region of interest, not the valid voxels: do not shrink them.
        entries.append(("ErodeMask", (False,)))
    return entries


def parameter_text(request: EngineRequest, *, overrides: Mapping[str, str] | None = None) -> str:
    """The elastix parameter file for ``request``.

    ``overrides`` maps a parameter name to raw elastix text for its values (``'"NoSuchMetric"'``),
    replacing or adding that entry; it exists for debugging and for the tests that make elastix fail.
    """
    entries = parameter_entries(request)
    text = format_parameters(entries)
    if overrides:
        lines = [line for line in text.splitlines(keepends=True)
                 if (m := _PARAMETER_LINE.match(line)) is None or m.group(1) not in overrides]
        lines += [f"({name} {raw})\n" for name, raw in overrides.items()]
        text = "".join(lines)
    header = f"// OneClickRegistration: elastix parameters for preset {request.preset.describe()}\n"
    return header + text


def initial_transform_text(transform: sitk.Transform, fixed: sitk.Image) -> str:
    """``transform`` (linear, fixed->moving) as an elastix AffineTransform parameter file for ``-t0``."""
    matrix = to_matrix(transform)
    linear = matrix[:3, :3]
    size, spacing = fixed.GetSize(), fixed.GetSpacing()
    # Around the fixed image centre, like elastix's own transforms (any centre gives the same map).
    center = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in size]))
    translation = matrix[:3, 3] + linear @ center - center
    entries: list[tuple[str, ParameterValues]] = [
        ("Transform", ("AffineTransform",)),
        ("NumberOfParameters", (12,)),
        ("TransformParameters", (*(float(v) for v in linear.ravel()), *(float(v) for v in translation))),
        ("InitialTransformParametersFileName", ("NoInitialTransform",)),
        ("HowToCombineTransforms", ("Compose",)),
        ("FixedImageDimension", (3,)),
        ("MovingImageDimension", (3,)),
        ("FixedInternalImagePixelType", ("float",)),
        ("MovingInternalImagePixelType", ("float",)),
        ("Size", tuple(int(n) for n in size)),
        ("Index", (0, 0, 0)),
        ("Spacing", tuple(float(s) for s in spacing)),
        ("Origin", tuple(float(o) for o in fixed.GetOrigin())),
        ("Direction", tuple(float(d) for d in fixed.GetDirection())),
        ("UseDirectionCosines", (True,)),
        ("CenterOfRotationPoint", tuple(float(c) for c in center)),
    ]
    return format_parameters(entries)


def _numbers(parameters: Mapping[str, tuple[str | float, ...]], name: str, count: int) -> np.ndarray:
    values = parameters.get(name, ())
    if len(values) != count or not all(isinstance(v, float) for v in values):
        raise EngineError(f"elastix's transform file has no valid {name} (expected {count} numbers; "
                          f"received {values!r}).")
    return np.asarray(values, dtype=float)


def _single_matrix(parameters: Mapping[str, tuple[str | float, ...]]) -> np.ndarray:
    """The 4x4 matrix of one elastix transform entry (without its initial transform)."""
    kind = str(parameters.get("Transform", ("",))[0])
    if kind == "TranslationTransform":
        offset = tuple(_numbers(parameters, "TransformParameters", 3))
        return to_matrix(sitk.TranslationTransform(3, offset))
    if kind not in ("EulerTransform", "AffineTransform", "SimilarityTransform"):
        raise EngineError(f"elastix returned a {kind or 'unnamed'} transform; expected a linear one "
                          "(EulerTransform, AffineTransform, SimilarityTransform or TranslationTransform).")
    center = tuple(_numbers(parameters, "CenterOfRotationPoint", 3))
    if kind == "EulerTransform":
        p = _numbers(parameters, "TransformParameters", 6)
        euler = sitk.Euler3DTransform()
        euler.SetCenter(center)
        euler.SetComputeZYX(str(parameters.get("ComputeZYX", ("false",))[0]).lower() == "true")
        euler.SetParameters(tuple(p))
        return to_matrix(euler)
    if kind == "AffineTransform":
        p = _numbers(parameters, "TransformParameters", 12)
        affine = sitk.AffineTransform(3)
        affine.SetCenter(center)
        affine.SetParameters(tuple(p))
        return to_matrix(affine)
    p = _numbers(parameters, "TransformParameters", 7)  # SimilarityTransform
    similarity = sitk.Similarity3DTransform()
    similarity.SetCenter(center)
    similarity.SetParameters(tuple(p))
    return to_matrix(similarity)


def transform_matrix_from_parameter_file(path: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None,
                                         _depth: int = 0) -> np.ndarray:
    """The 4x4 fixed->moving matrix of an elastix transform parameter file, initial transforms included.

    A relative initial-transform file name is looked up beside the file, then in ``base`` (the folder
    elastix ran in, which is what elastix resolved it against).
    """
    file = Path(path)
    if _depth > 16:
        raise EngineError(f"elastix's chain of initial transforms is too long (at {str(file)!r}).")
    if not file.is_file():
        raise EngineError(f"elastix's transform parameter file is missing: {str(file)!r}.")
    parameters = parse_parameters(file.read_text(encoding="utf-8", errors="replace"))
    current = _single_matrix(parameters)
    initial_name = str(parameters.get("InitialTransformParametersFileName", ("NoInitialTransform",))[0])
    if initial_name == "NoInitialTransform":
        return current
    initial_path = Path(initial_name)
    if not initial_path.is_absolute():
        beside = file.parent / initial_path
        initial_path = beside if beside.is_file() or base is None else Path(base) / initial_path
    initial = transform_matrix_from_parameter_file(initial_path, base=base, _depth=_depth + 1)
    how = str(parameters.get("HowToCombineTransforms", ("Compose",))[0])
    if how == "Compose":  # elastix applies the initial transform first
        return current @ initial
    if how == "Add":  # T(x) = T_init(x) + T_cur(x) - x
        return current + initial - np.eye(4) + np.diag([0.0, 0.0, 0.0, 1.0])
    raise EngineError(f"elastix combined its transforms with {how!r}; expected 'Compose' or 'Add'.")


def flatten(matrix: np.ndarray, *, center: Sequence[float], rigid: bool) -> sitk.Transform:
    """One Euler3DTransform (when ``rigid`` and the matrix is a rotation) or AffineTransform."""
    linear = matrix[:3, :3]
    if rigid and np.allclose(linear.T @ linear, np.eye(3), atol=1e-6) and np.linalg.det(linear) > 0:
        rotation = nearest_rotation(linear)
        euler = sitk.Euler3DTransform()
        c = np.asarray(center, dtype=float)
        euler.SetCenter(tuple(c))
        euler.SetMatrix(tuple(rotation.ravel()))
        euler.SetTranslation(tuple(matrix[:3, 3] - c + rotation @ c))
        return euler
    return affine_from_matrix(matrix, tuple(float(c) for c in center))


def transform_from_parameter_file(path: str | os.PathLike[str], *, rigid: bool,
                                  base: str | os.PathLike[str] | None = None) -> sitk.Transform:
    """elastix's result file as one ITK fixed->moving transform, centred where elastix centred it.

    ``base`` is the folder elastix ran in (relative file names in the result are resolved there).
    """
    parameters = parse_parameters(Path(path).read_text(encoding="utf-8", errors="replace"))
    center = parameters.get("CenterOfRotationPoint", (0.0, 0.0, 0.0))
    matrix = transform_matrix_from_parameter_file(path, base=base)
    if not np.all(np.isfinite(matrix)):
        raise EngineError(f"elastix returned a transform with non-finite values ({str(path)!r}).")
    return flatten(matrix, center=[float(c) for c in center], rigid=rigid)


# ---------------------------------------------------------------------------------------------------
# Progress and errors from elastix's log


class ProgressParser:
    """Turns elastix's log lines into a fraction of the whole run (levels weighted by iterations)."""

    def __init__(self, iterations: Sequence[int], *, start: float = 0.05, end: float = 0.95) -> None:
        self._iterations = [max(1, int(n)) for n in iterations]
        self._total = float(sum(self._iterations))
        self._start, self._end = start, end
        self._level = -1
        self.fraction = start

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
        self.fraction = self._start + (self._end - self._start) * done / self._total
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


def moments_initial_transform(request: EngineRequest) -> sitk.Euler3DTransform:
    """A translation matching the intensity centres of mass (inside the masks, when given).

    Intensities are shifted to start at 0 first: mass must be non-negative, and windowed CT has a
    negative background.
    """
    def mass(image: sitk.Image, mask: sitk.Image | None) -> sitk.Image:
        image = to_float32(image)
        lowest = float(np.min(sitk.GetArrayViewFromImage(image)))
        shifted = sitk.ShiftScale(image, -lowest, 1.0)
        if mask is not None:
            inside = sitk.Cast(sitk.NotEqual(sitk.Resample(mask, image, sitk.Transform(),
                                                           sitk.sitkNearestNeighbor, 0), 0), sitk.sitkFloat32)
            shifted = sitk.Multiply(shifted, inside)
        return shifted

    try:
        return sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
            mass(request.fixed, request.fixed_mask), mass(request.moving, request.moving_mask),
            sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS))
    except RuntimeError as exc:  # an empty mask or an all-background image has no centre of mass
        reason = str(exc).strip().splitlines()[-1]
        raise InputError(f"Cannot start from the centres of mass: {reason}") from None


def resolve_initial(request: EngineRequest) -> EngineRequest:
    """The request with its starting transform made explicit where elastix cannot compute it."""
    if request.initial_transform is None and request.preset.initialization == "moments":
        return replace(request, initial_transform=moments_initial_transform(request))
    return request


class ElastixEngine:
    """Adapter for the ``elastix`` command-line program."""

    name = ENGINE_NAME

    def __init__(self, settings: EngineSettings, *,
                 parameter_overrides: Mapping[str, str] | None = None) -> None:
        self._settings = settings
        # Raw parameter replacements (debugging, failure tests); see parameter_text.
        self.parameter_overrides = dict(parameter_overrides or {})

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

    def run(self, request: EngineRequest, options: RunOptions) -> EngineOutput:
        check_volume(request.fixed, role="fixed image")
        check_volume(request.moving, role="moving image")
        executable = self.executable()
        request = resolve_initial(request)
        text = parameter_text(request, overrides=self.parameter_overrides)
        check_cancel(options, self.name)
        kept: list[str] = []
        keep = options.keep_temp
        with engine_workdir(self.name, keep_temp=keep, on_kept=lambda p: kept.append(str(p))) as work:
            report(options, 0.0, "elastix: writing inputs")
            args = self._write_inputs(request, text, work)
            if options.threads:
                args += ["-threads", str(int(options.threads))]
            check_cancel(options, self.name)
            parser = ProgressParser(request.preset.iterations)
            last_percent = [-1]

            def on_line(line: str) -> None:
                step = parser.feed(line)
                # One report per percent: elastix prints thousands of lines.
                if step is not None and int(step[0] * 100) != last_percent[0]:
                    last_percent[0] = int(step[0] * 100)
                    report(options, *step)

            out_dir = work / "out"
            out_dir.mkdir()
            # Every path is relative to the work folder elastix runs in: elastix 5.0 mangles an
            # output folder whose path has a space ("a\ b/out/ does not exist"), and a quote in a
            # path would break the file names it writes into its parameter files.
            command = [str(executable), *args, "-out", "out"]
            try:
                outcome = run_process(command, name="elastix", cwd=work, env=_library_env(executable),
                                      on_line=on_line, cancel=options.cancel, timeout_s=options.timeout_s)
            except (CancelledError, EngineTimeoutError, EngineUnavailableError):
                raise
            except EngineError as exc:
                raise self._failure(str(exc).splitlines()[0], exc.log_tail, out_dir) from None
            result_file = out_dir / RESULT_FILE
            if not result_file.is_file():
                raise self._failure(f"elastix exited normally but wrote no {RESULT_FILE}.", outcome.log,
                                    out_dir)
            report(options, 0.97, "elastix: reading the result")
            transform = transform_from_parameter_file(result_file, rigid=request.transform_kind == "rigid",
                                                      base=work)
            metric = _final_metric(outcome.log)
        report(options, 1.0, "elastix: done")
        log = (f"$ cd {shlex.quote(str(work))} && {' '.join(shlex.quote(a) for a in command)}", *outcome.log)
        return EngineOutput(transform=transform, log=log, engine_metric_value=metric,
                            kept_temp_dir=kept[0] if kept else None)

    def _write_inputs(self, request: EngineRequest, text: str, work: Path) -> list[str]:
        # Uncompressed .mha: elastix reads it fastest, and the folder is deleted anyway. Names are
        # relative to ``work``, where elastix runs (see ``run``).
        def image(img: sitk.Image, name: str) -> str:
            write_image(img, work / name, compress=False)
            return name

        args = ["-f", image(to_float32(request.fixed), "fixed.mha"),
                "-m", image(to_float32(request.moving), "moving.mha")]
        for flag, mask, name in (("-fMask", request.fixed_mask, "fixed_mask.mha"),
                                 ("-mMask", request.moving_mask, "moving_mask.mha")):
            if mask is not None:
                check_volume(mask, role=f"{name[:-4].replace('_', ' ')}")
                binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
                args += [flag, image(binary, name)]
        if request.initial_transform is not None:
            initial = initial_transform_text(request.initial_transform, request.fixed)
            write_text(initial, work / INITIAL_FILE)
            args += ["-t0", INITIAL_FILE]
        write_text(text, work / "parameters.txt")
        args += ["-p", "parameters.txt"]
        return args

    @staticmethod
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
    "ElastixEngine", "ProgressParser", "create_engine", "elastix_messages", "flatten", "format_parameters",
    "initial_transform_text", "parameter_entries", "parameter_text", "parse_parameters", "pyramid_schedule",
    "spatial_samples", "transform_from_parameter_file", "transform_matrix_from_parameter_file",
]
