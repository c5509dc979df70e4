"""Accuracy and speed of the one-click pipeline against SimpleITK's textbook MI registration.

Synthetic heads (MNI152 tissue maps with CSF, skull and scalp) in T1, T2, FLAIR and CT contrast on
modality-typical grids (thick CT and FLAIR slices, different fields of view) are moved by random
rigid transforms (up to 25 degrees and 30 mm, plus a field-of-view shift) and registered. Success:
mean target registration error over brain points under 2 mm.

    python Testing/Benchmarks/bench_registration.py [--cases 3] [--coarsen 1.0]
        [--engines simpleitk,elastix,ants]

Prints a table and writes Testing/Benchmarks/results/bench_registration.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    make_case_pair,
    print_table,
    random_cases,
    register_case,
    summarize,
    timed,
    write_json,
)

from OneClickRegistrationLib.engines import engine_availability
from OneClickRegistrationLib.options import RegistrationOptions

PAIRS = [("T1", "T1"), ("T1", "T2"), ("T1", "FLAIR"), ("T1", "CT"), ("CT", "T1"), ("T2", "FLAIR")]


def textbook_mi(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """SimpleITK's documented example: geometry-centre start, Mattes MI, gradient descent, 3 levels."""
    f = sitk.Cast(fixed, sitk.sitkFloat32)
    m = sitk.Cast(moving, sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.01, 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=100,
                                         convergenceMinimumValue=1e-6, convergenceWindowSize=10)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(f, m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="random misalignments per pair")
    parser.add_argument("--coarsen", type=float, default=1.0, help="scale voxel spacing (1.0 = real grids)")
    parser.add_argument("--engines", default="simpleitk", help="engines to run, comma-separated")
    parser.add_argument("--pairs", default=",".join(f"{f}:{m}" for f, m in PAIRS))
    parser.add_argument("--no-recover", action="store_true")
    args = parser.parse_args()
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    available = engine_availability()
    engines = [e for e in args.engines.split(",") if available[e].available]
    cases = random_cases(pairs, args.cases)  # type: ignore[arg-type]
    runs = []
    for index, case in enumerate(cases):
        pair = make_case_pair(case, coarsen=args.coarsen)
        for engine in engines:
            options = RegistrationOptions(engine=engine, recover=not args.no_recover)

            def ours(p, options=options):
                return register_case(p, options).transform
            runs.append(timed(f"oneclick[{engine}]", case.pair_name, index, pair, ours))
        runs.append(timed("textbook-sitk-MI", case.pair_name, index, pair,
                          lambda p: textbook_mi(p.fixed, p.moving)))
        latest = runs[-len(engines) - 1:]
        print(f"case {index + 1}/{len(cases)} {case.pair_name} "
              f"rot={case.rotation_deg} t={case.translation_mm}: "
              + ", ".join(f"{r.method} {r.tre_mm:.2f} mm {r.seconds:.1f} s{' ' + r.error if r.error else ''}"
                          for r in latest), flush=True)
    rows = summarize(runs)
    baseline = {r["pair"]: r["median_s"] for r in rows if r["method"] == "textbook-sitk-MI"}
    for row in rows:
        ref = baseline.get(row["pair"])
        row["time_vs_textbook"] = row["median_s"] / ref if ref else None
    print()
    print_table(rows, ["method", "pair", "cases", "success_rate", "median_tre_mm", "max_tre_mm", "median_s",
                       "time_vs_textbook"])
    path = write_json("bench_registration", {"coarsen": args.coarsen, "cases": cases, "rows": rows,
                                             "runs": runs, "recover": not args.no_recover})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
