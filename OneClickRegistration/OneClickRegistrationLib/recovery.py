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
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import SimpleITK as sitk

from .attempts import Attempt, run_attempt
from .engines import get_engine
from .engines.base import ProgressCallback
from .errors import CancelledError, OneClickError, first_line, raise_if_cancelled
from .metrics import score
from .options import RegistrationOptions
from .preparation import PreparedPair, initial_alignment
from .presets import Preset
from .verdict import coarse_fixed

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


def _candidates(pair: PreparedPair, preset: Preset, first: Attempt, forced_engine: str | None) -> list[Candidate]:
    base = first.initial
    assert isinstance(base, sitk.Euler3DTransform), "the pipeline starts from an Euler3DTransform"
    candidates = []
    for angles, _ in rotation_search(pair, base, preset.score_metric):
        if angles != (0.0, 0.0, 0.0):
            label = "rotation search start " + "/".join(f"{a:+.0f}" for a in angles) + " deg"
            candidates.append(Candidate(first.engine, label, _rotated(base, angles)))
    other = "geometry" if preset.initialization == "moments" else "moments"
    candidates.append(Candidate(first.engine, f"{other} initialization", initial_alignment(pair, other)))
    if forced_engine is None:
        for name in preset.engines:
            if name != first.engine and get_engine(name).availability().available:
                candidates.append(
                    Candidate(name, f"next engine ({name}), {preset.initialization} initialization", base)
                )
                break
    return candidates


def recover(
    pair: PreparedPair,
    preset: Preset,
    first: Attempt,
    *,
    options: RegistrationOptions,
    progress: ProgressCallback,
) -> tuple[Attempt, ...]:
    """Run the candidates after ``first`` within the time budget; one attempt per candidate, in order.

    A candidate that fails or finds the budget used up is an attempt without a transform whose
    ``error`` says why; a cancel ends the whole run (:class:`CancelledError`).
    """
    started = time.perf_counter()
    default_budget = min(MAX_BUDGET_S, max(MIN_BUDGET_S, BUDGET_FACTOR * first.elapsed_s))
    budget = options.time_budget_s if options.time_budget_s is not None else default_budget
    progress(0.0, "Searching rotations on a coarse grid")
    candidates = _candidates(pair, preset, first, options.engine)
    # A thread budget (a batch running several pairs per machine) bounds the candidates run at once too.
    cores = options.threads or os.cpu_count() or 1
    workers = max(1, cores // 2) if cores >= 4 else 1
    # Ctrl-C/SIGTERM reach the main thread only: the candidates running in workers see this stop.
    stop, user_cancel = threading.Event(), options.cancel
    options = replace(options, cancel=lambda: stop.is_set() or (user_cancel is not None and user_cancel()))

    def attempt(candidate: Candidate) -> Attempt:
        began = time.perf_counter()
        raise_if_cancelled(options.cancel)
        remaining = budget - (began - started)
        if remaining <= 0:
            return Attempt(candidate.engine, candidate.start, candidate.initial, error="skipped: time budget used up")
        limit = remaining if options.timeout_s is None else min(options.timeout_s, remaining)
        run_options = options.run_options(timeout_s=limit, threads=options.threads if workers == 1 else 2)
        try:
            return run_attempt(pair, preset, engine=candidate.engine, initial=candidate.initial,
                               start=candidate.start, options=run_options)
        except CancelledError:
            raise
        except OneClickError as exc:
            return Attempt(candidate.engine, candidate.start, candidate.initial, error=first_line(exc),
                           elapsed_s=time.perf_counter() - began)

    attempts: list[Attempt] = []
    with _mapper(workers) as run_all:
        try:
            for index, done in enumerate(run_all(attempt, candidates)):
                progress((index + 1) / len(candidates), f"Candidate {index + 1}/{len(candidates)}: {done.start}")
                attempts.append(done)
        except BaseException:
            stop.set()  # before the pool waits for its running candidates
            raise
    return tuple(attempts)


_Map = Callable[[Callable[[Candidate], Attempt], list[Candidate]], Iterator[Attempt]]


@contextmanager
def _mapper(workers: int) -> Iterator[_Map]:
    """``map`` inline for one worker (no thread to reason about when there is no gain), else over a
    pool whose pending candidates are dropped when the run ends early (cancel, error)."""
    if workers == 1:
        yield lambda fn, items: iter(map(fn, items))
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield lambda fn, items: iter(pool.map(fn, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
