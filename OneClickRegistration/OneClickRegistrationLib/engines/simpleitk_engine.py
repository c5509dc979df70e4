"""The embedded engine: SimpleITK's ImageRegistrationMethod, always available (Slicer bundles it).

The preset's pyramid is run level by level (one ``Execute`` per level) so each level gets its own
iteration budget and progress can be reported per level; cancel stops the optimizer from its
iteration callback.
"""

from __future__ import annotations

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

# Largest optimizer step (mm, thanks to physical-shift scales) at full resolution; coarser levels
# take proportionally larger steps.
_MAX_STEP_MM = 2.0
_MIN_STEP_MM = 1e-3
_MAX_SAMPLES = 20_000
_ALL_VOXELS_BELOW = 200_000
_SAMPLING_SEED = 20261121  # fixed: the same inputs give the same result


@dataclass(frozen=True)
class LevelPlan:
    """One pyramid level of the SimpleITK registration, as built from the preset."""

    shrink: int
    sigma_mm: float
    iterations: int
    max_step_mm: float
    sampling_fraction: float


def plan_levels(request: EngineRequest) -> tuple[LevelPlan, ...]:
    """The per-level settings (pure; tested without running a registration)."""
    preset = request.preset
    shrinks = level_shrink_factors(preset, request.fixed.GetSpacing())
    finest = min(request.fixed.GetSpacing())
    voxels = float(np.prod(request.fixed.GetSize()))
    plans: list[LevelPlan] = []
    for s, sigma, n in zip(shrinks, preset.smoothing_sigmas_mm, preset.iterations):
        step = _MAX_STEP_MM * max(1.0, 0.5 * s * finest)
        if plans:
            # Each level refines the previous one: its first step is at most half the previous
            # level's. Without this, coarse images (6 mm voxels, every level at full resolution)
            # restarted every level with 6 mm steps and walked away from the answer.
            step = min(step, plans[-1].max_step_mm / 2)
        plans.append(LevelPlan(
            shrink=s,
            sigma_mm=float(sigma),
            iterations=int(n),
            max_step_mm=step,
            # Coarse levels use every voxel: ITK draws random samples once per level, and a fixed
            # small sample set traps the optimizer in local optima (measured on thick-slice FLAIR).
            # Fine levels use the preset's share of voxels, capped, because past a few tens of
            # thousands of samples the gradient is no better, only slower.
            sampling_fraction=(1.0 if voxels / s**3 <= _ALL_VOXELS_BELOW
                               else min(preset.sampling_fraction, _MAX_SAMPLES / (voxels / s**3))),
        ))
    return tuple(plans)


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
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()


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
        for index, level in enumerate(levels):
            check_cancel(options, self.name)
            method = sitk.ImageRegistrationMethod()
            _configure(method, request)
            if level.sampling_fraction < 1.0:
                method.SetMetricSamplingStrategy(method.RANDOM)
                method.SetMetricSamplingPercentage(level.sampling_fraction, _SAMPLING_SEED)
            else:
                method.SetMetricSamplingStrategy(method.NONE)
            method.SetShrinkFactorsPerLevel([level.shrink])
            method.SetSmoothingSigmasPerLevel([level.sigma_mm])
            method.SetOptimizerAsRegularStepGradientDescent(
                learningRate=level.max_step_mm,
                minStep=_MIN_STEP_MM,
                numberOfIterations=level.iterations,
                relaxationFactor=0.5,
                gradientMagnitudeTolerance=1e-8,
            )
            method.SetOptimizerScalesFromPhysicalShift()
            method.SetInitialTransform(transform, inPlace=False)
            if options.threads:
                method.SetNumberOfThreads(options.threads)
            cancelled = False
            base = done
            # An exception must not cross SimpleITK's C++ frames (it is printed and becomes "There
            # was an error executing the Python Callable"): the callback keeps it, stops the
            # optimizer, and it is raised below. Signals are held meanwhile (see interrupts.py).
            stopped_by: list[BaseException] = []
            signals: list[int] = []

            def on_iteration(
                method: sitk.ImageRegistrationMethod = method, base: int = base, index: int = index,
                stopped_by: list[BaseException] = stopped_by, signals: list[int] = signals,
            ) -> None:
                nonlocal cancelled
                try:
                    iteration = method.GetOptimizerIteration()
                    report(
                        options,
                        (base + iteration) / total,
                        f"SimpleITK level {index + 1}/{len(levels)}, iteration {iteration}",
                    )
                    if signals or (options.cancel is not None and options.cancel()):
                        cancelled = True
                        method.StopRegistration()
                except BaseException as exc:  # Ctrl-C / SIGTERM (interrupts.py) or a progress error
                    stopped_by.append(exc)
                    method.StopRegistration()

            method.AddCommand(sitk.sitkIterationEvent, on_iteration)
            try:
                with deferred(signals):  # a held Ctrl-C/SIGTERM is raised when Execute returns
                    result = method.Execute(request.fixed, request.moving)
            except RuntimeError as exc:
                if stopped_by:
                    raise stopped_by[0] from None
                raise EngineError(
                    f"SimpleITK registration failed at level {index + 1}: "
                    f"{str(exc).strip().splitlines()[-1]}",
                    log_tail=tuple(log[-10:]),
                ) from None
            if stopped_by:
                raise stopped_by[0]
            if cancelled:
                check_cancel(options, self.name)
            transform = _unwrap(result)
            value = method.GetMetricValue()
            log.append(
                f"level {index + 1}: shrink {level.shrink}, sigma {level.sigma_mm} mm, "
                f"{method.GetOptimizerIteration()} iterations, metric {value:.6g}; "
                f"{method.GetOptimizerStopConditionDescription()}"
            )
            done += level.iterations
        report(options, 1.0, "SimpleITK registration done")
        if not np.all(np.isfinite(transform.GetParameters())):
            raise EngineError(
                "SimpleITK returned a transform with non-finite parameters.", log_tail=tuple(log)
            )
        return EngineOutput(transform=transform, log=tuple(log), engine_metric_value=value)


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
