"""Registering many pairs: one idempotent task per pair, one summary row per pair, in input order.

A task reads its own two files and writes its own folder ``OUTPUT/<name>/``, so it can run in this
process (the default) or on any worker of a Dask cluster that sees the same files
(:mod:`.batch_cluster`). A pair whose outputs are complete is not registered again unless
``force`` is set, so re-running an interrupted batch finishes only what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .batch_pairs import (
    INTERRUPTED,
    NOT_RUN,
    OK,
    SUMMARY_FIELDS,
    SUMMARY_FILE,
    BatchProgress,
    Pair,
    PairOutcome,
    measured,
    outcome_line,
    read_pairs,
    register_pair,
    summary_row,
    write_summary,
)
from .errors import InputError
from .options import RegistrationOptions

__all__ = ["OK", "SUMMARY_FIELDS", "SUMMARY_FILE", "Pair", "PairOutcome", "read_pairs", "register_batch"]


def register_batch(
    pairs: Sequence[Pair],
    output_dir: str | os.PathLike[str],
    *,
    options: RegistrationOptions | None = None,
    force: bool = False,
    client: Any = None,
    show_progress: bool = True,
) -> list[PairOutcome]:
    """Register every pair and write ``output_dir/summary.csv`` (input order), also when interrupted.

    Without ``client`` the pairs run one after another in this process; with a
    ``distributed.Client`` each pair is a task on the cluster. ``options`` apply to every pair
    (its ``progress`` is the batch's own; ``threads`` None shares each machine's cores among the
    pairs running on it). Pairs whose outputs are complete are kept unless ``force``. One bad pair
    is one failed row; the others go on. Ctrl-C (KeyboardInterrupt) stops the running pairs,
    writes the summary (running pairs "interrupted", the rest "not run") and is raised again.
    """
    options = options or RegistrationOptions()
    if not pairs:
        raise InputError("The batch has no pairs; expected at least one fixed/moving pair.")
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"Each pair needs its own output folder name; these repeat: {duplicates}.")
    output = Path(output_dir)
    outcomes: list[PairOutcome] = [PairOutcome(summary_row(p, status=NOT_RUN)) for p in pairs]
    progress = BatchProgress(len(pairs), enabled=show_progress)
    try:
        if client is None:
            _run_here(pairs, output, options, force, outcomes, progress)
        else:
            from .batch_cluster import run_on_client

            run_on_client(client, pairs, output, options, force, outcomes, progress)
    finally:  # also on Ctrl-C: the summary says which pairs were done, interrupted or not run
        progress.close()
        write_summary([o.row for o in outcomes], output)
    return outcomes


def _run_here(pairs: Sequence[Pair], output: Path, options: RegistrationOptions, force: bool,
              outcomes: list[PairOutcome], progress: BatchProgress) -> None:
    # threads None: one pair at a time, so its engine may use every core
    for index, pair in enumerate(pairs):
        outcomes[index] = PairOutcome(summary_row(pair, status=INTERRUPTED))
        outcome = measured(lambda pair=pair: register_pair(
            pair, output, options=options, force=force, progress=progress.step(pair.name), cancel=options.cancel))
        outcomes[index] = outcome
        progress.done(outcome_line(index + 1, len(pairs), outcome), failed=outcome.row["status"] != OK)
