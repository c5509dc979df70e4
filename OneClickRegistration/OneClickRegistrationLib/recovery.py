"""Automatic recovery: when a result is not ``good``, try other starting points and engines.

Candidates, in order:

1. a coarse rotation search like FLIRT's: many rotations of the head about its centre are scored
   on a coarse copy of the fixed image, and the best few become starting points;
2. the other initialization (geometry centre instead of moments, or the reverse);
3. the next installed engine of the preset.

Every candidate is scored on the same prepared pair with the same metric and fixed head mask as
the first result, so the comparison is valid, and the best-scoring one is kept. A time budget caps
the total; candidates run in parallel when the machine has cores to spare.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import SimpleITK as sitk

from .engines import get_engine
from .engines.base import CancelCheck, ProgressCallback, RunOptions
from .errors import CancelledError, OneClickError
from .metrics import ScoreResult, score
from .preparation import PreparedPair, initial_alignment
from .presets import Preset
from .verdict import Verdict, coarse_fixed, judge

COARSE_SEARCH_SPACING_MM = 6.0
SEARCH_ANGLES_DEG = (-90.0, -60.0, -30.0, 0.0, 30.0, 60.0, 90.0)
STARTS_FROM_SEARCH = 3
# Default budget: BUDGET_FACTOR times the first attempt, within [MIN_BUDGET_S, MAX_BUDGET_S]; a
# clinician waits for one click, not for an open-ended search.
MIN_BUDGET_S = 60.0
MAX_BUDGET_S = 180.0
BUDGET_FACTOR = 3.0


@dataclass(frozen=True)
class Candidate:
    engine: str
    start: str
    initial: sitk.Transform


@dataclass(frozen=True)
class RecoveryOutcome:
    improved: bool
    transform: sitk.Transform
    score: ScoreResult
    verdict: Verdict
    engine: str
    description: str
    attempts: tuple  # tuple[pipeline.Attempt, ...]


def _rotated(base: sitk.Euler3DTransform, angles_deg: tuple[float, float, float]) -> sitk.Euler3DTransform:
    start = sitk.Euler3DTransform(base)
    start.SetRotation(*(math.radians(a) for a in angles_deg))
    return start


def rotation_search(
    pair: PreparedPair, base: sitk.Euler3DTransform, metric: str, *, keep: int = STARTS_FROM_SEARCH
) -> list[tuple[tuple[float, float, float], float]]:
    """Score every rotation of ``SEARCH_ANGLES_DEG`` about each axis on a coarse grid; best ``keep`` first."""
    fixed, head = coarse_fixed(pair, COARSE_SEARCH_SPACING_MM)
    moving = sitk.SmoothingRecursiveGaussian(pair.moving, COARSE_SEARCH_SPACING_MM / 2)
    scored = []
    for angles in itertools.product(SEARCH_ANGLES_DEG, repeat=3):
        result = score(fixed, moving, transform=_rotated(base, angles), metric=metric, fixed_mask=head)
        if result.ok and result.value is not None:
            scored.append((angles, result.value))
    scored.sort(key=lambda item: item[1], reverse=True)
    return scored[:keep]


def _candidates(
    pair: PreparedPair,
    preset: Preset,
    first_engine: str,
    forced_engine: str | None,
    base: sitk.Euler3DTransform,
) -> list[Candidate]:
    candidates = []
    for angles, _ in rotation_search(pair, base, preset.score_metric):
        if angles != (0.0, 0.0, 0.0):
            label = "rotation search start " + "/".join(f"{a:+.0f}" for a in angles) + " deg"
            candidates.append(Candidate(first_engine, label, _rotated(base, angles)))
    other = "geometry" if preset.initialization == "moments" else "moments"
    candidates.append(Candidate(first_engine, f"{other} initialization", initial_alignment(pair, other)))
    if forced_engine is None:
        for name in preset.engines:
            if name != first_engine and get_engine(name).availability().available:
                candidates.append(
                    Candidate(name, f"next engine ({name}), {preset.initialization} initialization", base)
                )
                break
    return candidates


def recover_best(
    pair: PreparedPair,
    preset: Preset,
    *,
    first_engine: str,
    first_start: sitk.Euler3DTransform,
    first_transform: sitk.Transform,
    first_score: ScoreResult,
    first_verdict: Verdict,
    score_before: ScoreResult,
    progress: ProgressCallback,
    cancel: CancelCheck | None,
    timeout_s: float | None,
    keep_temp: bool,
    threads: int | None,
    time_budget_s: float | None,
    forced_engine: str | None,
    first_elapsed_s: float = 0.0,
) -> RecoveryOutcome:
    """Try the candidates within the budget and return the best result (possibly the first one)."""
    from .pipeline import Attempt, run_engine

    started = time.perf_counter()
    default_budget = min(MAX_BUDGET_S, max(MIN_BUDGET_S, BUDGET_FACTOR * first_elapsed_s))
    budget = time_budget_s if time_budget_s is not None else default_budget
    progress(0.0, "Searching rotations on a coarse grid")
    candidates = _candidates(pair, preset, first_engine, forced_engine, first_start)
    metric = preset.score_metric
    attempts: list[Attempt] = []
    best_index = -1
    best = (
        first_score.value if first_score.ok and first_score.value is not None else -math.inf,
        first_transform,
        first_score,
        first_engine,
        "first result",
    )
    # A thread budget (a batch running several pairs per machine) bounds the candidates run at once too.
    cores = threads or os.cpu_count() or 1
    workers = max(1, cores // 2) if cores >= 4 else 1

    def attempt(
        candidate: Candidate,
    ) -> tuple[Candidate, sitk.Transform | None, ScoreResult | None, str, float]:
        t0 = time.perf_counter()
        if cancel is not None and cancel():
            raise CancelledError("The registration was cancelled; nothing was changed.")
        remaining = budget - (time.perf_counter() - started)
        if remaining <= 0:
            return candidate, None, None, "skipped: time budget used up", 0.0
        limit = remaining if timeout_s is None else min(timeout_s, remaining)
        options = RunOptions(
            cancel=cancel, timeout_s=limit, keep_temp=keep_temp, threads=threads if workers == 1 else 2
        )
        try:
            found, _ = run_engine(candidate.engine, pair, preset, candidate.initial, options)
        except CancelledError:
            raise
        except OneClickError as exc:
            return candidate, None, None, str(exc).splitlines()[0], time.perf_counter() - t0
        result = score(pair.fixed, pair.moving, transform=found, metric=metric, fixed_mask=pair.fixed_head)
        return candidate, found, result, "", time.perf_counter() - t0

    if workers == 1:
        outcomes = map(attempt, candidates)  # inline: no thread to reason about when there is no gain
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        outcomes = pool.map(attempt, candidates)
    try:
        for index, (candidate, found, result, error, elapsed) in enumerate(outcomes):
            progress((index + 1) / len(candidates), f"Candidate {index + 1}/{len(candidates)}: {candidate.start}")
            value = result.value if result is not None and result.ok else None
            attempts.append(Attempt(candidate.engine, candidate.start, value, None, elapsed, error))
            if found is not None and value is not None and value > best[0]:
                best = (value, found, result, candidate.engine, f"{candidate.engine} from {candidate.start}")
                best_index = len(attempts) - 1
    finally:
        if workers > 1:
            pool.shutdown(wait=True, cancel_futures=True)
    _, transform, best_score, engine, description = best
    if transform is first_transform:
        return RecoveryOutcome(
            False, first_transform, first_score, first_verdict, first_engine, description, tuple(attempts)
        )
    verdict = judge(pair, transform, metric=metric, score_before=score_before, score_after=best_score)
    kept = attempts[best_index]
    attempts[best_index] = Attempt(kept.engine, kept.start, kept.score, verdict.label, kept.elapsed_s, kept.error)
    return RecoveryOutcome(True, transform, best_score, verdict, engine, description, tuple(attempts))
