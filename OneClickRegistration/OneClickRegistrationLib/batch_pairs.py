"""One pair of a batch: where it comes from, its task (idempotent), its summary row, what it cost.

A task reads its own two files and writes its own folder ``OUTPUT/<name>/``, so it can run in this
process or on any worker of a cluster that sees the same files. A pair whose outputs are complete
is not registered again unless ``force`` is set.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from .engines.base import CancelCheck, ProgressCallback
from .errors import CancelledError, InputError, OneClickError
from .images import write_text
from .options import RegistrationOptions
from .outputs import REPORT_FILE
from .pipeline import SUMMARY_FIELDS as RESULT_FIELDS
from .pipeline import failure_summary

SUMMARY_FILE = "summary.csv"
# A batch row is the pair's output folder name, then a result's summary (the same keys everywhere).
SUMMARY_FIELDS = ("name", *RESULT_FIELDS)
# Statuses of a summary row. "ok" includes pairs whose outputs were already complete.
OK, ERROR, INTERRUPTED, NOT_RUN = "ok", "error", "interrupted", "not run"
_STAGING_PREFIX = ".partial-outputs-"  # outputs.write_outputs' staging folders


@dataclass(frozen=True)
class Pair:
    """One registration of a batch: its output folder name and its two image paths."""

    name: str
    fixed: str
    moving: str
    # Relative image paths are read from here (the pairs file's folder).
    base: Path = Path()
    fixed_modality: str | None = None
    moving_modality: str | None = None
    engine: str | None = None
    # Where the pair came from, for messages ("row 3 of the pairs file").
    origin: str = ""

    def path(self, side: str) -> Path:
        value = self.fixed if side == "fixed" else self.moving
        if not value:
            where = self.origin[:1].upper() + self.origin[1:] if self.origin else f"The pair {self.name!r}"
            raise InputError(f"{where} has no {side} image path (pair {self.name!r}).")
        return self.base / value


@dataclass(frozen=True)
class ResourceUse:
    """What one pair cost where it ran: its process (and engine children) at their peak, and file traffic."""

    peak_memory_mb: float
    read_mb: float
    written_mb: float


@dataclass(frozen=True)
class PairOutcome:
    """A pair's summary row, with where it ran and what it cost (None where it was not measured)."""

    row: Mapping[str, object]
    where: str = "local"
    threads: int | None = None
    resources: ResourceUse | None = None
    skipped: bool = False


def _safe_name(text: str, index: int) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._")
    return cleaned or f"pair{index:03d}"


