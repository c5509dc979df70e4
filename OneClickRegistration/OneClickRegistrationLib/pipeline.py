"""The one-click pipeline: two volumes in, an aligned result with a score and a verdict out.

``register`` detects the modality pair, looks up its preset, prepares the images, initializes,
runs the first installed engine of the preset (one :class:`~.attempts.Attempt`), scores the result
on the domain intersection and judges it; when the verdict is not ``good`` it tries further
candidates (see :mod:`.recovery`) and keeps the best-scoring attempt. ``judge_transform`` judges a
transform made elsewhere through the same assessment. The caller's images are never modified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk

from . import __version__
from .attempts import Attempt, assess, judged, run_attempt, score_on
from .engines import get_engine
from .engines.base import ProgressCallback, TransformKind
from .errors import CancelledError, EngineError, EngineUnavailableError, raise_if_cancelled
from .images import check_registrable
from .metrics import ScoreResult
from .modality import ModalityEvidence, detect_modality, metadata_from_image
from .options import ImageInfo, RegistrationOptions, from_shortcuts
from .preparation import check_pyramid, initial_alignment, prepare_pair
from .presets import Preset, preset_for
from .recovery import recover
from .side_by_side import side_by_side
from .stage_times import StageTimes
from .transforms import to_matrix
from .verdict import Verdict

FALLBACK_ENGINE = "simpleitk"  # embedded, so one click always has an engine
ENGINE_LOG_TAIL = 20  # engine log lines kept in report.json: enough to see how the engine ended

# The flat, ordered summary of a result (``RegistrationResult.summary``): every tabular rendering
# (report.json's head, the command line's summary, batch CSV rows, the Slicer results table) uses
# these keys in this order.
SUMMARY_FIELDS: tuple[str, ...] = (
    "fixed",
    "moving",
    "fixed_modality",
    "moving_modality",
    "preset",
    "engine",
    "transform_kind",
    "metric",
    "score_before",
    "score_after",
    "verdict",
    "reasons",
    "elapsed_s",
    "status",
    "error",
    "kept_temp_dir",
)


def failure_summary(fixed: str, moving: str, error: str, *, status: str = "error") -> dict[str, Any]:
    """A summary row (same keys as :meth:`RegistrationResult.summary`) for a pair that gave no result."""
    row: dict[str, Any] = dict.fromkeys(SUMMARY_FIELDS)
    row.update(fixed=fixed, moving=moving, status=status, error=error)
    return row


@dataclass(frozen=True)
class RegistrationResult:
    """Everything a registration produced. ``transform`` is ITK fixed->moving (LPS).

    ``log`` is the kept attempt's engine log; ``kept_temp_dirs`` lists the engines' work folders
    kept on request (``keep_temp``), in attempt order.
    """

    transform: sitk.Transform
    registered: sitk.Image
    score_before: ScoreResult
    score_after: ScoreResult
    preset: Preset
    engine: str
    fixed_modality: ModalityEvidence
    moving_modality: ModalityEvidence
    elapsed_s: float
    verdict: Verdict
    attempts: tuple[Attempt, ...] = ()
    log: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    fixed_name: str | None = None
    moving_name: str | None = None
    kept_temp_dirs: tuple[str, ...] = ()
    # Seconds per stage (:data:`~.stage_times.STAGES`); reading and writing when run from files.
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.score_after.metric

    def summary(self) -> dict[str, Any]:
        """The result as one flat, ordered row (keys: :data:`SUMMARY_FIELDS`, in that order)."""
        return {
            "fixed": self.fixed_name or "",
            "moving": self.moving_name or "",
            "fixed_modality": self.fixed_modality.modality.value,
            "moving_modality": self.moving_modality.modality.value,
            "preset": self.preset.name,
            "engine": self.engine,
            "transform_kind": self.preset.transform,
            "metric": self.metric,
            "score_before": self.score_before.value,
            "score_after": self.score_after.value,
            "verdict": self.verdict.label,
            "reasons": "; ".join(self.verdict.reasons),
            "elapsed_s": round(self.elapsed_s, 3),
            "status": "ok",
            "error": "",
            "kept_temp_dir": "; ".join(self.kept_temp_dirs),
        }

    def to_report(self) -> dict[str, Any]:
        """A JSON-ready report (``report.json``): the summary, then the details behind it."""
        return {
            "version": __version__,
            **self.summary(),
            "modality_evidence": {
                "fixed": self.fixed_modality.to_dict(),
                "moving": self.moving_modality.to_dict(),
            },
            "preset_description": self.preset.describe(),
            "score_before_detail": self.score_before.to_dict(),
            "score_after_detail": self.score_after.to_dict(),
            "verdict_reasons": list(self.verdict.reasons),
            "verdict_evidence": dict(self.verdict.evidence),
            "attempts": [a.to_dict() for a in self.attempts],
            "transform_matrix_lps": to_matrix(self.transform).tolist(),
            "notes": list(self.notes),
            "kept_temp_dirs": list(self.kept_temp_dirs),
            "engine_log_tail": list(self.log[-ENGINE_LOG_TAIL:]),
            "timings_s": dict(self.timings_s),
        }


class _Progress:
    """Maps an engine's 0..1 progress into a slice of the whole run, never going backwards."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        if self._callback is None:
            return
        self._last = max(self._last, min(1.0, fraction))
        self._callback(self._last, message)

    def slice(self, start: float, end: float) -> ProgressCallback:
        return lambda f, message: self(start + (end - start) * f, message)


