"""One attempt: one engine run from one starting transform, scored on the prepared pair.

The pipeline's first run and every recovery candidate are attempts, made by :func:`run_attempt`
and compared by their score; the kept one is judged with :func:`assess`, which is also how a
transform made elsewhere is judged. Every score is taken on the same prepared pair, with the
preset's metric and the fixed head mask, so attempts are comparable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import SimpleITK as sitk

from .engines import get_engine
from .engines.base import RunOptions
from .metrics import ScoreResult, score
from .preparation import PreparedPair, engine_request, engine_result
from .presets import Preset
from .stage_times import StageTimes
from .verdict import Verdict, judge


@dataclass(frozen=True)
class Attempt:
    """One registration tried on the pair. ``transform`` and ``score`` are None when it failed or
    was skipped (``error`` says why); ``verdict`` is set on the attempt that was judged."""

    engine: str
    start: str  # how it was initialized, in words
    initial: sitk.Transform | None = None
    transform: sitk.Transform | None = None
    score: ScoreResult | None = None
    verdict: Verdict | None = None
    elapsed_s: float = 0.0
    error: str = ""
    log: tuple[str, ...] = ()
    kept_temp_dir: str | None = None

    @property
    def value(self) -> float | None:
        """The score's value when the attempt produced a usable score, else None."""
        if self.transform is None or self.score is None or not self.score.ok:
            return None
        return self.score.value

    def to_dict(self) -> dict[str, object]:
        return {
            "engine": self.engine,
            "start": self.start,
            "score": self.value,
            "verdict": self.verdict.label if self.verdict is not None else None,
            "elapsed_s": round(self.elapsed_s, 3),
            "error": self.error,
        }


def score_on(pair: PreparedPair, transform: sitk.Transform | None, metric: str) -> ScoreResult:
    """The pair's score through ``transform`` (None: as the headers place them), on the fixed head
    (sampled on the pair's statistics grid)."""
    fixed, head = pair.statistics_grid
    return score(fixed, pair.moving, transform=transform, metric=metric, fixed_mask=head)


def assess(
    pair: PreparedPair, transform: sitk.Transform, *, metric: str, score_before: ScoreResult,
    score_after: ScoreResult | None = None,
) -> tuple[ScoreResult, Verdict]:
    """Score (unless already scored) and judge ``transform`` on the prepared pair."""
    after = score_after if score_after is not None else score_on(pair, transform, metric)
    return after, judge(pair, transform, metric=metric, score_before=score_before, score_after=after)


def judged(attempt: Attempt, pair: PreparedPair, *, score_before: ScoreResult) -> Attempt:
    """``attempt`` with its verdict."""
    assert attempt.transform is not None and attempt.score is not None, "only a finished attempt is judged"
    _, verdict = assess(pair, attempt.transform, metric=attempt.score.metric, score_before=score_before,
                        score_after=attempt.score)
    return replace(attempt, verdict=verdict)


def run_attempt(
    pair: PreparedPair, preset: Preset, *, engine: str, initial: sitk.Transform, start: str, options: RunOptions,
    timings: StageTimes | None = None,
) -> Attempt:
    """Run ``engine`` from ``initial`` on the prepared pair and score its result.

    Raises the engine's errors (:mod:`.errors`); the caller decides whether a failure ends the run.
    ``timings`` (when given) gets the engine's and the scoring's seconds.
    """
    times = timings if timings is not None else StageTimes()
    began = time.perf_counter()
    # Partial fields of view by design: sampled only where the images overlap (see engine_request).
    with times.stage("preparation"):
        request, inverted = engine_request(pair, preset, initial, engine=engine)
    with times.stage("engine"):
        output = get_engine(engine).run(request, options)
    transform = engine_result(output.transform, inverted=inverted)
    with times.stage("scoring"):
        after = score_on(pair, transform, preset.score_metric)
    return Attempt(
        engine=engine,
        start=start,
        initial=initial,
        transform=transform,
        score=after,
        elapsed_s=time.perf_counter() - began,
        log=output.log,
        kept_temp_dir=output.kept_temp_dir,
    )
