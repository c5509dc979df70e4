"""The one-click pipeline: two volumes in, an aligned result with a score and a verdict out.

``register`` detects the modality pair, looks up its preset, prepares the images, initializes,
runs the first installed engine of the preset, scores the result on the domain intersection and
judges it; when the verdict is not ``good`` it tries further candidates (see :mod:`.recovery`) and
keeps the best-scoring one. The caller's images are never modified.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk

from . import __version__
from .engines import get_engine
from .engines.base import CancelCheck, ProgressCallback, RunOptions, TransformKind
from .errors import CancelledError, EngineError, EngineUnavailableError, InputError
from .images import check_registrable
from .metrics import ScoreResult, score
from .modality import ModalityEvidence, detect_modality, metadata_from_image
from .preparation import (
    PreparedPair,
    check_pyramid,
    engine_request,
    engine_result,
    initial_alignment,
    prepare_pair,
)
from .presets import Preset, preset_for
from .transforms import to_matrix
from .verdict import Verdict, judge

FALLBACK_ENGINE = "simpleitk"  # embedded, so one click always has an engine


@dataclass(frozen=True)
class Attempt:
    """One registration tried on the pair (the first run, or a recovery candidate)."""

    engine: str
    start: str  # how it was initialized, in words
    score: float | None
    verdict: str | None
    elapsed_s: float
    error: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "engine": self.engine,
            "start": self.start,
            "score": self.score,
            "verdict": self.verdict,
            "elapsed_s": round(self.elapsed_s, 3),
            "error": self.error,
        }


@dataclass(frozen=True)
class RegistrationResult:
    """Everything a registration produced. ``transform`` is ITK fixed->moving (LPS)."""

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

    @property
    def metric(self) -> str:
        return self.score_after.metric

    def to_report(self) -> dict[str, Any]:
        """A JSON-ready summary (``report.json``)."""
        return {
            "version": __version__,
            "fixed_modality": self.fixed_modality.modality.value,
            "moving_modality": self.moving_modality.modality.value,
            "modality_evidence": {
                "fixed": self.fixed_modality.to_dict(),
                "moving": self.moving_modality.to_dict(),
            },
            "preset": self.preset.name,
            "preset_description": self.preset.describe(),
            "engine": self.engine,
            "transform_kind": self.preset.transform,
            "metric": self.metric,
            "score_before": self.score_before.value,
            "score_after": self.score_after.value,
            "score_before_detail": self.score_before.to_dict(),
            "score_after_detail": self.score_after.to_dict(),
            "verdict": self.verdict.label,
            "verdict_reasons": list(self.verdict.reasons),
            "verdict_evidence": dict(self.verdict.evidence),
            "attempts": [a.to_dict() for a in self.attempts],
            "elapsed_s": round(self.elapsed_s, 3),
            "transform_matrix_lps": to_matrix(self.transform).tolist(),
            "notes": list(self.notes),
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
    fixed: sitk.Image,
    moving: sitk.Image,
    names: tuple[str | None, str | None],
    metadata: tuple[Mapping[str, str] | None, Mapping[str, str] | None],
    choices: tuple[str | None, str | None],
    transform: TransformKind,
) -> tuple[ModalityEvidence, ModalityEvidence, Preset]:
    """Check both images, recognise their modalities and pick the pair's preset."""
    evidence = []
    for image, role, name, tags, choice in zip(
        (fixed, moving), ("fixed image", "moving image"), names, metadata, choices
    ):
        check_registrable(image, role=role)
        # An image read from DICOM or NIfTI carries its own header: use it when no tags were given.
        tags = tags if tags is not None else metadata_from_image(image)
        evidence.append(detect_modality(image, name=name, metadata=tags, user_choice=choice))
    return evidence[0], evidence[1], preset_for(evidence[0].modality, evidence[1].modality, transform=transform)


def _score(pair: PreparedPair, transform: sitk.Transform | None, metric: str) -> ScoreResult:
    return score(pair.fixed, pair.moving, transform=transform, metric=metric, fixed_mask=pair.fixed_head)


