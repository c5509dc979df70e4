"""Register every pair of volumes in a folder with One-Click Registration, from Slicer's command line.

    Slicer --no-main-window --python-script batch_register_folder.py INPUT OUTPUT [options]

INPUT holds one sub-folder per case with two volumes named ``fixed.*`` and ``moving.*`` (NRRD, NIfTI,
MHA, ...); a modality word after an underscore or dash (``fixed_T1w.nii.gz``, ``moving-CT.nrrd``)
helps modality detection (``--fixed-modality``/``--moving-modality`` override it). Or pass
``--pairs PAIRS.csv`` (the file ``oneclick-register batch`` reads: columns ``name,fixed,moving``,
relative paths read from the CSV's folder) and any INPUT folder.

This is ``oneclick-register batch`` on the files of a folder: the same code registers each case into
``OUTPUT/<case>/`` (``transform.tfm``: ITK text, LPS, fixed -> moving, the file Slicer writes for the
moving volume's transform; ``registered.nrrd``, ``report.json``, ``overlay.png``) and writes the
same ``OUTPUT/summary.csv``, one row per case. A failing case is a row with its error and the batch
goes on; cases whose outputs are complete are kept unless ``--force``. Exit status: 0 when every case
succeeded, 1 when any failed, 2 for a usage error, 130 when interrupted.

``--workers N`` registers N cases at a time on a local Dask cluster of N processes (they inherit the
engines found here); ``--scheduler ADDRESS`` sends the cases to a running Dask cluster, whose workers
need the core and the engines installed and the folders on a shared filesystem. Both need the
``distributed`` package (``pip install "oneclick-registration[cluster]"``, or Slicer's
``slicer.util.pip_install("distributed")``). ``--threads T`` sets the threads per case (default: the
cores shared among the cases running at a time).

Inside Slicer the engines Slicer extensions bundle (SlicerElastix, SlicerANTs, BRAINSFit) are used;
outside Slicer (any Python with the core installed, as the tests run it) those on the machine are.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from OneClickRegistrationLib.batch import OK, SUMMARY_FILE, Pair, read_pairs, register_batch
from OneClickRegistrationLib.batch_cluster import batch_client
from OneClickRegistrationLib.errors import OneClickError
from OneClickRegistrationLib.options import RegistrationOptions

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".hdr")


def _volume_named(folder: Path, stem: str) -> Path | None:
    found = [p for p in sorted(folder.iterdir())
             if p.is_file() and p.name.lower().startswith((stem + ".", stem + "_", stem + "-"))
             and any(p.name.lower().endswith(s) for s in VOLUME_SUFFIXES)]
    return found[0] if found else None


def find_pairs(input_dir: Path) -> list[Pair]:
    """One pair per sub-folder; a missing volume is an empty path (reported as that case's error)."""
    pairs = []
    for sub in sorted(input_dir.iterdir()):
        if sub.is_dir():
            fixed, moving = _volume_named(sub, "fixed"), _volume_named(sub, "moving")
            pairs.append(Pair(name=sub.name, fixed=str(fixed or ""), moving=str(moving or ""),
                              origin=f"the case folder {str(sub)!r}"))
    return pairs


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="batch_register_folder.py", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="folder with one sub-folder (fixed.*, moving.*) per case")
    parser.add_argument("output", type=Path, help="folder for the cases' outputs and summary.csv")
    parser.add_argument("--pairs", type=Path, help="PAIRS.csv (name,fixed,moving) instead of sub-folders")
    parser.add_argument("--engine", default=None, help="simpleitk/elastix/ants/brainsfit (default: preset)")
    parser.add_argument("--transform", choices=("rigid", "affine"), default="rigid")
    parser.add_argument("--fixed-modality", default=None, help="T1, T2, FLAIR, CT or MR (default: detect)")
    parser.add_argument("--moving-modality", default=None, help="T1, T2, FLAIR, CT or MR (default: detect)")
    parser.add_argument("--force", action="store_true", help="register again cases whose outputs are complete")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N", help="register N cases at a time on a local Dask cluster")
    where.add_argument("--scheduler", metavar="ADDRESS", help="register the cases on the Dask scheduler at ADDRESS")
    parser.add_argument("--threads", type=int, metavar="T", help="threads per case (default: cores shared)")
    return parser.parse_args([a for a in argv if a != "--"])


def configure_slicer_engines() -> None:
    """Inside Slicer, point the core at the engines Slicer's extensions bundle (nothing to do outside)."""
    try:
        from OneClickRegistration import OneClickRegistrationLogic
    except ImportError:  # not inside Slicer
        return
    OneClickRegistrationLogic().configureEngines()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed by argparse
        return int(stop.code or 0)
    try:
        pairs = read_pairs(args.pairs) if args.pairs else find_pairs(args.input)
    except (OSError, OneClickError) as error:
        print(f"batch_register_folder: {error}", file=sys.stderr)
        return 2
    if not pairs:
        print(f"batch_register_folder: no case found in {args.pairs or args.input}", file=sys.stderr)
        return 2
    modalities = {"fixed_modality": args.fixed_modality, "moving_modality": args.moving_modality}
    pairs = [replace(p, **{k: v for k, v in modalities.items() if v}) for p in pairs]
    configure_slicer_engines()
    try:
        options = RegistrationOptions(engine=args.engine, transform=args.transform, threads=args.threads)
        with batch_client(workers=args.workers, scheduler=args.scheduler) as client:
            outcomes = register_batch(pairs, args.output, options=options, force=args.force, client=client)
    except OneClickError as error:  # a bad thread count, no distributed package, no scheduler there
        print(f"batch_register_folder: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"batch_register_folder: interrupted; summary in {args.output / SUMMARY_FILE}", file=sys.stderr)
        return 130
    failed = sum(o.row["status"] != OK for o in outcomes)
    print(f"{len(outcomes) - failed} of {len(outcomes)} cases registered; summary in {args.output / SUMMARY_FILE}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
