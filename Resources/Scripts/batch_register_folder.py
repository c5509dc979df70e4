"""Register every pair of volumes in a folder with One-Click Registration, from Slicer's command line.

    Slicer --no-main-window --python-script batch_register_folder.py INPUT OUTPUT [options]

INPUT holds one sub-folder per case with two volumes named ``fixed.*`` and ``moving.*`` (NRRD, NIfTI,
MHA, ...); a modality word after an underscore or dash (``fixed_T1w.nii.gz``, ``moving-CT.nrrd``) is
helps modality detection (``--fixed-modality``/``--moving-modality`` override it). Or pass
``--pairs PAIRS.csv`` (columns ``case,fixed,moving``; relative paths are read from the CSV's folder)
and any INPUT folder.

For each case, ``OUTPUT/<case>/`` receives ``transform.tfm`` (ITK text, LPS, fixed -> moving: the file
Slicer writes for the moving volume's transform, readable by ITK/SimpleITK/ANTs tools), ``report.json``
and, with ``--resampled``, ``moving_registered.nrrd``. ``OUTPUT/results.csv`` gets one row per case,
rewritten after every case. A failing case is recorded with its error and the batch goes on. Exit
status: 0 when every case succeeded, 1 when any failed, 2 for a usage error.

The script also runs outside Slicer with the ``slicer-core`` wheel (the tests do that); inside Slicer
it uses the module's logic, so bundled engines (SlicerElastix, BRAINSFit) are found.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".hdr")
CSV_COLUMNS = (
    "case", "status", "fixed_file", "moving_file", "fixed_modality", "moving_modality", "preset", "engine",
    "metric", "score_before", "score_after", "verdict", "reasons", "time_s", "transform_file", "error",
)


def _volume_named(folder: Path, stem: str) -> Path | None:
    found = [p for p in sorted(folder.iterdir())
             if p.is_file() and p.name.lower().startswith((stem + ".", stem + "_", stem + "-"))
             and any(p.name.lower().endswith(s) for s in VOLUME_SUFFIXES)]
    return found[0] if found else None


def find_pairs(input_dir: Path) -> list[tuple[str, Path | None, Path | None]]:
    """(case, fixed, moving) for every sub-folder; a missing file is None (reported as that case's error)."""
    return [(sub.name, _volume_named(sub, "fixed"), _volume_named(sub, "moving"))
            for sub in sorted(input_dir.iterdir()) if sub.is_dir()]


def read_pairs_csv(path: Path) -> list[tuple[str, Path | None, Path | None]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"case", "fixed", "moving"} <= set(rows[0]):
        raise ValueError(f"{path} must have the columns case,fixed,moving; it has {', '.join(rows[0])}.")
    return [(r["case"], (path.parent / r["fixed"]).resolve(), (path.parent / r["moving"]).resolve())
            for r in rows]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="batch_register_folder.py", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="folder with one sub-folder (fixed.*, moving.*) per case")
    parser.add_argument("output", type=Path, help="folder for the transforms, reports and results.csv")
    parser.add_argument("--pairs", type=Path, help="CSV (case,fixed,moving) instead of sub-folders")
    parser.add_argument("--engine", default=None, help="simpleitk/elastix/ants/brainsfit (default: preset)")
    parser.add_argument("--transform", choices=("rigid", "affine"), default="rigid")
    parser.add_argument("--fixed-modality", default=None, help="T1, T2, FLAIR, CT or MR (default: detect)")
    parser.add_argument("--moving-modality", default=None, help="T1, T2, FLAIR, CT or MR (default: detect)")
    parser.add_argument("--resampled", action="store_true", help="also save the resampled moving volume")
    return parser.parse_args([a for a in argv if a != "--"])


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    partial = path.with_name(f".partial-{path.name}")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


RegisterCase = Callable[[str, Path, Path, Path], dict[str, Any]]


