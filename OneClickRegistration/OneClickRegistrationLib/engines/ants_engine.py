"""The ANTs adapter: ``antsRegistration`` with the arguments SlicerANTs and ANTs' scripts use.

Two runners, chosen automatically, run the very same argument list:

* an ``antsRegistration`` executable: the explicit path in :class:`EngineSettings`, then
  ``$ONECLICK_ANTSREGISTRATION``, then ``settings.search_dirs``, then PATH;
* otherwise the ``antspyx`` wheel's in-process library call ``ants.lib.antsRegistration(args)``,
  run in a child Python process (:mod:`.ants_child`) so it streams its log, can be cancelled and
  timed out (the whole process tree is killed), cannot freeze a GUI and cannot crash the host.

Both run through the shared :class:`~.external_program.ExternalProgramEngine` skeleton. Every file
(inputs, arguments, ANTs' output transform) lives in the engine's temporary folder, removed afterwards.

ANTs writes ``<prefix>0GenericAffine.mat``: with ``--collapse-output-transforms 1`` it is the whole
linear chain, initial moving transform included, in the ITK resampling convention (fixed point ->
moving point), which is the project's convention as it is.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import EngineError, EngineUnavailableError, InputError
from ..images import write_text, write_transform
from ..presets import Preset, level_shrink_factors
from ..process_runner import find_executable, log_tail
from ..transforms import as_affine, as_rigid_or_affine
from .base import Availability, EngineRequest, EngineSettings, RegistrationEngine, RunOptions
from .external_program import EngineFiles, ExternalProgramEngine, ProgramCommand

ENGINE_NAME = "ants"
PROGRAM = "antsRegistration"
ENV_VAR = "ONECLICK_ANTSREGISTRATION"
OUTPUT_PREFIX = "ants_"
RESULT_SUFFIX = "0GenericAffine.mat"
CHILD_SCRIPT = Path(__file__).with_name("ants_child.py")

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
# A fixed seed makes ANTs' regular-grid sampling jitter reproducible: with one thread, the same inputs
# give the same result. With more, the order in which the threads' shares of the metric are added
# varies, and so does the result (0.11-0.21 mm mean error over runs of one pair, 0.13 mm with one thread,
# which took 1.5-1.8x as long); the speed is kept and `threads=1` gives reproducibility.
RANDOM_SEED = 20261121
# ANTs computes in float (--float 1), so its result's rotation is orthonormal to about 1e-5 only.
_ORTHONORMAL_TOLERANCE = 1e-4

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


def _metric(preset: Preset, files: EngineFiles, sampling_fraction: float) -> str:
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


def build_arguments(preset: Preset, files: EngineFiles, *, transform_kind: str,
                    levels: Sequence[AntsLevel], sampling_fraction: float | None = None,
                    output_prefix: str = OUTPUT_PREFIX, random_seed: int = RANDOM_SEED) -> list[str]:
    """The antsRegistration argument list (pure: no file is read or written).

    ``sampling_fraction`` defaults to the preset's (see :func:`sampling_percentage`). ANTs starts
    from ``files.initial_transform`` and writes ``<output_prefix>0GenericAffine.mat``.
    """
    sampling = preset.sampling_fraction if sampling_fraction is None else sampling_fraction
    if not 0.0 < sampling <= 1.0:
        raise InputError(f"The sampling fraction must be in (0, 1]; received {sampling!r}.")
    if not levels:
        raise InputError(f"Preset {preset.name!r} has no pyramid level.")
    low, high = preset.winsorize
    args = [
        "--dimensionality", "3",
        "--float", "1",
        "--verbose", "1",  # the library prints its progress only when verbose
        "--random-seed", str(int(random_seed)),
        "--collapse-output-transforms", "1",
        "--write-composite-transform", "0",
        "--output", output_prefix,
        "--interpolation", "Linear" if preset.interpolation == "linear" else "BSpline[3]",
        # Across modalities histogram matching is wrong, and a same-modality pair optimizes GC,
        # which is invariant to linear intensity changes anyway.
        "--use-histogram-matching", "0",
        "--winsorize-image-intensities", f"[{_num(low)},{_num(high)}]",
        "--initial-moving-transform", files.initial_transform,
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

    @property
    def phase(self) -> tuple[int, int]:
        return self.stage, self.level

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
        return as_rigid_or_affine(transform, rigid=transform_kind == "rigid", atol=_ORTHONORMAL_TOLERANCE)
    except (RuntimeError, InputError) as exc:  # a truncated or foreign file: ANTs' fault, not the user's
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"ANTs wrote a transform file that cannot be read as a linear ITK transform with "
                          f"finite values ({os.fspath(path)!r}): {reason}") from None


def _share_inside(mask: sitk.Image | None) -> float:
    if mask is None:
        return 1.0
    values = sitk.GetArrayViewFromImage(mask)
    return float(np.count_nonzero(values)) / max(1, values.size)


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


class AntsEngine(ExternalProgramEngine[Runner]):
    """Adapter for ANTs' antsRegistration (executable or antspyx library)."""

    name = ENGINE_NAME
    label = "ANTs"

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings if settings is not None else EngineSettings()

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

    # --- skeleton hooks ------------------------------------------------------------------------

    def program(self) -> Runner:
        return self.runner()

    def validate(self, request: EngineRequest) -> None:
        stage_transforms(request.transform_kind)
        ants_levels(request.preset, request.fixed.GetSpacing())

    def write_initial_transform(self, request: EngineRequest, work: Path) -> str:
        # One flattened AffineTransform in ITK's .mat format, the format ANTs itself writes.
        write_transform(as_affine(request.initial_transform), work / "initial.mat")
        return "initial.mat"

    def arguments(self, request: EngineRequest, files: EngineFiles) -> list[str]:
        """The antsRegistration arguments for this run (a subclass may adapt them)."""
        levels = ants_levels(request.preset, request.fixed.GetSpacing())
        sampling = sampling_percentage(request.preset, request.fixed.GetSize(), levels,
                                       masked_share=_share_inside(request.fixed_mask))
        return build_arguments(request.preset, files, transform_kind=request.transform_kind, levels=levels,
                               sampling_fraction=sampling)

    def commands(self, program: Runner, request: EngineRequest, files: EngineFiles, work: Path,
                 options: RunOptions) -> tuple[ProgramCommand, ...]:
        arguments = self.arguments(request, files)
        return (ProgramCommand(arguments=tuple(program.command(arguments, work / "arguments.json")),
                               label=f"{PROGRAM} ({program.kind})", env=_environment(options),
                               shown=f"{program.detail}: {PROGRAM} {' '.join(arguments)}"),)

    def progress_parser(self, request: EngineRequest) -> ProgressParser:
        return ProgressParser(stage_transforms(request.transform_kind),
                              ants_levels(request.preset, request.fixed.GetSpacing()))

    def explain_failure(self, error: EngineError, log: Sequence[str], work: Path) -> EngineError:
        # Put ANTs' own complaint first: its verbose log ends with pages of image headers.
        said = [line.strip() for line in _error_tail(log) if _ANTS_ERROR.search(line)]
        summary = str(error).splitlines()[0]
        if said:
            summary += " ANTs said: " + " | ".join(said[-3:])
        return EngineError(summary, log_tail=_error_tail(log))

    def check_log(self, log: Sequence[str], command: ProgramCommand) -> None:
        _raise_on_caught_exception(log, command.label)

    def read_result(self, request: EngineRequest, work: Path, log: Sequence[str]) -> sitk.Transform:
        result_file = work / (OUTPUT_PREFIX + RESULT_SUFFIX)
        if not result_file.is_file():
            raise EngineError(f"{PROGRAM} finished without writing its transform {result_file.name}.",
                              log_tail=_error_tail(log))
        return result_transform(result_file, transform_kind=request.transform_kind)

    def metric_value(self, log: Sequence[str], parser: object) -> float | None:
        return parser.metric_value if isinstance(parser, ProgressParser) else None


def _environment(options: RunOptions) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if options.threads:
        # ITK's thread pool reads this at start-up; both runners honour it.
        env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(options.threads))
    return env


def _raise_on_caught_exception(log: Sequence[str], program: str) -> None:
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
            raise EngineError(f"{program} failed inside a registration stage: {reason}",
                              log_tail=tuple(following))


def _error_tail(log: Sequence[str]) -> tuple[str, ...]:
    """ANTs' error lines if it printed any, else the log's last lines."""
    errors = tuple(line for line in log if _ANTS_ERROR.search(line))
    return errors[-10:] if errors else log_tail(log)


def create_engine(settings: EngineSettings) -> RegistrationEngine:
    return AntsEngine(settings)
