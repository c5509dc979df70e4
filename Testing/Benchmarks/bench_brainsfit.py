"""BRAINSFit against elastix and SimpleITK (and optionally ANTs): same cases, start and images.

For every synthetic case (T1 fixed; T1/T2/FLAIR/CT moving; random misalignments up to 25 deg / 30 mm
and a shifted field of view), the images are prepared as the pipeline prepares them and every engine
starts from the pipeline's centred start (centres of mass of the head masks, without its global
search, so the engines' own capture range is measured). Each engine then
runs once through its adapter, with the preset's transform kind (rigid), no recovery. The order of
the engines alternates from case to case, so none always runs on a warmer machine.

The BRAINSFit executable is found as the adapter finds it (``--brainsfit PATH``, else
``$ONECLICK_BRAINSFIT``, else PATH); without one the benchmark says so and stops.

Run: ``python Testing/Benchmarks/bench_brainsfit.py [--per-pair 2] [--coarsen 1.0] [--engines
brainsfit,elastix,simpleitk]`` (``ants`` may be added). Prints per (engine, pair) success rate (mean
brain TRE < 2 mm), median and largest TRE and median wall time, then per pair the median (and
largest) of the per-case time ratios of BRAINSFit to each other engine. Writes
results/bench_brainsfit.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc

from OneClickRegistrationLib.engines import get_engine
from OneClickRegistrationLib.engines.base import EngineRequest, EngineSettings, RunOptions
from OneClickRegistrationLib.engines.brainsfit_engine import BrainsFitEngine
from OneClickRegistrationLib.preparation import initial_alignment, prepare_pair
from OneClickRegistrationLib.presets import preset_for

PAIRS = [("T1", "T1"), ("T1", "T2"), ("T1", "FLAIR"), ("T1", "CT")]


def engine_run(name: str, settings: EngineSettings | None = None):
    engine = get_engine(name, settings)

    def run(request: EngineRequest) -> sitk.Transform:
        return engine.run(request, RunOptions()).transform

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-pair", type=int, default=2)
    parser.add_argument("--coarsen", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=2031)
    parser.add_argument("--brainsfit", help="the BRAINSFit executable (default: $ONECLICK_BRAINSFIT, PATH)")
    parser.add_argument("--engines", default="brainsfit,elastix,simpleitk",
                        help="comma-separated engines side by side (brainsfit is always one)")
    args = parser.parse_args(argv)

    settings = EngineSettings(executable=args.brainsfit) if args.brainsfit else EngineSettings()
    found = BrainsFitEngine(settings).availability()
    if not found.available:
        print(f"Skipped: {found.detail}")
        return 0
    names = ["brainsfit"] + [n for n in args.engines.split(",") if n.strip() and n.strip() != "brainsfit"]
    engines = {name: engine_run(name, settings if name == "brainsfit" else None) for name in names}
    for name in engines:
        availability = get_engine(name, settings if name == "brainsfit" else None).availability()
        print(f"{name}: {availability.detail}")
    print(f"coarsen {args.coarsen}; {args.per_pair} cases per pair; seed {args.seed}")

    cases = bc.random_cases(PAIRS, args.per_pair, seed=args.seed)
    runs: list[bc.Run] = []
    for index, case in enumerate(cases):
        pair = bc.make_case_pair(case, coarsen=args.coarsen)
        preset = preset_for(case.fixed_modality, case.moving_modality)
        prepared = prepare_pair(pair.fixed, pair.moving, preset)
        request = EngineRequest(fixed=prepared.fixed, moving=prepared.moving, preset=preset,
                                transform_kind=preset.transform,
                                initial_transform=initial_alignment(prepared, preset.initialization,
                                                                    search=False))
        start = bc.mean_tre(request.initial_transform, pair)
        order = list(engines.items())
        if index % 2:
            order.reverse()
        for name, run in order:
            result = bc.timed(name, case.pair_name, index, pair,
                              lambda _pair, run=run, request=request: run(request))  # type: ignore[misc]
            runs.append(result)
            print(f"  case {index:2d} {case.pair_name:10s} {name:10s} start {start:6.2f} mm  TRE "
                  f"{result.tre_mm:8.3f} mm {result.seconds:7.2f} s {result.error}", flush=True)

    rows = bc.summarize(runs)
    print()
    bc.print_table(rows, ["method", "pair", "cases", "success_rate", "median_tre_mm", "max_tre_mm", "median_s"])
    ratios = []
    for _, moving in PAIRS:
        name = f"{moving}->T1"
        row: dict[str, object] = {"pair": name}
        for other in names[1:]:
            per_case = []
            for index in sorted({r.case_index for r in runs if r.pair == name}):
                by_engine = {r.method: r for r in runs if r.case_index == index}
                per_case.append(by_engine["brainsfit"].seconds / by_engine[other].seconds)
            row[f"brainsfit/{other} median"] = statistics.median(per_case)
            row[f"brainsfit/{other} largest"] = max(per_case)
        ratios.append(row)
    print()
    bc.print_table(ratios, list(ratios[0]))
    path = bc.write_json("bench_brainsfit", {
        "settings": vars(args), "brainsfit": "BRAINSFit executable found" if found.available else found.detail,
        "cases": cases, "runs": runs,
        "summary": rows, "time_ratios": ratios,
    })
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

