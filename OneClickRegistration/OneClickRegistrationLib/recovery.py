"""Automatic recovery: when a result is not ``good``, try other starting points and engines.

Candidates, in order:

1. the other distinct starts of the coarse global search (:mod:`.initial_search`, the same search
   that gave the first attempt its start), best first;
2. the centred start without the search, and the other centring (geometry centre instead of
   moments, or the reverse);
3. the next installed engine of the preset.

Every candidate is scored on the same prepared pair with the same metric and fixed head mask as
the first result, so the comparison is valid. Recovery stops at the first candidate judged ``good``;
otherwise the best-scoring one is kept. A time budget caps the total.

Candidates run one after the other, each engine with every thread it may use. They share the
prepared pair's SimpleITK images, which two threads must not read at once: a numpy view first makes
its image's buffer unique, which copies the buffer while another thread's filter holds it and frees
the old one under views already taken (four threads scoring one pair crashed the process).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .attempts import Attempt, judged, run_attempt, score_on
from .engines import get_engine
from .engines.base import ProgressCallback
from .errors import CancelledError, OneClickError, first_line, raise_if_cancelled
from .initial_search import search_start
from .options import RegistrationOptions
from .preparation import PreparedPair, initial_alignment
from .presets import Preset
from .transforms import to_matrix

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


def _same_transform(a: sitk.Transform, b: sitk.Transform) -> bool:
    """Whether two linear transforms map every point alike (within 0.01 mm / 1e-4 of a radian)."""
    ma, mb = to_matrix(a), to_matrix(b)
    return bool(np.allclose(ma[:3, :3], mb[:3, :3], atol=1e-4) and np.allclose(ma[:3, 3], mb[:3, 3], atol=1e-2))


def _candidates(pair: PreparedPair, preset: Preset, first: Attempt, forced_engine: str | None) -> list[Candidate]:
    base = first.initial
    assert base is not None, "the pipeline's first attempt has a start"
    centred = initial_alignment(pair, preset.initialization, search=False)
    candidates = []
    found = search_start(pair.fixed, pair.fixed_head, pair.moving, pair.moving_head, centred, metric=pair.metric)
    if found is not None:
        if not _same_transform(found.transform, base):
            # The first attempt did not start from the search's best (the user gave a start): try it first.
            candidates.append(Candidate(first.engine, f"search start 1 (coarse score {found.value:.4f})",
                                        found.transform))
        for index, (start, value) in enumerate(found.alternatives, start=2):
            candidates.append(Candidate(first.engine, f"search start {index} (coarse score {value:.4f})", start))
    candidates.append(Candidate(first.engine, f"{preset.initialization} initialization without search", centred))
    other = "geometry" if preset.initialization == "moments" else "moments"
    candidates.append(Candidate(first.engine, f"{other} initialization", initial_alignment(pair, other, search=False)))
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
    progress(0.0, "Searching starting points on a coarse grid")
    candidates = _candidates(pair, preset, first, options.engine)

    def attempt(candidate: Candidate) -> Attempt:
        began = time.perf_counter()
        raise_if_cancelled(options.cancel)
        remaining = budget - (began - started)
        if remaining <= 0:
            return Attempt(candidate.engine, candidate.start, candidate.initial, error="skipped: time budget used up")
        limit = remaining if options.timeout_s is None else min(options.timeout_s, remaining)
        try:
            return run_attempt(pair, preset, engine=candidate.engine, initial=candidate.initial,
                               start=candidate.start, options=options.run_options(timeout_s=limit))
        except CancelledError:
            raise
        except OneClickError as exc:
            return Attempt(candidate.engine, candidate.start, candidate.initial, error=first_line(exc),
                           elapsed_s=time.perf_counter() - began)

    attempts: list[Attempt] = []
    score_before = score_on(pair, None, preset.score_metric)
    for index, candidate in enumerate(candidates):
        done = attempt(candidate)
        progress((index + 1) / len(candidates), f"Candidate {index + 1}/{len(candidates)}: {done.start}")
        if done.transform is not None and done.score is not None and done.score.ok:
            done = judged(done, pair, score_before=score_before)
        attempts.append(done)
        if done.verdict is not None and done.verdict.label == "good":
            break  # a good result ends the search: the clinician is waiting
    return tuple(attempts)
