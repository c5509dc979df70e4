"""Hard cases: success with and without automatic recovery, and how well the verdict flags failures.

Cases: large rotations (up to 90 degrees), translations beyond 50 mm, images that do not overlap at
all before initialization (moving field of view 300 mm away), and partial fields of view (a thin
moving slab). Each case runs the pipeline twice (recovery off / on). Verdict quality: results with
error above 5 mm must be flagged ``failed`` or ``questionable``; results under 2 mm should be ``good``.

    python Testing/Benchmarks/bench_verdict.py [--cases 4] [--coarsen 2.0] [--engine simpleitk]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import mean_tre, print_table, register_case, write_json

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.errors import OneClickError, first_line
from OneClickRegistrationLib.options import RegistrationOptions

PAIRS = [("T1", "T2"), ("T1", "CT"), ("T1", "FLAIR"), ("T1", "T1")]


@dataclass(frozen=True)
class HardCase:
    kind: str
    fixed: str
    moving: str
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    fov_shift_mm: tuple[float, float, float]
    moving_fov_mm: tuple[float, float, float] | None
    seed: int


def hard_cases(per_kind: int, seed: int = 7) -> list[HardCase]:
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(per_kind):
        fixed, moving = PAIRS[i % len(PAIRS)]

        def rot(limit: float) -> tuple[float, float, float]:
            angles = rng.uniform(-limit / 3, limit / 3, 3)
            angles[rng.integers(0, 3)] = rng.choice([-1, 1]) * rng.uniform(0.66 * limit, limit)
            return tuple(np.round(angles, 1))  # type: ignore[return-value]

        def trans(low: float, high: float) -> tuple[float, float, float]:
            v = rng.normal(size=3)
            return tuple(np.round(v / np.linalg.norm(v) * rng.uniform(low, high), 1))  # type: ignore[return-value]

        s = int(rng.integers(0, 2**31))
        cases.append(HardCase("large-rotation", fixed, moving, rot(90.0), trans(5, 20), (0, 0, 0), None, s))
        cases.append(
            HardCase("large-translation", fixed, moving, rot(20.0), trans(50, 80), trans(0, 15), None, s + 1)
        )
        cases.append(
            HardCase(
                "no-initial-overlap",
                fixed,
                moving,
                rot(25.0),
                # the moving head (and its field of view) lies 390 mm away from the fixed one
                tuple(np.add(trans(5, 30), (300.0, -200.0, 150.0))),  # type: ignore[arg-type]
                (0.0, 0.0, 0.0),
                None,
                s + 2,
            )
        )
        cases.append(
            HardCase(
                "partial-fov", fixed, moving, rot(20.0), trans(5, 25), (0, 0, 0), (220.0, 230.0, 70.0), s + 3
            )
        )
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="cases per kind")
    parser.add_argument("--coarsen", type=float, default=2.0)
    parser.add_argument("--engine", default=None, help="default: the preset's engines, with fallback")
    args = parser.parse_args()
    records = []
    for index, case in enumerate(hard_cases(args.cases)):
        pair = synthetic.make_pair(
            case.fixed,
            case.moving,
            rotation_deg=case.rotation_deg,
            translation_mm=case.translation_mm,
            moving_fov_shift_mm=case.fov_shift_mm,
            moving_fov_mm=case.moving_fov_mm,
            coarsen=args.coarsen,
            seed=case.seed,
        )
        for recover in (False, True):
            start = time.perf_counter()
            try:
                result = register_case(pair, RegistrationOptions(engine=args.engine, recover=recover))
            except OneClickError as exc:  # an engine failure is a data point, not the end of the run
                record = {"case": index, "kind": case.kind, "pair": f"{case.moving}->{case.fixed}",
                          "recover": recover, "tre_mm": float("inf"), "verdict": "error",
                          "reasons": [first_line(exc)], "evidence": {}, "attempts": 0,
                          "seconds": time.perf_counter() - start, "rotation_deg": case.rotation_deg,
                          "translation_mm": case.translation_mm}
            else:
                record = {"case": index, "kind": case.kind, "pair": f"{case.moving}->{case.fixed}",
                          "recover": recover, "tre_mm": mean_tre(result.transform, pair),
                          "verdict": result.verdict.label, "reasons": list(result.verdict.reasons),
                          "evidence": dict(result.verdict.evidence), "attempts": len(result.attempts),
                          "seconds": time.perf_counter() - start, "rotation_deg": case.rotation_deg,
                          "translation_mm": case.translation_mm}
            records.append(record)
            print(
                f"{index:3d} {case.kind:19s} {record['pair']:10s} recover={recover!s:5s} "
                f"TRE {record['tre_mm']:7.2f} mm  {record['verdict']:12s} {record['seconds']:6.1f} s",
                flush=True,
            )
    rows = []
    for kind in [*sorted({r["kind"] for r in records}), "all"]:
        for recover in (False, True):
            sel = [r for r in records if r["recover"] == recover and (kind == "all" or r["kind"] == kind)]
            if not sel:
                continue
            bad = [r for r in sel if r["tre_mm"] > 5.0]
            good = [r for r in sel if r["tre_mm"] < 2.0]
            rows.append(
                {
                    "kind": kind,
                    "recover": recover,
                    "cases": len(sel),
                    "success_rate": len(good) / len(sel),
                    "median_tre_mm": float(np.median([r["tre_mm"] for r in sel])),
                    "errors_over_5mm": len(bad),
                    "of_which_flagged": sum(r["verdict"] != "good" for r in bad),
                    "good_results": len(good),
                    "good_wrongly_flagged": sum(r["verdict"] != "good" for r in good),
                    "median_s": float(np.median([r["seconds"] for r in sel])),
                }
            )
    print()
    print_table(
        rows,
        [
            "kind",
            "recover",
            "cases",
            "success_rate",
            "median_tre_mm",
            "errors_over_5mm",
            "of_which_flagged",
            "good_results",
            "good_wrongly_flagged",
            "median_s",
        ],
    )
    payload = {"coarsen": args.coarsen, "engine": args.engine, "rows": rows, "records": records}
    print(f"\nwrote {write_json('bench_verdict', payload)}")


if __name__ == "__main__":
    main()
