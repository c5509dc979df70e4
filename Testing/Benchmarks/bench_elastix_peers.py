"""Our Elastix preset against SlicerElastix's default rigid parameter set, same elastix, same cases.

For every synthetic case (T1 fixed; T1/T2/FLAIR/CT moving; random misalignments up to 25 deg / 30 mm):

* **ours**: the one-click pipeline with ``engine="elastix"`` (recovery included, as a user gets it;
  ``--no-recover`` turns it off);
* **peer**: SlicerElastix's ``Parameters_Rigid.txt`` (its "default-rigid" preset), run by the same
  ``elastix`` executable the way SlicerElastix runs it: the volumes as they are, written to .mha,
  then ``elastix -f fixed.mha -m moving.mha -p Parameters_Rigid.txt -out <dir>``.

The peer's file is taken from the folder given with ``--peers DIR`` (or ``$ONECLICK_PEERS_DIR``): a
folder or a SlicerElastix git checkout containing ``Parameters_Rigid.txt`` anywhere below it.
Without it the peer column is skipped with a message.

Run: ``python Testing/Benchmarks/bench_elastix_peers.py --peers DIR [--per-pair 3] [--coarsen 1.0]``.
Prints per (method, pair) success rate (mean brain TRE < 2 mm), median TRE and wall time, then per
pair the medians of two per-case time ratios: ``time_ratio_ours_to_peer`` (whole calls: our pipeline
also detects, prepares, scores, judges and resamples; the peer's parameter file makes elastix write
a B-spline-resampled result image) and ``registration_time_ratio`` (our engine's share against the
peer minus its result-image writing, as elastix reports it). Writes results/bench_elastix_peers.json.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.engines.base import EngineSettings
from OneClickRegistrationLib.engines.elastix_engine import ElastixEngine
from OneClickRegistrationLib.engines.elastix_parameters import transform_from_parameter_file
from OneClickRegistrationLib.options import RegistrationOptions

PAIRS = [("T1", "T1"), ("T1", "T2"), ("T1", "FLAIR"), ("T1", "CT")]
PEER_PARAMETER_FILE = "Parameters_Rigid.txt"
OURS, PEER = "ours (elastix preset)", "SlicerElastix default rigid"


_SAVING = re.compile(r"Time spent on saving the results, applying the final transform etc\.: (\d+) ms")


def run_peer(pair: synthetic.SyntheticPair, parameters: str, elastix: str,
             notes: dict[str, float]) -> sitk.Transform:
    """SlicerElastix's way: volumes as they are to .mha, one -p file, -out folder; read the result.

    ``notes["saving_s"]`` receives the time elastix spent writing its result image (the parameter
    file asks for it), so the time ratio can also be given without it.
    """
    folder = Path(tempfile.mkdtemp(prefix="bench-slicerelastix-"))
    try:
        sitk.WriteImage(pair.fixed, str(folder / "fixed.mha"))
        sitk.WriteImage(pair.moving, str(folder / "moving.mha"))
        (folder / PEER_PARAMETER_FILE).write_text(parameters)
        out = folder / "result-transform"
        out.mkdir()
        done = subprocess.run([elastix, "-f", str(folder / "fixed.mha"), "-m", str(folder / "moving.mha"),
                               "-p", str(folder / PEER_PARAMETER_FILE), "-out", str(out)],
                              capture_output=True, text=True)
        saving = _SAVING.search(done.stdout)
        notes["saving_s"] = int(saving.group(1)) / 1000.0 if saving else 0.0
        if done.returncode != 0:
            tail = [line for line in done.stdout.splitlines() if line.strip()][-3:]
            raise RuntimeError(f"elastix exited with {done.returncode}: {' / '.join(tail)}")
        # Debian's elastix 5.0.1 writes no ITK composite file, so read the elastix result itself.
        return transform_from_parameter_file(out / "TransformParameters.0.txt", rigid=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ours(options: RegistrationOptions) -> Callable[[synthetic.SyntheticPair, dict[str, object]], sitk.Transform]:
    def run(pair: synthetic.SyntheticPair, notes: dict[str, object]) -> sitk.Transform:
        result = bc.register_case(pair, options)
        # The engine's share: the pipeline also detects, prepares, scores, judges and resamples.
        notes["engine_s"] = sum(a.elapsed_s for a in result.attempts)
        notes["attempts"] = len(result.attempts)
        notes["verdict"] = result.verdict.label
        return result.transform

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-pair", type=int, default=3)
    parser.add_argument("--coarsen", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--no-recover", action="store_true", help="our pipeline tries no other starts")
    bc.add_peers_option(parser)
    args = parser.parse_args(argv)

    availability = ElastixEngine(EngineSettings()).availability()
    if not availability.available:
        print(f"Skipped: {availability.detail}")
        return 0
    elastix = str(ElastixEngine(EngineSettings()).executable())
    ours_run = ours(RegistrationOptions(engine="elastix", recover=not args.no_recover))
    peer_file = bc.locate_peer(PEER_PARAMETER_FILE, PEER, args.peers)
    peer_parameters = peer_file.read_text(encoding="utf-8") if peer_file is not None else None
    print(f"{availability.detail}; coarsen {args.coarsen}; {args.per_pair} cases per pair; "
          f"recovery {'off' if args.no_recover else 'on'}")

    cases = bc.random_cases(PAIRS, args.per_pair, seed=args.seed)
    runs: list[bc.Run] = []
    notes: dict[tuple[str, int], dict[str, object]] = {}
    for index, case in enumerate(cases):
        pair = bc.make_case_pair(case, coarsen=args.coarsen)
        mine = notes.setdefault((OURS, index), {})
        methods: list[tuple[str, Callable[[synthetic.SyntheticPair], sitk.Transform]]] = [
            (OURS, lambda p, mine=mine: ours_run(p, mine))]
        if peer_parameters is not None:
            theirs = notes.setdefault((PEER, index), {})
            methods.append((PEER, lambda p, theirs=theirs: run_peer(p, peer_parameters, elastix, theirs)))
        if index % 2:  # alternate the order so neither method always runs on a warmer machine
            methods.reverse()
        for name, method in methods:
            run = bc.timed(name, case.pair_name, index, pair, method)
            runs.append(run)
            extra = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in notes[(name, index)].items())
            print(f"  case {index:2d} {case.pair_name:10s} {name:28s} TRE {run.tre_mm:8.3f} mm "
                  f"{run.seconds:6.2f} s {extra} {run.error}", flush=True)

    rows = bc.summarize(runs)
    print()
    bc.print_table(rows, ["method", "pair", "cases", "success_rate", "median_tre_mm", "max_tre_mm",
                          "median_s"])
    comparison = []
    if peer_parameters is not None:
        for _, moving in PAIRS:
            name = f"{moving}->T1"
            ratios, ratios_registration = [], []
            for index in sorted({r.case_index for r in runs if r.pair == name}):
                mine = next(r for r in runs if r.case_index == index and r.method == OURS)
                theirs = next(r for r in runs if r.case_index == index and r.method == PEER)
                ratios.append(mine.seconds / theirs.seconds)
                # Registration only: our engine's share against the peer without its result image.
                ours_engine = float(notes[(OURS, index)].get("engine_s", mine.seconds))  # type: ignore[arg-type]
                peer_saving = float(notes[(PEER, index)].get("saving_s", 0.0))  # type: ignore[arg-type]
                ratios_registration.append(ours_engine / (theirs.seconds - peer_saving))
            by_method = {r["method"]: r for r in rows if r["pair"] == name}
            comparison.append({
                "pair": name,
                "ours_success": by_method[OURS]["success_rate"],
                "peer_success": by_method[PEER]["success_rate"],
                "ours_median_tre_mm": by_method[OURS]["median_tre_mm"],
                "peer_median_tre_mm": by_method[PEER]["median_tre_mm"],
                "time_ratio_ours_to_peer": statistics.median(ratios),
                "registration_time_ratio": statistics.median(ratios_registration),
            })
        print()
        bc.print_table(comparison, list(comparison[0]))
    path = bc.write_json("bench_elastix_peers", {
        "elastix": availability.detail, "recover": not args.no_recover, "coarsen": args.coarsen,
        "per_pair": args.per_pair, "peer_parameter_file": PEER_PARAMETER_FILE if peer_file else None,
        "success_mm": bc.SUCCESS_MM,
        "cases": cases, "runs": runs, "notes": {f"{m}#{i}": n for (m, i), n in notes.items()}, "summary": rows,
        "comparison": comparison,
    })
    print(f"\nWrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
