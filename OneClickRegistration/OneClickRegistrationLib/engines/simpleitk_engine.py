"""The embedded engine: SimpleITK's ImageRegistrationMethod, always available (Slicer bundles it).

The engine builds its own image pyramid and runs the optimizer on it level by level, the way
elastix does:

* Each level's images are smoothed and resampled per axis to the level's physical voxel size, with
  the first voxel centred on the first block of voxels it replaces, so a coarse level never shifts
  the image (ITK's isotropic shrink would reduce 5 mm CT slices to a handful along z).
* Each level runs in short rounds of gradient descent, each round on a fresh random sample of
  voxels (a different but fixed seed per round) and with a fixed step length that shrinks
  geometrically from round to round. Like elastix's adaptive stochastic gradient descent (new
  samples every iteration, decaying gain), this keeps one unlucky sample set from holding the
  optimizer in a false optimum while each metric evaluation stays cheap, and the schedule, not the
  noisy gradient's size, decides how far it moves. The finest level's result is the mean of its
  later rounds' ends.

Cancel stops the optimizer from its iteration callback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import EngineError
from ..interrupts import deferred
from ..presets import level_shrink_factors
from ..transforms import as_affine, as_euler
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
from .external_program import binary_mask

# Optimizer steps, in units of the level's voxel size (physical-shift scales make a step a
# displacement in mm): the first level starts with one voxel; later levels refine, so they start
# with a quarter of theirs; each level ends at a small share of its voxel size.
_FIRST_STEP_PER_VOXEL = 1.0
_REFINE_STEP_PER_VOXEL = 0.25
_LAST_STEP_PER_VOXEL = 0.05
_FINEST_LAST_STEP_PER_VOXEL = 0.02
_ROUND_ITERATIONS = 20
# Rounds per level at least (first, middle, finest): the schedule this engine was measured with.
# Presets may give fewer iterations (tuned for elastix); fewer rounds decay the step too fast and
# leave too few finest rounds to average.
_MIN_ROUNDS = (10, 5, 5)
_FINEST_ROUND_ITERATIONS = 10
_SAMPLES_PER_ROUND = 8192
_FINEST_SAMPLES_PER_ROUND = 32768
_SAMPLING_SEED = 20261121  # fixed: the same inputs give the same result
# Smoothing below this share of an axis' spacing changes nothing worth computing.
_NEGLIGIBLE_SIGMA_PER_SPACING = 0.25


@dataclass(frozen=True)
class LevelPlan:
    """One pyramid level of the SimpleITK registration, as built from the preset."""

    target_spacing_mm: float
    fixed_factors: tuple[int, int, int]
    moving_factors: tuple[int, int, int]
    sigma_mm: float
    round_steps_mm: tuple[float, ...]  # every step of a round has this length (mm)
    round_iterations: int
    samples_per_round: int

    @property
    def max_step_mm(self) -> float:
        return self.round_steps_mm[0]

    @property
    def iterations(self) -> int:
        return self.round_iterations * len(self.round_steps_mm)


def axis_factors(spacing: Sequence[float], target_mm: float) -> tuple[int, int, int]:
    """Per-axis shrink factors that bring each axis close to ``target_mm`` (never below 1)."""
    return tuple(max(1, round(target_mm / s)) for s in spacing)  # type: ignore[return-value]


def round_steps(first_mm: float, last_mm: float, rounds: int) -> tuple[float, ...]:
    """Step lengths decaying geometrically from ``first_mm`` to ``last_mm`` over ``rounds`` rounds."""
    if rounds <= 1:
        return (first_mm,)
    ratio = (last_mm / first_mm) ** (1.0 / (rounds - 1))
    return tuple(first_mm * ratio**r for r in range(rounds))


def plan_levels(request: EngineRequest) -> tuple[LevelPlan, ...]:
    """The per-level settings (pure; tested without running a registration).

    The preset's iterations per level are split into rounds, with at least ``_MIN_ROUNDS`` per level.
    """
    preset = request.preset
    fixed_spacing = request.fixed.GetSpacing()
    finest = min(fixed_spacing)
    shrinks = level_shrink_factors(preset, fixed_spacing)
    plans: list[LevelPlan] = []
    for index, (s, sigma, n) in enumerate(zip(shrinks, preset.smoothing_sigmas_mm, preset.iterations)):
        target = s * finest
        if plans:
            # Each level refines the previous one: its first step is at most half the previous
            # level's. Without this, coarse images (6 mm voxels, every level at full resolution)
            # restarted every level with 6 mm steps and walked away from the answer.
            first = min(_REFINE_STEP_PER_VOXEL * target, plans[-1].max_step_mm / 2)
        else:
            first = _FIRST_STEP_PER_VOXEL * target
        last_level = index == len(shrinks) - 1
        last = (_FINEST_LAST_STEP_PER_VOXEL if last_level else _LAST_STEP_PER_VOXEL) * target
        per_round = _FINEST_ROUND_ITERATIONS if last_level else _ROUND_ITERATIONS
        least = _MIN_ROUNDS[0] if index == 0 else (_MIN_ROUNDS[2] if last_level else _MIN_ROUNDS[1])
        rounds = max(least, round(int(n) / per_round))
        plans.append(LevelPlan(
            target_spacing_mm=target,
            fixed_factors=axis_factors(fixed_spacing, target),
            moving_factors=axis_factors(request.moving.GetSpacing(), target),
            sigma_mm=float(sigma),
            round_steps_mm=round_steps(first, min(first, last), rounds),
            round_iterations=per_round,
            samples_per_round=_FINEST_SAMPLES_PER_ROUND if last_level else _SAMPLES_PER_ROUND,
        ))
    return tuple(plans)


def level_image(image: sitk.Image, factors: Sequence[int], sigma_mm: float) -> sitk.Image:
    """``image`` smoothed by ``sigma_mm`` and resampled to ``factors`` times its spacing, per axis.

    The first output voxel sits at the centre of the block of input voxels it stands for, so the
    level covers the same physical extent and is not shifted by half a coarse voxel.
    """
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    # Per axis: thick slices are not smoothed by a fraction of their own spacing. A discrete kernel,
    # because the recursive Gaussian is inexact below a voxel's width.
    variance = [sigma_mm**2 if sigma_mm > _NEGLIGIBLE_SIGMA_PER_SPACING * step else 0.0 for step in spacing]
    smoothed = sitk.DiscreteGaussian(image, variance=variance, useImageSpacing=True) if any(variance) else image
    f = np.asarray(factors, dtype=int)
    if np.all(f == 1):
        return smoothed
    size = np.maximum(1, np.asarray(image.GetSize()) // f)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=float) + direction @ ((f - 1) / 2.0 * spacing)
    return sitk.Resample(smoothed, [int(n) for n in size], sitk.Transform(), sitk.sitkLinear,
                         tuple(origin), tuple(spacing * f), image.GetDirection(), 0.0, sitk.sitkFloat32)


def _initial_parametric(request: EngineRequest) -> sitk.Transform:
    initial = request.initial_transform
    if request.transform_kind == "affine":
        return as_affine(initial)
    return as_euler(initial)


def _configure(method: sitk.ImageRegistrationMethod, request: EngineRequest) -> None:
    preset = request.preset
    if preset.similarity == "mi":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=preset.histogram_bins)
    else:
        method.SetMetricAsCorrelation()
    method.SetInterpolator(sitk.sitkLinear if preset.interpolation == "linear" else sitk.sitkBSpline)
    if request.fixed_mask is not None:
        method.SetMetricFixedMask(binary_mask(request.fixed_mask, "fixed mask"))
    if request.moving_mask is not None:
        method.SetMetricMovingMask(binary_mask(request.moving_mask, "moving mask"))


class SimpleITKEngine:
    """Adapter for SimpleITK's ImageRegistrationMethod."""

    name = "simpleitk"

    def availability(self) -> Availability:
        return Availability(True, f"SimpleITK {sitk.Version_VersionString()} (embedded)")

    def run(self, request: EngineRequest, options: RunOptions) -> EngineOutput:
        levels = plan_levels(request)
        transform = _initial_parametric(request)
        log: list[str] = [f"SimpleITK {sitk.Version_VersionString()}: {request.preset.describe()}"]
        total = sum(level.iterations for level in levels)
        done = 0
        value = float("nan")
        round_index = 0
        for index, level in enumerate(levels):
            check_cancel(options, self.name)
            fixed = level_image(request.fixed, level.fixed_factors, level.sigma_mm)
            moving = level_image(request.moving, level.moving_factors, level.sigma_mm)
            used = 0
            ends: list[sitk.Transform] = []
            for step in level.round_steps_mm:
                transform, value, iterations = self._round(
                    request, options, fixed, moving, transform,
                    step_mm=step, iterations=level.round_iterations, samples=level.samples_per_round,
                    seed=_SAMPLING_SEED + round_index, progress=(done + used, total),
                    where=f"level {index + 1}/{len(levels)}",
                )
                used += iterations
                round_index += 1
                ends.append(transform)
            if index == len(levels) - 1 and len(ends) >= 3:
                # Each round ends at the optimum of its own sample set, give or take its step; the
                # mean of the later rounds' ends is closer to the optimum of the image than any one.
                transform = _mean_transform(ends[len(ends) // 2:])
            log.append(
                f"level {index + 1}: {level.target_spacing_mm:g} mm voxels (fixed x{level.fixed_factors}, "
                f"moving x{level.moving_factors}), sigma {level.sigma_mm:g} mm, {len(level.round_steps_mm)} "
                f"rounds, steps {level.round_steps_mm[0]:.3g} to {level.round_steps_mm[-1]:.3g} mm, "
                f"{used} iterations, metric {value:.6g}"
            )
            done += level.iterations
        report(options, 1.0, "SimpleITK registration done")
        if not np.all(np.isfinite(transform.GetParameters())):
            raise EngineError(
                "SimpleITK returned a transform with non-finite parameters.", log_tail=tuple(log)
            )
        return EngineOutput(transform=transform, log=tuple(log), engine_metric_value=value)

    def _round(self, request: EngineRequest, options: RunOptions, fixed: sitk.Image, moving: sitk.Image,
               transform: sitk.Transform, *, step_mm: float, iterations: int, samples: int, seed: int,
               progress: tuple[int, int], where: str) -> tuple[sitk.Transform, float, int]:
        """One round: ``iterations`` steps of ``step_mm`` on one random sample of fixed voxels."""
        check_cancel(options, self.name)
        method = sitk.ImageRegistrationMethod()
        _configure(method, request)
        voxels = int(np.prod(fixed.GetSize()))
        # Image gradients by central differences at the sampled points only: ITK's default gradient
        # filter would smooth the whole image again every round, which was slower and, on the
        # finest level, ended 0.1-0.3 mm off where this ends within 0.1 mm (tuning runs).
        method.SetMetricUseFixedImageGradientFilter(False)
        method.SetMetricUseMovingImageGradientFilter(False)
        if samples < voxels:
            method.SetMetricSamplingStrategy(method.RANDOM)
            method.SetMetricSamplingPercentage(samples / voxels, seed)
        else:
            method.SetMetricSamplingStrategy(method.NONE)
        # Every step has the round's length (the learning rate is re-estimated each iteration):
        # the decaying length schedule, not the noisy gradient's size, decides how far it moves.
        method.SetOptimizerAsGradientDescent(
            learningRate=1.0, numberOfIterations=iterations, convergenceMinimumValue=1e-12,
            convergenceWindowSize=10, estimateLearningRate=method.EachIteration,
            maximumStepSizeInPhysicalUnits=step_mm)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(transform, inPlace=False)
        if options.threads:
            method.SetNumberOfThreads(options.threads)
        cancelled = False
        base, total = progress
        # An exception must not cross SimpleITK's C++ frames (it is printed and becomes "There was an
        # error executing the Python Callable"): the callback keeps it, stops the optimizer, and it
        # is raised below. Signals are held meanwhile (see interrupts.py).
        stopped_by: list[BaseException] = []
        signals: list[int] = []

        def on_iteration() -> None:
            nonlocal cancelled
            try:
                iteration = method.GetOptimizerIteration()
                report(options, (base + iteration) / total, f"SimpleITK {where}, iteration {base + iteration}")
                if signals or (options.cancel is not None and options.cancel()):
                    cancelled = True
                    method.StopRegistration()
            except BaseException as exc:  # Ctrl-C / SIGTERM (interrupts.py) or a progress error
                stopped_by.append(exc)
                method.StopRegistration()

        method.AddCommand(sitk.sitkIterationEvent, on_iteration)
        try:
            with deferred(signals):  # a held Ctrl-C/SIGTERM is raised when Execute returns
                result = method.Execute(fixed, moving)
        except RuntimeError as exc:
            if stopped_by:
                raise stopped_by[0] from None
            raise EngineError(
                f"SimpleITK registration failed at {where}: {str(exc).strip().splitlines()[-1]}"
            ) from None
        if stopped_by:
            raise stopped_by[0]
        if cancelled:
            check_cancel(options, self.name)
        return _unwrap(result), method.GetMetricValue(), max(1, method.GetOptimizerIteration())


def _mean_transform(transforms: Sequence[sitk.Transform]) -> sitk.Transform:
    """The parameter-wise mean of nearby transforms of one kind and centre."""
    mean = sitk.Transform(transforms[-1]).Downcast()
    mean.SetParameters(tuple(np.mean([t.GetParameters() for t in transforms], axis=0)))
    return mean


def _unwrap(result: sitk.Transform) -> sitk.Transform:
    """ImageRegistrationMethod returns a composite holding one transform; return that transform."""
    if result.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(result)
        if composite.GetNumberOfTransforms() == 1:
            return composite.GetNthTransform(0).Downcast()
    return result.Downcast()


def create_engine(settings: EngineSettings) -> RegistrationEngine:
    del settings  # nothing to find: SimpleITK is a Python dependency
    return SimpleITKEngine()