def _resolve_engines(preset: Preset, engine: str | None) -> tuple[str, list[str]]:
    """The engine to run first and the notes saying why; an explicit engine must be available."""
    notes: list[str] = []
    if engine is not None:
        adapter = get_engine(engine)
        availability = adapter.availability()
        if not availability.available:
            raise EngineUnavailableError(
                f"The {adapter.name} engine was requested but is not available: {availability.detail}"
            )
        return adapter.name, notes
    for name in (*preset.engines, FALLBACK_ENGINE):
        availability = get_engine(name).availability()
        if availability.available:
            return name, notes
        notes.append(f"Engine {name} is not available ({availability.detail}); trying the next one.")
    raise EngineUnavailableError("No registration engine is available.")  # unreachable: SimpleITK is embedded


def _recognise(
    fixed: sitk.Image, moving: sitk.Image, fixed_info: ImageInfo, moving_info: ImageInfo, transform: TransformKind
) -> tuple[ModalityEvidence, ModalityEvidence, Preset]:
    """Check both images, recognise their modalities (side by side) and pick the pair's preset."""
    def recognised(image: sitk.Image, role: str, info: ImageInfo) -> ModalityEvidence:
        check_registrable(image, role=role)
        # An image read from DICOM or NIfTI carries its own header: use it when no tags were given.
        tags = info.metadata if info.metadata is not None else metadata_from_image(image)
        return detect_modality(image, name=info.name, metadata=tags, user_choice=info.modality)

    fixed_ev, moving_ev = side_by_side(lambda: recognised(fixed, "fixed image", fixed_info),
                                       lambda: recognised(moving, "moving image", moving_info),
                                       images=((fixed,), (moving,)))
    return fixed_ev, moving_ev, preset_for(fixed_ev.modality, moving_ev.modality, transform=transform)


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    options: RegistrationOptions | None = None,
    fixed_info: ImageInfo | None = None,
    moving_info: ImageInfo | None = None,
    timings: StageTimes | None = None,
    **shortcuts: Any,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` with no question asked.

    ``options`` says how to run (:class:`~.options.RegistrationOptions`); ``fixed_info`` and
    ``moving_info`` what is known about each image (:class:`~.options.ImageInfo`). Keyword shortcuts
    build or override them: ``engine=``, ``transform=``, ``progress=``, ``cancel=``, ... and
    ``fixed_name=``, ``moving_modality=``, ``fixed_mask=``, ... Modalities are detected unless
    given ("T1", "T2", "FLAIR", "CT", "MR"); the engine is the preset's first installed one unless
    given. ``progress(fraction, message)`` is called as work advances; ``cancel()`` returning True
    stops the run (:class:`CancelledError`). Raises the errors of :mod:`.errors`; never modifies
    its inputs. ``timings`` collects the seconds per stage (a caller that also reads and writes
    passes its own); the result's ``timings_s`` holds them.
    """
    start = time.perf_counter()
    times = timings if timings is not None else StageTimes()
    options, fixed_info, moving_info = from_shortcuts(options, fixed_info, moving_info, shortcuts)
    report = _Progress(options.progress)
    report(0.0, "Recognising the modalities")
    with times.stage("recognition"):
        fixed_ev, moving_ev, preset = _recognise(fixed, moving, fixed_info, moving_info, options.transform)
        check_pyramid(fixed, preset, role="fixed image")
        check_pyramid(moving, preset, role="moving image")
        engine_name, notes = _resolve_engines(preset, options.engine)
    raise_if_cancelled(options.cancel)
    report(0.02, f"Preparing the images ({preset.name})")
    with times.stage("preparation"):
        pair = prepare_pair(fixed, moving, preset, fixed_mask=fixed_info.mask, moving_mask=moving_info.mask)
    notes.extend(pair.notes)
    with times.stage("initial_search"):
        initial = (initial_alignment(pair, preset.initialization) if options.initial_transform is None
                   else options.initial_transform)
    with times.stage("scoring"):
        score_before = score_on(pair, None, preset.score_metric)
    report(0.05, f"Registering with {engine_name}")
    run_options = options.run_options(progress=report.slice(0.05, 0.75 if options.recover else 0.92))
    start_label = (f"{preset.initialization} initialization" if options.initial_transform is None
                   else "the given initial transform")
    try:
        first = run_attempt(pair, preset, engine=engine_name, initial=initial, start=start_label,
                            options=run_options, timings=times)
    except CancelledError:
        raise
    except EngineError:
        if options.engine is not None or engine_name == FALLBACK_ENGINE:
            raise
        notes.append(f"Engine {engine_name} failed; the embedded SimpleITK engine was used instead.")
        first = run_attempt(pair, preset, engine=FALLBACK_ENGINE, initial=initial, start=start_label,
                            options=run_options, timings=times)
    with times.stage("verdict"):
        attempts = [judged(first, pair, score_before=score_before)]
    kept = 0
    if options.recover and attempts[0].verdict is not None and attempts[0].verdict.label != "good":
        report(0.75, f"Result {attempts[0].verdict.label}: trying other starting points")
        with times.stage("recovery"):
            attempts.extend(recover(pair, preset, attempts[0], options=options,
                                    progress=report.slice(0.75, 0.92)))
        kept = _best(attempts)
        if kept:
            with times.stage("verdict"):
                attempts[kept] = judged(attempts[kept], pair, score_before=score_before)
            notes.append(f"Recovery kept a better candidate: {attempts[kept].engine} from {attempts[kept].start}.")
    raise_if_cancelled(options.cancel)
    report(0.95, "Resampling the moving image")
    del pair  # its full-size float copies and masks are done with: not beside the registered volume
    result = _result(
        moving, fixed, attempts[kept], score_before=score_before, preset=preset,
        evidence=(fixed_ev, moving_ev), infos=(fixed_info, moving_info), started=start,
        attempts=tuple(attempts), notes=tuple(notes), timings=times,
    )
    report(1.0, f"Done: {result.verdict.label}")
    return result


def judge_transform(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    *,
    fixed_info: ImageInfo | None = None,
    moving_info: ImageInfo | None = None,
    **shortcuts: Any,
) -> RegistrationResult:
    """Score and judge a transform made elsewhere (another tool, or by hand), the same way as ours.

    Image shortcuts (``fixed_modality=``, ``moving_name=``, ...) build the image infos as in
    :func:`register`.
    """
    start = time.perf_counter()
    times = StageTimes()
    to_matrix(transform)  # refuses non-linear transforms with a clear message
    _, fixed_info, moving_info = from_shortcuts(None, fixed_info, moving_info, shortcuts, images_only=True)
    with times.stage("recognition"):
        fixed_ev, moving_ev, preset = _recognise(fixed, moving, fixed_info, moving_info, "rigid")
    with times.stage("preparation"):
        pair = prepare_pair(fixed, moving, preset, fixed_mask=fixed_info.mask, moving_mask=moving_info.mask)
    with times.stage("scoring"):
        score_before = score_on(pair, None, preset.score_metric)
        after = score_on(pair, transform, preset.score_metric)
    with times.stage("verdict"):
        after, verdict = assess(pair, transform, metric=preset.score_metric, score_before=score_before,
                                score_after=after)
    given = Attempt(engine="none", start="given transform", transform=transform, score=after, verdict=verdict)
    return _result(
        moving, fixed, given, score_before=score_before, preset=preset,
        evidence=(fixed_ev, moving_ev), infos=(fixed_info, moving_info), started=start,
        attempts=(), notes=pair.notes, timings=times,
    )


def _best(attempts: list[Attempt]) -> int:
    """Index of the first attempt judged good (recovery stops there), else of the best-scoring one; the
    earliest wins a tie, so the first run is kept unless beaten."""
    for index, attempt in enumerate(attempts):
        if index and attempt.verdict is not None and attempt.verdict.label == "good":
            return index
    best = 0
    for index, attempt in enumerate(attempts):
        value, leader = attempt.value, attempts[best].value
        if value is not None and (leader is None or value > leader):
            best = index
    return best


def _result(
    moving: sitk.Image,
    fixed: sitk.Image,
    kept: Attempt,
    *,
    score_before: ScoreResult,
    preset: Preset,
    evidence: tuple[ModalityEvidence, ModalityEvidence],
    infos: tuple[ImageInfo, ImageInfo],
    started: float,
    attempts: tuple[Attempt, ...],
    notes: tuple[str, ...],
    timings: StageTimes,
) -> RegistrationResult:
    """The result of keeping ``kept`` (a judged attempt): the moving image resampled through it."""
    assert kept.transform is not None and kept.score is not None and kept.verdict is not None
    with timings.stage("resampling"):
        registered = sitk.Resample(moving, fixed, kept.transform, sitk.sitkLinear, preset.moving_fill_value)
    return RegistrationResult(
        transform=kept.transform,
        registered=registered,
        score_before=score_before,
        score_after=kept.score,
        preset=preset,
        engine=kept.engine,
        fixed_modality=evidence[0],
        moving_modality=evidence[1],
        elapsed_s=time.perf_counter() - started,
        verdict=kept.verdict,
        attempts=attempts,
        log=kept.log,
        notes=notes,
        fixed_name=infos[0].name,
        moving_name=infos[1].name,
        kept_temp_dirs=tuple(a.kept_temp_dir for a in attempts if a.kept_temp_dir),
        timings_s=timings.as_dict(),
    )