def register_all(pairs: Sequence[tuple[str, Path | None, Path | None]], output: Path,
                 register_case: RegisterCase) -> list[dict[str, Any]]:
    """Run every case, recording failures instead of stopping; rewrites results.csv after each case."""
    output.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for case, fixed, moving in pairs:
        row: dict[str, Any] = {"case": case, "fixed_file": fixed or "", "moving_file": moving or ""}
        try:
            if fixed is None or moving is None or not fixed.is_file() or not moving.is_file():
                raise FileNotFoundError(f"case {case!r} needs a fixed.* and a moving.* volume "
                                        f"(found fixed={fixed}, moving={moving}).")
            row.update(register_case(case, fixed, moving, output / case), status="ok")
        except Exception as error:  # one bad case must not stop the batch
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            row.update(status="error", error=message)
        rows.append(row)
        print(f"{case}: {row['status']} {row.get('verdict', '')} {row.get('error', '')}".rstrip(), flush=True)
        write_csv(rows, output / "results.csv")
    return rows


def slicer_case_runner(args: argparse.Namespace) -> RegisterCase:
    """Loads, registers and saves one case with MRML nodes (Slicer, or the slicer-core wheel)."""
    import slicer

    from OneClickRegistrationSlicer import registration as glue
    from OneClickRegistrationSlicer.results_table import resultRow

    scene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()
    try:  # inside Slicer: the module's logic (configures SlicerElastix, BRAINSFit...)
        from OneClickRegistration import OneClickRegistrationLogic

        register_nodes = OneClickRegistrationLogic().register
    except ImportError:  # slicer-core wheel: the same glue, without Slicer's bundled engines
        register_nodes = glue.registerNodes
    options = {"engine": args.engine, "transform": args.transform,
               "fixed_modality": args.fixed_modality, "moving_modality": args.moving_modality}

    def run(case: str, fixed_file: Path, moving_file: Path, case_dir: Path) -> dict[str, Any]:
        created = []
        try:
            fixed = glue.loadVolumeFile(scene, str(fixed_file))
            created.append(fixed)
            moving = glue.loadVolumeFile(scene, str(moving_file))
            created.append(moving)
            applied = register_nodes(fixed, moving, createResampledVolume=args.resampled, showResult=False,
                                     **options)
            created += [applied.transformNode, applied.resampledNode]
            case_dir.mkdir(parents=True, exist_ok=True)
            transform_file = case_dir / "transform.tfm"
            glue.saveNodeToFile(applied.transformNode, str(transform_file))
            if applied.resampledNode is not None:
                glue.saveNodeToFile(applied.resampledNode, str(case_dir / "moving_registered.nrrd"))
            (case_dir / "report.json").write_text(json.dumps(applied.outcome.report, indent=2),
                                                  encoding="utf-8")
            row = resultRow(applied.outcome, fixedName=fixed_file.name, movingName=moving_file.name)
            return {
                "fixed_modality": row["Fixed modality"], "moving_modality": row["Moving modality"],
                "preset": row["Preset"], "engine": row["Engine"], "metric": row["Metric"],
                "score_before": row["Score before"], "score_after": row["Score after"],
                "verdict": row["Verdict"], "reasons": row["Reasons"], "time_s": round(row["Time (s)"], 2),
                "transform_file": str(transform_file),
            }
        finally:
            for node in created:
                if node is not None and node.GetScene() is scene:
                    scene.RemoveNode(node)

    return run


def main(argv: Sequence[str] | None = None, register_case: RegisterCase | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed by argparse
        return int(stop.code or 0)
    try:
        pairs = read_pairs_csv(args.pairs) if args.pairs else find_pairs(args.input)
    except (OSError, ValueError) as error:
        print(f"batch_register_folder: {error}", file=sys.stderr)
        return 2
    if not pairs:
        print(f"batch_register_folder: no case found in {args.pairs or args.input}", file=sys.stderr)
        return 2
    rows = register_all(pairs, args.output, register_case or slicer_case_runner(args))
    failed = sum(row["status"] != "ok" for row in rows)
    print(f"{len(rows) - failed} of {len(rows)} cases registered; results in {args.output / 'results.csv'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
