"""Whole-process speed: the one-click command against SlicerElastix's default rigid, case by case.

Both sides run as separate processes on the same input files, alternately (the order swaps from
case to case), so a machine shared with other work slows both alike:

* **ours**: ``python -m OneClickRegistrationLib.cli FIXED MOVING -o OUT --quiet`` (detection,
  masks, registration, scoring, verdict, recovery when needed, and all four outputs);
* **peer**: SlicerElastix's ``Parameters_Rigid.txt`` run by the same ``elastix`` executable,
  ``elastix -f FIXED -m MOVING -p Parameters_Rigid.txt -out OUT`` (the file makes elastix write its
  result image too).

Wall time is the whole process, reading and writing included; peak memory is the largest resident
set of the process tree (``ru_maxrss`` of the child, as ``/usr/bin/time -v`` reports it). Cases
are synthetic heads on clinical grids (T1 1 mm 256x256x192, T2 0.5x0.5x3 mm, FLAIR 0.9x0.9x5 mm,
CT 0.5x0.5x2.5 mm 512x512x88) with known misalignments, so each side's error is also given; the
large case is a 0.5 mm CT of 512x512x300 with a 1 mm T1. Our per-stage breakdown (report.json's
``timings_s``) is printed per case. Load average is recorded with the figures: rely on ratios.

Run: ``python Testing/Benchmarks/bench_speed.py --peers DIR [--quick] [--case MOVING->FIXED ...]``;
writes ``results/bench_speed.json`` (``--quick``, two cases on grids coarsened twofold, and ``--case``,
the named cases only, write nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.engines.base import EngineSettings
from OneClickRegistrationLib.engines.elastix_engine import (
    ElastixEngine,
    transform_from_parameter_file,
)
from OneClickRegistrationLib.stage_times import STAGES

PEER_PARAMETER_FILE = "Parameters_Rigid.txt"
OURS, PEER = "ours", "SlicerElastix default rigid"
TIME = shutil.which("time") or "/usr/bin/time"  # GNU time: the peak resident set of a command

# Clinical grids: spacing (mm) and size in voxels.
GRIDS: dict[str, tuple[tuple[float, float, float], tuple[int, int, int]]] = {
    "T1": ((1.0, 1.0, 1.0), (256, 256, 192)),
    "T2": ((0.5, 0.5, 3.0), (448, 448, 50)),
    "FLAIR": ((0.9, 0.9, 5.0), (256, 256, 34)),
    "CT": ((0.5, 0.5, 2.5), (512, 512, 88)),
    "CT_LARGE": ((0.5, 0.5, 0.5), (512, 512, 300)),
}
# (fixed grid, moving grid) per case; modalities are the grids' names (CT_LARGE is a CT).
CASES = (("T1", "T2"), ("T1", "FLAIR"), ("T1", "CT"), ("CT", "T1"), ("T2", "FLAIR"), ("FLAIR", "T1"))
QUICK_CASES = (("T1", "T2"), ("T1", "CT"))
LARGE_CASE = ("CT_LARGE", "T1")


@dataclass(frozen=True)
class ProcessRun:
    seconds: float
    peak_mb: float
    returncode: int
    output: str


def run_process(args: list[str]) -> ProcessRun:
    """Run ``args`` to the end; its wall time and the peak resident set of its process tree.

    Measured through ``/usr/bin/time``: a child forked from this (large) process would otherwise
    report this process's resident set as its own peak.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as usage:
        began = time.perf_counter()
        done = subprocess.run([TIME, "-f", "%M", "-o", usage.name, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - began
        peak_kb = float(usage.read().strip().splitlines()[-1])
    return ProcessRun(seconds, peak_kb / 1024.0, done.returncode, done.stdout.decode(errors="replace"))


def _modality(grid: str) -> str:
    return "CT" if grid.startswith("CT") else grid


def make_files(fixed_grid: str, moving_grid: str, seed: int, folder: Path, *, scale: float) -> synthetic.SyntheticPair:
    """A synthetic pair on the two clinical grids (``scale`` > 1 coarsens both), written as .mha."""
    rng = np.random.default_rng(seed)
    rotation = tuple(float(v) for v in rng.uniform(-15.0, 15.0, 3))
    translation = tuple(float(v) for v in rng.uniform(-20.0, 20.0, 3))
    subject = synthetic.make_subject(resolution_mm=1.0)
    center = subject.head_center
    truth = synthetic.rigid_transform(rotation, translation, center)  # type: ignore[arg-type]

    def grid(name: str, around: tuple[float, float, float]) -> synthetic.Grid:
        spacing, size = GRIDS[name]
        fov = tuple(n * s for n, s in zip(size, spacing))
        return synthetic.Grid.centered(around, fov, tuple(s * scale for s in spacing))  # type: ignore[arg-type]

    moved_center = tuple(float(v) for v in truth.TransformPoint(center))
    fixed = synthetic.render(_modality(fixed_grid), grid(fixed_grid, center), seed=seed)
    moving = synthetic.render(_modality(moving_grid), grid(moving_grid, moved_center),  # type: ignore[arg-type]
                              image_to_reference=truth.GetInverse(), seed=seed + 1)
    sitk.WriteImage(fixed, str(folder / "fixed.mha"))
    sitk.WriteImage(moving, str(folder / "moving.mha"))
    return synthetic.SyntheticPair(fixed=fixed, moving=moving, truth=truth,
                                   brain_points=synthetic.brain_points(subject, count=2000, seed=seed),
                                   fixed_modality=synthetic.parse_modality(_modality(fixed_grid)),
                                   moving_modality=synthetic.parse_modality(_modality(moving_grid)))


def run_ours(folder: Path, fixed_mod: str, moving_mod: str) -> tuple[ProcessRun, dict[str, object]]:
    out = folder / "ours"
    run = run_process([sys.executable, "-m", "OneClickRegistrationLib.cli", str(folder / "fixed.mha"),
                       str(folder / "moving.mha"), "-o", str(out), "--quiet",
                       "--fixed-modality", fixed_mod, "--moving-modality", moving_mod])
    report: dict[str, object] = {}
    if run.returncode == 0:
        report = json.loads((out / "report.json").read_text())
        report["_transform"] = sitk.ReadTransform(str(out / "transform.tfm"))
    return run, report


def run_peer(folder: Path, parameters: Path, elastix: str) -> tuple[ProcessRun, sitk.Transform | None]:
    out = folder / "peer"
    out.mkdir()
    run = run_process([elastix, "-f", str(folder / "fixed.mha"), "-m", str(folder / "moving.mha"),
                       "-p", str(parameters), "-out", str(out)])
    if run.returncode != 0:
        return run, None
    # Debian's elastix writes no ITK transform file: read its own parameter file.
    return run, transform_from_parameter_file(out / "TransformParameters.0.txt", rigid=True)


def _parse_case(text: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    """``MOVING->FIXED`` (as the table prints a case) as (fixed grid, moving grid)."""
    moving, _, fixed = text.partition("->")
    if moving not in GRIDS or fixed not in GRIDS:
        parser.error(f"--case expects MOVING->FIXED with grids among {', '.join(GRIDS)}; received {text!r}")
    return fixed, moving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="two cases on grids coarsened twofold, no large case (while developing)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--no-large", action="store_true", help="skip the large CT case")
    parser.add_argument("--case", action="append", default=None, metavar="MOVING->FIXED",
                        help="run only this case (repeatable), e.g. T2->T1 or T1->CT_LARGE; grids: "
                             + ", ".join(GRIDS) + "; writes no results file")
    bc.add_peers_option(parser)
    args = parser.parse_args(argv)
    parameters = bc.locate_peer(PEER_PARAMETER_FILE, PEER, args.peers)
    elastix = str(ElastixEngine(EngineSettings()).executable())
    cases = list(QUICK_CASES if args.quick else CASES)
    if not (args.quick or args.no_large):
        cases.append(LARGE_CASE)
    if args.case:
        cases = [_parse_case(text, parser) for text in args.case]
    scale = 2.0 if args.quick else 1.0
    # One untimed run of each method first, on the first case's grids coarsened fourfold: the first
    # process after an install or an update compiles bytecode and reads programs and libraries from
    # disk (measured: 9.6 s for a case that then took 6-7 s); the timed runs compare steady states.
    warm = Path(tempfile.mkdtemp(prefix="bench-speed-warm-"))
    try:
        make_files(cases[0][0], cases[0][1], args.seed, warm, scale=4.0)
        run_ours(warm, _modality(cases[0][0]), _modality(cases[0][1]))
        if parameters is not None:
            run_peer(warm, parameters, elastix)
    finally:
        shutil.rmtree(warm, ignore_errors=True)
    load_before = os.getloadavg()
    rows: list[dict[str, object]] = []
    for index, (fixed_grid, moving_grid) in enumerate(cases):
        folder = Path(tempfile.mkdtemp(prefix="bench-speed-"))
        try:
            pair = make_files(fixed_grid, moving_grid, args.seed + index, folder, scale=scale)
            fixed_mod, moving_mod = _modality(fixed_grid), _modality(moving_grid)
            load = os.getloadavg()[0]
            order = ("ours", "peer") if index % 2 == 0 else ("peer", "ours")
            runs: dict[str, object] = {}
            for side in order:
                if side == "ours":
                    runs["ours"] = run_ours(folder, fixed_mod, moving_mod)
                elif parameters is not None:
                    runs["peer"] = run_peer(folder, parameters, elastix)
            ours_run, report = runs["ours"]  # type: ignore[misc]
            row: dict[str, object] = {
                "case": f"{moving_grid}->{fixed_grid}",
                "fixed_size": list(pair.fixed.GetSize()), "moving_size": list(pair.moving.GetSize()),
                "load_1min": round(load, 1),
                "ours_s": round(ours_run.seconds, 2), "ours_peak_mb": round(ours_run.peak_mb),
                "ours_ok": ours_run.returncode == 0,
            }
            if report:
                row["ours_tre_mm"] = round(bc.mean_tre(report["_transform"], pair), 2)  # type: ignore[arg-type]
                row["verdict"] = report.get("verdict")
                row["attempts"] = len(report.get("attempts", []))  # type: ignore[arg-type]
                row["timings_s"] = report.get("timings_s")
            else:
                row["ours_error"] = ours_run.output.strip().splitlines()[-1:] or ["?"]
            if "peer" in runs:
                peer_run, peer_transform = runs["peer"]  # type: ignore[misc]
                row.update(peer_s=round(peer_run.seconds, 2), peer_peak_mb=round(peer_run.peak_mb),
                           peer_ok=peer_run.returncode == 0,
                           ratio=round(ours_run.seconds / peer_run.seconds, 2))
                if peer_transform is not None:
                    row["peer_tre_mm"] = round(bc.mean_tre(peer_transform, pair), 2)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "timings_s"}), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    regular = [r for r in rows if not str(r["case"]).startswith(LARGE_CASE[1] + "->" + LARGE_CASE[0])]
    print()
    bc.print_table(rows, ["case", "load_1min", "ours_s", "peer_s", "ratio", "ours_peak_mb", "peer_peak_mb",
                          "ours_tre_mm", "peer_tre_mm", "verdict", "attempts"])
    print("\nOur time per stage (s):")
    stage_rows = [{"case": r["case"], **(r.get("timings_s") or {})} for r in rows]  # type: ignore[dict-item]
    bc.print_table(stage_rows, ["case", *STAGES])
    ratios = [float(r["ratio"]) for r in regular if "ratio" in r]  # type: ignore[arg-type]
    summary = {
        "median_ours_s": statistics.median(float(r["ours_s"]) for r in regular) if regular else None,  # type: ignore[arg-type]
        "median_ratio": statistics.median(ratios) if ratios else None,
        "load_average_before": [round(v, 1) for v in load_before],
        "load_average_after": [round(v, 1) for v in os.getloadavg()],
        "cores": os.cpu_count(),
    }
    large = [r for r in rows if r not in regular]
    if large:
        summary["large_case_s"] = large[0]["ours_s"]
        summary["large_case_peak_mb"] = large[0]["ours_peak_mb"]
    print("\n" + "  ".join(f"{k}={v}" for k, v in summary.items()))
    if args.quick or args.case:  # a development check: its figures are not kept
        return 0
    path = bc.write_json("bench_speed", {"peer_parameters": parameters.name, "summary": summary, "cases": rows})
    print(f"Results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
