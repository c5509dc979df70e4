"""The ANTs adapter: ``antsRegistration`` with the arguments SlicerANTs and ANTs' scripts use.

Two runners, chosen automatically, run the very same argument list:

* an ``antsRegistration`` executable: the explicit path in :class:`EngineSettings`, then
  ``$ONECLICK_ANTSREGISTRATION``, then ``settings.search_dirs``, then PATH;
* otherwise the ``antspyx`` wheel's in-process library call ``ants.lib.antsRegistration(args)``,
  run in a child Python process (:mod:`.ants_child`) so it streams its log, can be cancelled and
  timed out (the whole process tree is killed), cannot freeze a GUI and cannot crash the host.

Both go through :func:`~OneClickRegistrationLib.process_runner.run_process`. Every file (inputs,
arguments, ANTs' output transform) lives in the engine's temporary folder, removed afterwards.

ANTs writes ``<prefix>0GenericAffine.mat``: with ``--collapse-output-transforms 1`` it is the whole
linear chain, initial moving transform included, in the ITK resampling convention (fixed point ->
moving point), which is the project's convention as it is.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import EngineError, EngineTimeoutError, EngineUnavailableError, InputError
from ..images import check_volume, to_float32, write_image, write_text, write_transform
from ..presets import Preset, level_shrink_factors
from ..process_runner import engine_workdir, find_executable, log_tail, run_process
from ..transforms import as_affine, as_euler, nearest_rotation, to_matrix
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

ENGINE_NAME = "ants"
PROGRAM = "antsRegistration"
ENV_VAR = "ONECLICK_ANTSREGISTRATION"
OUTPUT_PREFIX = "ants_"
RESULT_SUFFIX = "0GenericAffine.mat"
CHILD_SCRIPT = Path(__file__).with_name("ants_child.py")

# ANTs' --initial-moving-transform [fixed,moving,feature]: 0 = geometric centre of the images,
# 1 = centre of mass of the intensities, 2 = image origins (antsRegistration --help).
INITIALIZATION_FEATURE = {"geometry": 0, "moments": 1}
# The linear-stage gradient step of SlicerANTs' presets and antsRegistrationSyN[Quick].sh.
GRADIENT_STEP = 0.1
# Convergence: stop a level when the slope of the metric over its last 10 iterations is below
# 1e-5. SlicerANTs and ANTs' scripts use 1e-6; on 1 mm heads that only adds iterations (fine level:
# 31 instead of 9) for no measurable gain (mean TRE 0.066 vs 0.067 mm). Each ANTs iteration is a
# gradient plus a golden-section line search (about six metric evaluations), so iterations are dear.
CONVERGENCE_THRESHOLD = "1e-5"
CONVERGENCE_WINDOW = 10
# ANTs takes one sampling percentage per stage, applied at every level. The preset's share is used
# as given unless it would put more than FINE_SAMPLE_BUDGET samples on the finest level (a 1 mm head
# at 10% is a million samples times six evaluations per iteration); it is then lowered, but never
# so far that the coarsest level, which decides the capture range, gets fewer than
# COARSE_SAMPLE_FLOOR samples.
FINE_SAMPLE_BUDGET = 200_000
COARSE_SAMPLE_FLOOR = 8_000
# A fixed seed makes ANTs' regular-grid sampling jitter reproducible: same inputs, same result.
RANDOM_SEED = 20261121
_ORTHONORMAL_TOLERANCE = 1e-4

ArgumentEditor = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class AntsFiles:
    """The files an antsRegistration call reads and the prefix it writes to."""

    fixed: str
    moving: str
    output_prefix: str
    initial_transform: str | None = None
    fixed_mask: str | None = None
    moving_mask: str | None = None


@dataclass(frozen=True)
class AntsLevel:
    """One pyramid level of one stage, as passed to ANTs."""

    iterations: int
    shrink: int
    sigma_mm: float


def _num(value: float) -> str:
    return f"{float(value):g}"


def sampling_percentage(preset: Preset, fixed_size: Sequence[int], levels: Sequence[AntsLevel], *,
                        masked_share: float = 1.0) -> float:
    """ANTs' sampling percentage for this image: the preset's share, bounded by sample counts.

    ``masked_share`` is the share of the fixed image inside its mask (ANTs drops samples outside).
    """
    voxels = float(np.prod([int(n) for n in fixed_size])) * max(masked_share, 1e-6)
    finest = voxels / min(lv.shrink for lv in levels) ** 3
    coarsest = voxels / max(lv.shrink for lv in levels) ** 3
    share = preset.sampling_fraction
    chosen = max(min(share, FINE_SAMPLE_BUDGET / finest), min(share, COARSE_SAMPLE_FLOOR / coarsest))
    return float(min(1.0, chosen))


def _metric(preset: Preset, files: AntsFiles, sampling_fraction: float) -> str:
    sampling = _num(sampling_fraction)
    if preset.similarity == "mi":
        return f"MI[{files.fixed},{files.moving},1,{preset.histogram_bins},Regular,{sampling}]"
    if preset.similarity == "ncc":
        # GC is global (Pearson) correlation: the right model for one modality with a linear
        # intensity relation, at the cost of MI per sample. CC is a neighbourhood correlation whose
        # cost grows with (2r+1)^3 per sample; ANTs uses it for deformable stages. ANTs' own
        # reproducible linear stages (antsRegistrationSyNQuick.sh -y) use GC too. The radius slot
        # is unused by GC and set to 1, as ANTs' scripts do.
        return f"GC[{files.fixed},{files.moving},1,1,Regular,{sampling}]"
    raise InputError(f"The ANTs engine supports similarity 'mi' or 'ncc'; received {preset.similarity!r}.")


def ants_levels(preset: Preset, fixed_spacing: Sequence[float]) -> tuple[AntsLevel, ...]:
    """The pyramid as ANTs runs it: the shared resolution-adapted shrink factors of the preset."""
    shrinks = level_shrink_factors(preset, tuple(fixed_spacing))
    if not (len(shrinks) == len(preset.smoothing_sigmas_mm) == len(preset.iterations)):
        raise InputError(
            f"Preset {preset.name!r} must give one shrink factor, smoothing sigma and iteration count "
            f"per level; received {len(shrinks)}, {len(preset.smoothing_sigmas_mm)} and "
            f"{len(preset.iterations)}."
        )
    levels = [AntsLevel(int(n), int(s), float(sigma))
              for n, s, sigma in zip(preset.iterations, shrinks, preset.smoothing_sigmas_mm)]
    if len(levels) > 1 and levels[-1].shrink == 1 and levels[-2].shrink <= 2:
        # A full-resolution finest level right after a level at most 2x coarser runs 0 iterations,
        # as in ANTs' own scripts (antsRegistrationSyNQuick.sh: "...x0") and SlicerANTs' presets.
        # Measured in bench_ants_peers.py on 1 mm heads: the same error (median 0.037-0.050 mm vs
        # 0.032-0.045 mm) in 0.39-0.60x the time, because each ANTs iteration at full resolution is
        # a line search over the whole sample set.
        last = levels[-1]
        levels[-1] = AntsLevel(0, last.shrink, last.sigma_mm)
    return tuple(levels)


def stage_transforms(transform_kind: str) -> tuple[str, ...]:
    """ANTs transform of each stage: an affine run is customarily a rigid stage then an affine one."""
    stages = {"rigid": ("Rigid",), "affine": ("Rigid", "Affine")}
    if transform_kind not in stages:
        raise InputError(f"transform_kind must be 'rigid' or 'affine'; received {transform_kind!r}.")
    return stages[transform_kind]


def build_arguments(preset: Preset, files: AntsFiles, *, transform_kind: str,
                    levels: Sequence[AntsLevel], sampling_fraction: float | None = None,
                    random_seed: int = RANDOM_SEED) -> list[str]:
    """The antsRegistration argument list (pure: no file is read or written).

    ``sampling_fraction`` defaults to the preset's (see :func:`sampling_percentage`).
    """
    sampling = preset.sampling_fraction if sampling_fraction is None else sampling_fraction
    if not 0.0 < sampling <= 1.0:
        raise InputError(f"The sampling fraction must be in (0, 1]; received {sampling!r}.")
    if not levels:
        raise InputError(f"Preset {preset.name!r} has no pyramid level.")
    if files.initial_transform is not None:
        initial = files.initial_transform
    else:
        if preset.initialization not in INITIALIZATION_FEATURE:
            raise InputError(f"Unknown initialization {preset.initialization!r}; expected one of "
                             f"{', '.join(INITIALIZATION_FEATURE)}.")
        initial = f"[{files.fixed},{files.moving},{INITIALIZATION_FEATURE[preset.initialization]}]"
    low, high = preset.winsorize
    args = [
        "--dimensionality", "3",
        "--float", "1",
        "--verbose", "1",  # the library prints its progress only when verbose
        "--random-seed", str(int(random_seed)),
        "--collapse-output-transforms", "1",
        "--write-composite-transform", "0",
        "--output", files.output_prefix,
        "--interpolation", "Linear" if preset.interpolation == "linear" else "BSpline[3]",
        # Across modalities histogram matching is wrong, and a same-modality pair optimizes GC,
        # which is invariant to linear intensity changes anyway.
        "--use-histogram-matching", "0",
        "--winsorize-image-intensities", f"[{_num(low)},{_num(high)}]",
        "--initial-moving-transform", initial,
    ]
    iterations = "x".join(str(lv.iterations) for lv in levels)
    convergence = f"[{iterations},{CONVERGENCE_THRESHOLD},{CONVERGENCE_WINDOW}]"
    shrink = "x".join(str(lv.shrink) for lv in levels)
    sigmas = "x".join(_num(lv.sigma_mm) for lv in levels) + "mm"
    for transform in stage_transforms(transform_kind):
        args += [
            "--transform", f"{transform}[{_num(GRADIENT_STEP)}]",
            "--metric", _metric(preset, files, sampling),
            "--convergence", convergence,
            "--shrink-factors", shrink,
            "--smoothing-sigmas", sigmas,
        ]
    if files.fixed_mask is not None or files.moving_mask is not None:
        # Given once, the masks apply to every stage; "NA" tells ANTs there is no mask on that side.
        args += ["--masks", f"[{files.fixed_mask or 'NA'},{files.moving_mask or 'NA'}]"]
    return args


# --- progress from ANTs' log -------------------------------------------------------------------

_STAGE_LINE = re.compile(r"\*\*\* Running (\w+) registration \*\*\*")
_LEVEL_HEADER = re.compile(r"^\s*DIAGNOSTIC,Iteration,")
_ITERATION_LINE = re.compile(r"^\s*\d*DIAGNOSTIC,\s*(\d+),\s*([-+0-9.eE]+|nan|inf)")
_ANTS_ERROR = re.compile(r"(error|exception|does not exist|not recognized|failed)", re.IGNORECASE)


class ProgressParser:
    """Turns ANTs' verbose log into a fraction of the work done.

    ANTs announces each stage ("*** Running Euler3DTransform registration ***"), each pyramid level
    (a "DIAGNOSTIC,Iteration,..." header) and each iteration ("2DIAGNOSTIC, 17, <metric>, ...").
    A level's share of the work is its iteration budget times its voxel count (1/shrink^3), so the
    fine level, where the time goes, gets most of the bar.
    """

    def __init__(self, stages: Sequence[str], levels: Sequence[AntsLevel]) -> None:
        self.stages = tuple(stages)
        self.levels = tuple(levels)
        weights = [lv.iterations / float(lv.shrink) ** 3 for lv in levels]
        total = sum(weights) or 1.0
        self._weights = [w / total for w in weights]
        self.stage = -1
        self.level = -1
        self.iteration = 0
        self.metric_value: float | None = None

    def feed(self, line: str) -> tuple[float, str] | None:
        """Update from one log line; returns (fraction, message) when the progress moved."""
        if _STAGE_LINE.search(line):
            self.stage = min(self.stage + 1, len(self.stages) - 1)
            self.level, self.iteration = -1, 0
            return self.fraction(), self.message()
        if _LEVEL_HEADER.match(line):
            self.stage = max(self.stage, 0)
            self.level = min(self.level + 1, len(self.levels) - 1)
            self.iteration = 0
            return self.fraction(), self.message()
        match = _ITERATION_LINE.match(line)
        if match:
            self.iteration = int(match.group(1))
            self.metric_value = float(match.group(2))  # the pattern admits only numbers, nan, inf
            return self.fraction(), self.message()
        return None

    def fraction(self) -> float:
        if self.stage < 0:
            return 0.0
        done_levels = sum(self._weights[: max(self.level, 0)])
        current = 0.0
        if self.level >= 0:
            budget = max(1, self.levels[self.level].iterations)
            current = self._weights[self.level] * min(1.0, self.iteration / budget)
        return (self.stage + done_levels + current) / len(self.stages)

    def message(self) -> str:
        if self.stage < 0:
            return "ANTs is starting"
        text = f"ANTs {self.stages[self.stage].lower()} stage {self.stage + 1}/{len(self.stages)}"
        if self.level >= 0:
            text += f", level {self.level + 1}/{len(self.levels)}"
            if self.iteration:
                text += f", iteration {self.iteration}"
        return text


# --- result ------------------------------------------------------------------------------------

def result_transform(path: str | os.PathLike[str], *, transform_kind: str) -> sitk.Transform:
    """Read ANTs' output and flatten it to one Euler3DTransform (rigid) or AffineTransform.

    A rigid run whose result is not a rotation (an affine initial transform was given) stays an
    AffineTransform rather than being silently projected onto a rotation.
    """
    try:
        transform = sitk.ReadTransform(os.fspath(path))
        matrix = to_matrix(transform)
    except (RuntimeError, InputError) as exc:  # a truncated or foreign file: ANTs' fault, not the user's
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"ANTs wrote a transform file that cannot be read as a linear ITK transform "
                          f"({os.fspath(path)!r}): {reason}") from None
    if not np.all(np.isfinite(matrix)):
        raise EngineError(f"ANTs wrote a transform with non-finite values: {os.fspath(path)!r}.")
    linear = matrix[:3, :3]
    is_rotation = np.allclose(linear, nearest_rotation(linear), atol=_ORTHONORMAL_TOLERANCE)
    if transform_kind == "rigid" and is_rotation:
        return as_euler(transform)
    return as_affine(transform)


def zero_based(image: sitk.Image) -> sitk.Image:
    """A float32 copy whose darkest voxel is 0.

    ANTs' centre-of-mass initialization weights voxels by intensity, so a windowed CT whose air sits
    at -100 HU pulls the "centre" away from the head (measured: 245 mm off, then a failed run).
    Shifting intensities changes neither MI nor GC nor the winsorizing quantiles.
    """
    image = to_float32(image)
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    low = stats.GetMinimum()
    return image if low == 0.0 else sitk.ShiftScale(image, -low, 1.0)


def _share_inside(mask: sitk.Image | None) -> float:
    if mask is None:
        return 1.0
    values = sitk.GetArrayViewFromImage(mask)
    return float(np.count_nonzero(values)) / max(1, values.size)


def _mask_for_ants(mask: sitk.Image, role: str) -> sitk.Image:
    check_volume(mask, role=role)
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise InputError(f"The {role} is empty (no non-zero voxel); a mask must select the region to align.")
    return binary


def _antspyx_version() -> str | None:
    if find_spec("ants") is None:
        return None
    try:
        return version("antspyx")
    except PackageNotFoundError:
        return "unknown version"


@dataclass(frozen=True)
class Runner:
    """How antsRegistration will be started."""

    kind: str  # "executable" or "antspyx"
    executable: Path | None
    detail: str

    def command(self, arguments: list[str], arguments_file: Path) -> list[str]:
        if self.executable is not None:
            return [os.fspath(self.executable), *arguments]
        write_text(json.dumps({"arguments": arguments}, indent=1), arguments_file)
        # -u: unbuffered Python output. Started by path, not with -m, so the child needs no package
        # on its sys.path (inside Slicer the package is on the parent's path only).
        return [sys.executable, "-u", os.fspath(CHILD_SCRIPT), os.fspath(arguments_file)]


class AntsEngine:
    """Adapter for ANTs' antsRegistration (executable or antspyx library)."""

    name = ENGINE_NAME

    def __init__(self, settings: EngineSettings | None = None, *,
                 edit_arguments: ArgumentEditor | None = None) -> None:
        self.settings = settings if settings is not None else EngineSettings()
        # For tests and diagnostics only: rewrites the argument list just before the run (e.g. an
        # invalid metric, to check that ANTs' own error message reaches the user).
        self._edit_arguments = edit_arguments

    def runner(self) -> Runner:
        """The runner that would be used now; raises :class:`EngineUnavailableError` if none."""
        executable = find_executable(PROGRAM, explicit=self.settings.executable, env_var=ENV_VAR,
                                     extra_dirs=self.settings.search_dirs)
        if executable is not None:
            return Runner("executable", executable, f"{PROGRAM} executable at {executable}")
        antspyx = _antspyx_version()
        if antspyx is not None:
            return Runner("antspyx", None,
                          f"antspyx {antspyx} (ants.lib.antsRegistration in a child process)")
        raise EngineUnavailableError(
            f"ANTs is not available: no {PROGRAM} executable was found (explicit path, ${ENV_VAR}, "
            f"search folders, PATH) and the antspyx package is not installed. Install it with "
            f"'pip install antspyx' or point ${ENV_VAR} at an {PROGRAM} executable."
        )

    def availability(self) -> Availability:
        try:
            return Availability(True, self.runner().detail)
        except EngineUnavailableError as exc:
            return Availability(False, str(exc))

    def run(self, request: EngineRequest, options: RunOptions) -> EngineOutput:
        stages = stage_transforms(request.transform_kind)
        fixed = check_volume(request.fixed, role="fixed image")
        moving = check_volume(request.moving, role="moving image")
        levels = ants_levels(request.preset, fixed.GetSpacing())
        runner = self.runner()
        check_cancel(options, self.name)
        report(options, 0.0, f"Preparing ANTs ({runner.kind})")
        with engine_workdir(ENGINE_NAME, keep_temp=options.keep_temp) as folder:
            files = self._write_inputs(request, folder, fixed, moving)
            sampling = sampling_percentage(request.preset, fixed.GetSize(), levels,
                                           masked_share=_share_inside(request.fixed_mask))
            arguments = build_arguments(request.preset, files, transform_kind=request.transform_kind,
                                        levels=levels, sampling_fraction=sampling)
            if self._edit_arguments is not None:
                arguments = list(self._edit_arguments(list(arguments)))
            command = runner.command(arguments, folder / "arguments.json")
            parser = ProgressParser(stages, levels)
            log: list[str] = []
            last = [-1.0, -1.0]  # fraction and (stage, level) key of the last report

            def on_line(line: str) -> None:
                log.append(line)
                moved = parser.feed(line)
                if moved is None:
                    return
                # ANTs logs every iteration (hundreds a second on coarse levels); a progress bar
                # needs a report per half percent or per new level only.
                key = parser.stage * 100.0 + parser.level
                if moved[0] - last[0] >= 0.005 or key != last[1]:
                    last[:] = [moved[0], key]
                    report(options, 0.02 + 0.96 * moved[0], moved[1])

            check_cancel(options, self.name)
            try:
                outcome = run_process(command, name=f"{PROGRAM} ({runner.kind})", cwd=folder,
                                      env=self._environment(options), on_line=on_line,
                                      cancel=options.cancel, timeout_s=options.timeout_s)
            except EngineTimeoutError:
                raise
            except EngineError as exc:
                # Put ANTs' own complaint first: its verbose log ends with pages of image headers.
                said = [line.strip() for line in _error_tail(log) if _ANTS_ERROR.search(line)]
                summary = str(exc).splitlines()[0]
                if said:
                    summary += " ANTs said: " + " | ".join(said[-3:])
                raise EngineError(summary, log_tail=_error_tail(log)) from None
            _raise_on_caught_exception(outcome.log, runner.kind)
            result_file = folder / (files.output_prefix + RESULT_SUFFIX)
            if not result_file.is_file():
                raise EngineError(
                    f"{PROGRAM} finished without writing its transform {result_file.name}.",
                    log_tail=_error_tail(outcome.log),
                )
            transform = result_transform(result_file, transform_kind=request.transform_kind)
            kept = os.fspath(folder) if options.keep_temp else None
        report(options, 1.0, "ANTs registration done")
        header = f"{runner.detail}: {PROGRAM} {' '.join(arguments)}"
        return EngineOutput(transform=transform, log=(header, *outcome.log),
                            engine_metric_value=parser.metric_value, kept_temp_dir=kept)

    @staticmethod
    def _write_inputs(request: EngineRequest, folder: Path, fixed: sitk.Image,
                      moving: sitk.Image) -> AntsFiles:
        """Write the inputs into ``folder``; the names returned are relative to it.

        ANTs runs in ``folder``, so its arguments never contain the folder's path: a comma, a bracket
        or a space there would break ANTs' ``MI[fixed,moving,...]`` option syntax.
        """
        # Uncompressed MetaImage: fast to write and read, and keeps the LPS geometry exactly (no
        # NIfTI qform/sform round trip).
        write_image(zero_based(fixed), folder / "fixed.mha", compress=False)
        write_image(zero_based(moving), folder / "moving.mha", compress=False)
        initial = None
        if request.initial_transform is not None:
            # One flattened AffineTransform in ITK's .mat format, the format ANTs itself writes.
            write_transform(as_affine(request.initial_transform), folder / "initial.mat")
            initial = "initial.mat"
        masks: dict[str, str | None] = {"fixed": None, "moving": None}
        for side, mask in (("fixed", request.fixed_mask), ("moving", request.moving_mask)):
            if mask is not None:
                write_image(_mask_for_ants(mask, f"{side} mask"), folder / f"{side}_mask.mha", compress=False)
                masks[side] = f"{side}_mask.mha"
        return AntsFiles(fixed="fixed.mha", moving="moving.mha", output_prefix=OUTPUT_PREFIX,
                         initial_transform=initial, fixed_mask=masks["fixed"], moving_mask=masks["moving"])

    @staticmethod
    def _environment(options: RunOptions) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if options.threads:
            # ITK's thread pool reads this at start-up; both runners honour it.
            env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(options.threads))
        return env