def read_pairs(csv_path: str | os.PathLike[str]) -> list[Pair]:
    """The pairs of a CSV with ``fixed`` and ``moving`` columns (optional ``name``, ``fixed_modality``,
    ``moving_modality``, ``engine``); relative paths are read from the CSV's folder."""
    path = Path(csv_path)
    if not path.is_file():
        raise InputError(f"The pairs file does not exist: {str(path)!r}.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except UnicodeDecodeError as exc:
        raise InputError(
            f"The pairs file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV."
        ) from None
    except (OSError, csv.Error) as exc:
        raise InputError(f"Cannot read the pairs file {str(path)!r} as CSV: {exc}.") from None
    if not rows:
        raise InputError(
            f"The pairs file {str(path)!r} has no rows; expected a header with 'fixed' and "
            "'moving' columns and one row per pair."
        )
    missing = {"fixed", "moving"} - set(rows[0])
    if missing:
        raise InputError(
            f"The pairs file {str(path)!r} lacks the column(s) {sorted(missing)}; it has {sorted(rows[0])}."
        )
    base = path.resolve().parent
    pairs: list[Pair] = []
    used: set[str] = set()
    for index, row in enumerate(rows, start=1):
        fixed, moving = (row.get("fixed") or "").strip(), (row.get("moving") or "").strip()
        name = _safe_name(row.get("name") or Path(moving).name.split(".")[0], index)
        if name in used:
            name = f"{name}_{index}"
        used.add(name)
        pairs.append(Pair(
            name=name, fixed=fixed, moving=moving, base=base,
            fixed_modality=(row.get("fixed_modality") or None), moving_modality=(row.get("moving_modality") or None),
            engine=(row.get("engine") or None),
            origin=f"row {index + 1} of the pairs file",  # + 1: the header is the file's first row
        ))
    return pairs


def summary_row(pair: Pair, summary: Mapping[str, Any] | None = None, *, status: str = OK,
                error: str = "") -> dict[str, object]:
    """A batch row: the pair's name, then ``summary`` (a result's :meth:`summary`, or the same keys at
    the head of its ``report.json``), or a failure row; the image paths as the pair gives them."""
    if summary is None:
        row = failure_summary(pair.fixed, pair.moving, error, status=status)
    else:
        row = {key: summary.get(key) for key in RESULT_FIELDS}
        row.update(fixed=pair.fixed, moving=pair.moving, status=status)
    return {"name": pair.name, **row}


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return " ".join(text.splitlines()[:1]) if text else type(error).__name__


def completed_report(pair: Pair, output_dir: Path, options: RegistrationOptions) -> dict[str, Any] | None:
    """The report of this pair's earlier run when its outputs are all there and were made from the
    same files with the same transform kind; None otherwise."""
    try:
        report = json.loads((output_dir / pair.name / REPORT_FILE).read_text(encoding="utf-8"))
        same_inputs = (report.get("fixed_file"), report.get("moving_file")) == (
            str(pair.path("fixed")), str(pair.path("moving")))
    except (OSError, ValueError, InputError):
        return None
    outputs = report.get("outputs")
    if not (same_inputs and isinstance(outputs, dict) and outputs):
        return None
    if report.get("transform_kind", options.transform) != options.transform:
        return None
    return report if all(Path(p).is_file() for p in outputs.values()) else None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system says, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@contextmanager
def itk_threads(threads: int | None) -> Iterator[None]:
    """ITK's global thread count (preparation, scoring, the SimpleITK engine) for the duration."""
    if not threads:
        yield
        return
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _remove_staging_leftovers(folder: Path) -> None:
    """A task killed while writing leaves a hidden staging folder; the retry starts clean."""
    if folder.is_dir():
        for leftover in folder.glob(_STAGING_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)


def register_pair(
    pair: Pair,
    output_dir: str | os.PathLike[str],
    *,
    options: RegistrationOptions | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> PairOutcome:
    """The task of one pair: register it and write ``output_dir/<name>/``; never raises for a bad pair.

    A failure is a row with status "error" and the one-line message; a cancel is "interrupted".
    ``options.threads`` bounds the threads of the engine and of ITK's filters; a pair's own engine
    wins over ``options.engine``. Complete outputs from the same files are kept unless ``force``.
    """
    from .cli_register import register_files  # the single-pair command's reading and writing

    options = options or RegistrationOptions()
    output = Path(output_dir)
    if not force:
        report = completed_report(pair, output, options)
        if report is not None:
            return PairOutcome(summary_row(pair, report), skipped=True)
    folder = output / pair.name
    _remove_staging_leftovers(folder)
    threads = options.threads
    run = replace(options, engine=pair.engine or options.engine, progress=progress, cancel=cancel)
    try:
        with itk_threads(threads):
            result = register_files(pair.path("fixed"), pair.path("moving"), folder, options=run,
                                    fixed_modality=pair.fixed_modality, moving_modality=pair.moving_modality)
    except CancelledError as exc:
        return PairOutcome(summary_row(pair, status=INTERRUPTED, error=one_line(exc)), threads=threads)
    except OneClickError as exc:
        return PairOutcome(summary_row(pair, status=ERROR, error=one_line(exc)), threads=threads)
    except Exception as exc:  # a defect must cost one pair, not the batch; the type says it is one
        error = f"{type(exc).__name__}: {one_line(exc)}"
        return PairOutcome(summary_row(pair, status=ERROR, error=error), threads=threads)
    return PairOutcome(summary_row(pair, result.summary()), threads=threads)


def measured(task: Callable[[], PairOutcome]) -> PairOutcome:
    """Run ``task`` and attach its peak memory (process and engine children, sampled) and file traffic.

    Uses psutil when it is installed (it comes with dask); otherwise the outcome is returned as is.
    """
    try:
        import psutil
    except ImportError:
        return task()
    me = psutil.Process()
    peak = [0]
    done = threading.Event()

    def tree_rss() -> int:
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            with suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def sample() -> None:
        while not done.is_set():
            with suppress(psutil.Error):
                peak[0] = max(peak[0], tree_rss())
            done.wait(0.05)

    # Linux adds a waited-for child's I/O to its parent's counters, so the engine's files count too.
    before = me.io_counters() if hasattr(me, "io_counters") else None
    sampler = threading.Thread(target=sample, name="pair-memory", daemon=True)
    sampler.start()
    try:
        outcome = task()
    finally:
        done.set()
        sampler.join()
    after = me.io_counters() if before is not None else None
    read = written = float("nan")
    if before is not None and after is not None:
        read_field = "read_chars" if hasattr(after, "read_chars") else "read_bytes"
        write_field = "write_chars" if hasattr(after, "write_chars") else "write_bytes"
        read = (getattr(after, read_field) - getattr(before, read_field)) / 1e6
        written = (getattr(after, write_field) - getattr(before, write_field)) / 1e6
    usage = ResourceUse(peak_memory_mb=round(peak[0] / 1e6, 1), read_mb=round(read, 2), written_mb=round(written, 2))
    return replace(outcome, resources=usage)


def write_summary(rows: Sequence[Mapping[str, object]], output_dir: str | os.PathLike[str]) -> Path:
    """``output_dir/summary.csv``: one row per pair in input order (written atomically)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(buffer.getvalue(), Path(output_dir) / SUMMARY_FILE)


class BatchProgress:
    """A progress bar over pairs on stderr (tqdm when installed) and one line per finished pair."""

    def __init__(self, total: int, *, enabled: bool = True) -> None:
        self._bar = None
        self._enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # the bar is optional; the per-pair lines still tell the story
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, unit="pair", file=sys.stderr, dynamic_ncols=True, leave=True)

    def step(self, message: str) -> ProgressCallback:
        """A callback showing what the running pair is doing (in-process runs)."""
        def show(fraction: float, text: str) -> None:
            if self._bar is not None:
                self._bar.set_postfix_str(f"{message}: {fraction:3.0%} {text[:40]}", refresh=True)
        return show

    def done(self, line: str, *, failed: bool) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.write(line, file=sys.stderr if failed else sys.stdout)
        elif self._enabled or failed:
            print(line, file=sys.stderr if failed else sys.stdout, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def outcome_line(index: int, total: int, outcome: PairOutcome) -> str:
    row = outcome.row
    label = f"[{index}/{total}] {row['name']} "
    if row["status"] == OK:
        kept = " (complete before; kept)" if outcome.skipped else ""
        score = row.get("score_after")
        shown = f"{score:.4f}" if isinstance(score, float) else "n/a"
        return f"{label}{row.get('verdict')} ({str(row.get('metric')).upper()} {shown}){kept}"
    if row["status"] == ERROR:
        return f"{label}FAILED: {row.get('error')}"
    return f"{label}{row['status']}"
