"""``oneclick-register batch PAIRS.csv -o DIR``: many pairs; one failed pair does not stop the rest.

PAIRS.csv has a header with at least ``fixed`` and ``moving`` columns (paths, relative to the CSV's
folder or absolute); optional ``name``, ``fixed_modality``, ``moving_modality``, ``engine``. Each pair's
outputs go to ``DIR/<name>/``; ``DIR/summary.csv`` lists every pair with its status. Pairs whose
outputs are already complete are kept unless ``--force``. ``--workers N`` runs N pairs at a time on
a local Dask cluster, ``--scheduler ADDRESS`` on an existing one (both need the ``cluster`` extra).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .batch import OK, SUMMARY_FILE, read_pairs, register_batch
from .batch_cluster import batch_client
from .cli_common import EXIT_OK, EXIT_SOME_FAILED, QuietParser, guarded
from .cli_register import add_registration_options, options_from_args
from .output_folder import check_output_folder

DESCRIPTION = """Register many pairs listed in a CSV file; one failed pair does not stop the rest.

PAIRS.csv columns (a header row names them; paths are relative to the CSV's folder, or absolute):
  fixed            fixed image file (required)
  moving           moving image file (required)
  name             name of the pair's output folder DIR/NAME (default: the moving file's name)
  fixed_modality   T1, T2, FLAIR, CT or MR (default: detected)
  moving_modality  T1, T2, FLAIR, CT or MR (default: detected)
  engine           engine for this pair (default: --engine, else the preset's first installed)

DIR/summary.csv lists every pair with its status, verdict and scores. Pairs whose outputs are
already complete are kept unless --force. --workers N runs N pairs at a time on a local Dask
cluster, --scheduler ADDRESS on an existing one (both need the cluster extra)."""


def build_parser() -> QuietParser:
    parser = QuietParser(prog="oneclick-register batch", description=DESCRIPTION,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", type=Path, metavar="PAIRS.csv")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                        help="folder for one sub-folder per pair and summary.csv")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N", help="run on a local cluster of N worker processes")
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask scheduler at ADDRESS")
    parser.add_argument("--force", action="store_true", help="register again pairs whose outputs are complete")
    parser.add_argument("--threads", type=int, metavar="T",
                        help="threads per pair (default: the machine's cores shared among the pairs it runs)")
    add_registration_options(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        check_output_folder(args.output)
        pairs = read_pairs(args.pairs)
        # the batch shows its own progress (a bar over pairs) instead of one line per pair's steps
        options = replace(options_from_args(args), threads=args.threads, progress=None)
        with batch_client(workers=args.workers, scheduler=args.scheduler) as client:
            outcomes = register_batch(pairs, args.output, options=options, force=args.force, client=client,
                                      show_progress=not args.quiet)
        failed = [str(o.row["name"]) for o in outcomes if o.row["status"] != OK]
        kept = sum(o.skipped for o in outcomes)
        print(
            f"{len(outcomes) - len(failed)} of {len(outcomes)} pairs registered"
            + (f" ({kept} complete before, kept; --force registers them again)" if kept else "")
            + (f"; failed: {', '.join(failed)}" if failed else "")
            + f". Summary: {args.output / SUMMARY_FILE}"
        )
        return EXIT_SOME_FAILED if failed else EXIT_OK

    return guarded(run)
