"""Machine-readable progress for a parent process: one JSON object per line on stdout.

``oneclick-register ... --progress-lines`` prints, instead of the terminal progress bar::

    {"event": "progress", "fraction": 0.42, "stage": "Registering with elastix"}
    {"event": "done", "outputs": {"transform": "...", ...}, "verdict": "good"}
    {"event": "error", "message": "...", "error_type": "EngineError"}

The Slicer module reads these from the child process it starts; any other line (a library's own
print) is not an event and is ignored by :func:`parse_event`. Every line is flushed at once, so the
parent sees progress as it happens.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from .cli_common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, one_line
from .errors import OneClickError

EVENTS = ("progress", "done", "error")


class ProgressLines:
    """A ``progress(fraction, stage)`` callback that writes JSON lines, plus the closing events."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._last: tuple[float, str] | None = None

    def _write(self, event: str, fields: Mapping[str, Any]) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        stream.flush()

    def __call__(self, fraction: float, stage: str) -> None:
        # Engines report many identical updates; the parent only needs each change once.
        current = (round(float(fraction), 3), str(stage))
        if current != self._last:
            self._last = current
            self._write("progress", {"fraction": current[0], "stage": current[1]})

    def done(self, **fields: Any) -> None:
        self._write("done", fields)

    def error(self, message: str, *, error_type: str) -> None:
        self._write("error", {"message": message, "error_type": error_type})


def guarded_with_events(run: Callable[[], int], lines: ProgressLines) -> int:
    """Like :func:`.cli_common.guarded`, and the failure is also told to the parent as an error event."""
    try:
        return run()
    except OneClickError as exc:
        lines.error(str(exc), error_type=type(exc).__name__)
        print(f"oneclick-register: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # the parent's cancel (SIGINT): the core has already stopped its engines
        lines.error("The registration was cancelled.", error_type="CancelledError")
        print("oneclick-register: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def parse_event(line: str | bytes) -> dict[str, Any] | None:
    """The event a line carries, or None for a line that is not one of :data:`EVENTS`."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") not in EVENTS:
        return None
    return event