def _raise_on_caught_exception(log: Sequence[str], kind: str) -> None:
    """Fail on an exception ANTs caught inside a linear stage.

    antsRegistration's linear stages catch ITK exceptions, log "Exception caught:", and return
    failure to a caller that ignores it (itkantsRegistrationHelper.hxx, AddLinearTransformTo-
    CompositeTransform): the program then exits 0 and writes the initial transform as if it were
    the result. Seen for real with no overlap ("All samples map outside moving image buffer").
    """
    for index, line in enumerate(log):
        if "Exception caught" in line:
            following = [ln.strip() for ln in log[index + 1: index + 12] if ln.strip()]
            described = [ln for ln in following if ln.startswith("Description:")]
            reason = (described[0].removeprefix("Description:").strip() if described
                      else " ".join(following[:3]))
            raise EngineError(f"{PROGRAM} ({kind}) failed inside a registration stage: {reason}",
                              log_tail=tuple(following))


def _error_tail(log: Sequence[str]) -> tuple[str, ...]:
    """ANTs' error lines if it printed any, else the log's last lines."""
    errors = tuple(line for line in log if _ANTS_ERROR.search(line))
    return errors[-10:] if errors else log_tail(log)


def create_engine(settings: EngineSettings) -> RegistrationEngine:
    return AntsEngine(settings)