def run_engine(
    name: str, pair: PreparedPair, preset: Preset, initial: sitk.Transform, options: RunOptions
) -> tuple[sitk.Transform, tuple[str, ...]]:
    """Run one engine from ``initial``; returns its full fixed->moving transform and log."""
    request, inverted = engine_request(pair, preset, initial, engine=name)
    output = get_engine(name).run(request, options)
    return engine_result(output.transform, inverted=inverted), output.log


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_modality: str | None = None,
    moving_modality: str | None = None,
    engine: str | None = None,
    transform: TransformKind = "rigid",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    fixed_name: str | None = None,
    moving_name: str | None = None,
    fixed_metadata: Mapping[str, str] | None = None,
    moving_metadata: Mapping[str, str] | None = None,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    keep_temp: bool = False,
    timeout_s: float | None = None,
    recover: bool = True,
    time_budget_s: float | None = None,
    threads: int | None = None,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` with no question asked.

    Modalities are detected unless given ("T1", "T2", "FLAIR", "CT", "MR"); the engine is the
    preset's first installed one unless given. ``progress(fraction, message)`` is called as work
    advances; ``cancel()`` returning True stops the run (:class:`CancelledError`). Raises the errors
    of :mod:`.errors`; never modifies its inputs.
    """
    start = time.perf_counter()
    if transform not in ("rigid", "affine"):
        raise InputError(f"transform must be 'rigid' or 'affine'; received {transform!r}.")
    report = _Progress(progress)
    report(0.0, "Recognising the modalities")
    fixed_ev, moving_ev, preset = _recognise(
        fixed, moving, (fixed_name, moving_name), (fixed_metadata, moving_metadata),
        (fixed_modality, moving_modality), transform)
    check_pyramid(fixed, preset, role="fixed image")
    check_pyramid(moving, preset, role="moving image")
    engine_name, notes = _resolve_engines(preset, engine)
    _check_cancel(cancel)
    report(0.02, f"Preparing the images ({preset.name})")
    pair = prepare_pair(fixed, moving, preset, fixed_mask=fixed_mask, moving_mask=moving_mask)
    notes.extend(pair.notes)
    initial = initial_alignment(pair, preset.initialization)
    metric = preset.score_metric
    score_before = _score(pair, None, metric)
    options = RunOptions(
        progress=report.slice(0.05, 0.75 if recover else 0.92),
        cancel=cancel,
        timeout_s=timeout_s,
        keep_temp=keep_temp,
        threads=threads,
    )
    report(0.05, f"Registering with {engine_name}")
    attempt_start = time.perf_counter()
    try:
        found, log = run_engine(engine_name, pair, preset, initial, options)
    except CancelledError:
        raise
    except EngineError:
        if engine is not None or engine_name == FALLBACK_ENGINE:
            raise
        notes.append(f"Engine {engine_name} failed; the embedded SimpleITK engine was used instead.")
        engine_name = FALLBACK_ENGINE
        found, log = run_engine(engine_name, pair, preset, initial, options)
    score_after = _score(pair, found, metric)
    verdict = judge(pair, found, metric=metric, score_before=score_before, score_after=score_after)
    attempts = [
        Attempt(
            engine_name,
            f"{preset.initialization} initialization",
            score_after.value,
            verdict.label,
            time.perf_counter() - attempt_start,
        )
    ]
    if recover and verdict.label != "good":
        from .recovery import recover_best

        report(0.75, f"Result {verdict.label}: trying other starting points")
        outcome = recover_best(
            pair,
            preset,
            first_engine=engine_name,
            first_start=initial,
            first_transform=found,
            first_score=score_after,
            first_verdict=verdict,
            score_before=score_before,
            progress=report.slice(0.75, 0.92),
            cancel=cancel,
            timeout_s=timeout_s,
            keep_temp=keep_temp,
            threads=threads,
            time_budget_s=time_budget_s,
            forced_engine=engine,
            first_elapsed_s=attempts[0].elapsed_s,
        )
        attempts.extend(outcome.attempts)
        if outcome.improved:
            found, score_after, verdict, engine_name = (
                outcome.transform,
                outcome.score,
                outcome.verdict,
                outcome.engine,
            )
            notes.append(f"Recovery kept a better candidate: {outcome.description}.")
    _check_cancel(cancel)
    report(0.95, "Resampling the moving image")
    registered = sitk.Resample(moving, fixed, found, sitk.sitkLinear, preset.moving_fill_value)
    report(1.0, f"Done: {verdict.label}")
    return RegistrationResult(
        transform=found,
        registered=registered,
        score_before=score_before,
        score_after=score_after,
        preset=preset,
        engine=engine_name,
        fixed_modality=fixed_ev,
        moving_modality=moving_ev,
        elapsed_s=time.perf_counter() - start,
        verdict=verdict,
        attempts=tuple(attempts),
        log=tuple(log),
        notes=tuple(notes),
    )


def judge_transform(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    *,
    fixed_modality: str | None = None,
    moving_modality: str | None = None,
    fixed_name: str | None = None,
    moving_name: str | None = None,
    fixed_metadata: Mapping[str, str] | None = None,
    moving_metadata: Mapping[str, str] | None = None,
) -> RegistrationResult:
    """Score and judge a transform made elsewhere (another tool, or by hand), the same way as ours."""
    start = time.perf_counter()
    to_matrix(transform)  # refuses non-linear transforms with a clear message
    fixed_ev, moving_ev, preset = _recognise(
        fixed, moving, (fixed_name, moving_name), (fixed_metadata, moving_metadata),
        (fixed_modality, moving_modality), "rigid")
    pair = prepare_pair(fixed, moving, preset)
    metric = preset.score_metric
    before = _score(pair, None, metric)
    after = _score(pair, transform, metric)
    verdict = judge(pair, transform, metric=metric, score_before=before, score_after=after)
    registered = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, preset.moving_fill_value)
    return RegistrationResult(
        transform=transform,
        registered=registered,
        score_before=before,
        score_after=after,
        preset=preset,
        engine="none",
        fixed_modality=fixed_ev,
        moving_modality=moving_ev,
        elapsed_s=time.perf_counter() - start,
        verdict=verdict,
        notes=pair.notes,
    )


def _check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise CancelledError("The registration was cancelled; nothing was changed.")
