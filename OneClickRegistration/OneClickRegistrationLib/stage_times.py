"""Wall time per pipeline stage, so a slow run shows where its time went (``timings_s`` in report.json)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# The stages in the order a run goes through them; report.json lists them in this order.
STAGES: tuple[str, ...] = (
    "reading",
    "recognition",
    "preparation",
    "initial_search",
    "engine",
    "scoring",
    "verdict",
    "recovery",
    "resampling",
    "writing",
)


class StageTimes:
    """Seconds spent per stage; a stage entered twice adds up. Stages must not nest (sums stay honest)."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self._seconds: dict[str, float] = dict(seconds or {})

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in STAGES:
            raise ValueError(f"Unknown stage {name!r}; expected one of {', '.join(STAGES)}.")
        began = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - began

    def as_dict(self) -> dict[str, float]:
        """Every stage in :data:`STAGES` order (0 for a stage not run), in seconds rounded to 1 ms."""
        return {name: round(self._seconds.get(name, 0.0), 3) for name in STAGES}
