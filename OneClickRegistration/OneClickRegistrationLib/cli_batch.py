"""``oneclick-register batch PAIRS.csv -o DIR``: many pairs; one failed pair does not stop the rest."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from .cli_common import EXIT_OK, EXIT_SOME_FAILED, QuietParser, TerminalProgress, guarded, one_line
from .cli_register import add_registration_options, register_files
from .errors import InputError, OneClickError
from .images import write_text
from .output_folder import check_output_folder

SUMMARY_FIELDS = (
    "name",
    "fixed",
    "moving",
    "status",
    "verdict",
    "metric",
    "score_before",
    "score_after",
    "engine",
    "preset",
    "elapsed_s",
    "error",
)


def read_pairs(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise InputError(f"The pairs file does not exist: {str(csv_path)!r}.")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except UnicodeDecodeError as exc:
        raise InputError(
            f"The pairs file {str(csv_path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV."
        ) from None
    except (OSError, csv.Error) as exc:
        raise InputError(f"Cannot read the pairs file {str(csv_path)!r} as CSV: {exc}.") from None
    if not rows:
        raise InputError(
            f"The pairs file {str(csv_path)!r} has no rows; expected a header with 'fixed' and "
            "'moving' columns and one row per pair."
        )
    missing = {"fixed", "moving"} - set(rows[0])
    if missing:
        raise InputError(
            f"The pairs file {str(csv_path)!r} lacks the column(s) {sorted(missing)}; it has "
            f"{sorted(rows[0])}."
        )
    return rows


def _safe_name(text: str, index: int) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._")
    return cleaned or f"pair{index:03d}"


DESCRIPTION = """Register many pairs listed in a CSV file; one failed pair does not stop the rest.

PAIRS.csv columns (a header row names them; paths are relative to the CSV's folder, or absolute):
  fixed            fixed image file (required)
  moving           moving image file (required)
  name             name of the pair's output folder DIR/NAME (default: the moving file's name)
  fixed_modality   T1, T2, FLAIR, CT or MR (default: detected)
  moving_modality  T1, T2, FLAIR, CT or MR (default: detected)
  engine           engine for this pair (default: --engine, else the preset's first installed)

DIR/summary.csv lists every pair with its status, verdict and scores."""


def main(argv: list[str]) -> int:
    parser = QuietParser(prog="oneclick-register batch", description=DESCRIPTION,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", type=Path, metavar="PAIRS.csv")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                        help="folder for one sub-folder per pair and summary.csv")
    add_registration_options(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        check_output_folder(args.output)
        rows = read_pairs(args.pairs)
        base = args.pairs.resolve().parent
        used: set[str] = set()
        summary: list[dict[str, object]] = []
        for index, row in enumerate(rows, start=1):
            fixed, moving = (row.get("fixed") or "").strip(), (row.get("moving") or "").strip()
            name = _safe_name(row.get("name") or Path(moving).name.split(".")[0], index)
            if name in used:
                name = f"{name}_{index}"
            used.add(name)
            summary.append({"name": name, "fixed": fixed, "moving": moving, "status": "not run"})
        try:
            _run_pairs(args, rows, summary, base)
        finally:  # also on Ctrl-C: the summary says which pairs were done, interrupted or not run
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS)
            writer.writeheader()
            writer.writerows(summary)
            write_text(buffer.getvalue(), args.output / "summary.csv")
        failed = [str(e["name"]) for e in summary if e["status"] != "ok"]
        print(
            f"{len(summary) - len(failed)} of {len(summary)} pairs registered"
            + (f"; failed: {', '.join(failed)}" if failed else "")
            + f". Summary: {args.output / 'summary.csv'}"
        )
        return EXIT_SOME_FAILED if failed else EXIT_OK

    return guarded(run)


def _run_pairs(args: argparse.Namespace, rows: list[dict[str, str]], entries: list[dict[str, object]],
               base: Path) -> None:
    """Register each pair in turn, recording its outcome in its entry; a failed pair does not stop the rest."""
    for index, (row, entry) in enumerate(zip(rows, entries), start=1):
        name = str(entry["name"])
        label = f"[{index}/{len(rows)}] {name} "
        entry["status"] = "interrupted"
        try:
            for column in ("fixed", "moving"):
                if not entry[column]:
                    # index + 1: the header is the file's first row
                    raise InputError(f"The pairs file's row {index + 1} has no {column} image path.")
            result = register_files(
                base / str(entry["fixed"]),
                base / str(entry["moving"]),
                args.output / name,
                fixed_modality=(row.get("fixed_modality") or None),
                moving_modality=(row.get("moving_modality") or None),
                engine=(row.get("engine") or args.engine),
                transform=args.transform,
                recover=not args.no_recover,
                timeout_s=args.timeout,
                keep_temp=args.keep_temp,
                progress=TerminalProgress(label, enabled=not args.quiet),
            )
        except OneClickError as exc:
            entry.update(status="error", error=one_line(exc))
            print(f"{label}FAILED: {one_line(exc)}", file=sys.stderr)
        else:
            entry.update(
                status="ok",
                verdict=result.verdict.label,
                metric=result.metric,
                score_before=result.score_before.value,
                score_after=result.score_after.value,
                engine=result.engine,
                preset=result.preset.name,
                elapsed_s=round(result.elapsed_s, 2),
            )
            after = "n/a" if result.score_after.value is None else f"{result.score_after.value:.4f}"
            print(f"{label}{result.verdict.label} ({result.metric.upper()} {after})")
