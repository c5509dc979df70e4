"""This project side by side with its peers, on the same hard cases: error, time, attempts, verdict.

Per case (``synthetic.make_case``: every kind of ``synthetic.CASE_KINDS``, synthetic heads with a
known rigid misalignment over T1/T2/FLAIR/CT pairs):

* ``oneclick``: the one-click default path (``register`` with no engine named: the preset's first
  installed engine, recovery on), with its number of attempts and its verdict;
* ``oneclick-simpleitk``: the same with the embedded SimpleITK engine only (a user without elastix);
* ``SlicerElastix-rigid``: SlicerElastix's default rigid ``Parameters_Rigid.txt``, run by the same
  elastix program the way SlicerElastix runs it (volumes as they are);
* ``greedy``: the ``picsl-greedy`` wheel's documented rigid recipe
  (``-d 3 -a -dof 6 -m NMI -ia-image-centers -n 100x50x10``); its matrix maps fixed to moving points
  in RAS and is converted to ITK's LPS (``F M F``, ``F = diag(-1, -1, 1, 1)``);
* ``SyNQuick-rigid``: the rigid stage of ANTs' ``antsRegistrationSyNQuick.sh -t r`` (its variables
  read from the script at run time), run through antspyx.

The peers' files are read at run time from the folder given by ``--peers DIR`` or
``$ONECLICK_PEERS_DIR`` (``SlicerElastix/.../Parameters_Rigid.txt`` and
``ANTs/Scripts/antsRegistrationSyNQuick.sh`` below it); a peer whose file or program is missing is
skipped with a message.

    python Testing/Benchmarks/bench_peers.py --peers DIR [--quick] [--methods oneclick,greedy,...]

``--quick``: grids coarsened 2x (same physical extent and truth), for development; the full mode
runs on the modalities' real grids. One case per kind (``--per-kind`` for more). Prints one line
per case, then the per-case table (our error over the best peer's, our time over each peer's) and
the success rates; writes ``results/bench_peers.json`` (``--name`` changes the name).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ants_peers as ants_peers
import bench_common as bc
import bench_elastix_peers as elastix_peers

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.engines.base import EngineSettings
from OneClickRegistrationLib.engines.elastix_engine import ElastixEngine
from OneClickRegistrationLib.pipeline import register
from OneClickRegistrationLib.transforms import affine_from_matrix

SLICERELASTIX_FILE = "Parameters_Rigid.txt"
SYNQUICK_SCRIPT = "antsRegistrationSyNQuick.sh"
GREEDY_RIGID = "-d 3 -a -dof 6 -m NMI -ia-image-centers -n 100x50x10"
OURS, OURS_SITK = "oneclick", "oneclick-simpleitk"
SLICERELASTIX, GREEDY, SYNQUICK = "SlicerElastix-rigid", "greedy", "SyNQuick-rigid"
PEERS = (SLICERELASTIX, GREEDY, SYNQUICK)
TARGET_RATIO, TARGET_FLOOR_MM = 1.5, 0.15  # ours <= max(1.5x the best peer, 0.15 mm) per case

_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --- cases -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PeerCase:
    """One generated case: ``synthetic.make_case(kind, seed)``, described in words."""

    kind: str
    seed: int
    pair_name: str
    description: str


def coarsened(image: sitk.Image, factor: float) -> sitk.Image:
    """``image`` on a grid ``factor`` times coarser over the same extent (quick runs only)."""
    if factor == 1.0:
        return image
    spacing = np.asarray(image.GetSpacing()) * factor
    size = [max(4, round(n / factor)) for n in image.GetSize()]
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    corner = np.asarray(image.GetOrigin()) - direction @ (np.asarray(image.GetSpacing()) / 2.0)
    origin = corner + direction @ (spacing / 2.0)
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), float(np.mean(spacing)) / 2.0)
    return sitk.Cast(sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, tuple(origin), tuple(spacing),
                                   image.GetDirection(), float(np.min(sitk.GetArrayViewFromImage(image)))),
                     image.GetPixelID())


def make_cases(*, per_kind: int, kinds: Sequence[str], coarsen: float,
               seed: int = 2026) -> list[tuple[PeerCase, synthetic.SyntheticPair]]:
    """``per_kind`` cases of every kind (seeds ``seed``, ``seed + 1``, ...), built one at a time."""
    cases = []
    for kind in kinds:
        for k in range(per_kind):
            made = synthetic.make_case(kind, seed + k)
            pair = made.pair
            if coarsen != 1.0:
                fixed = coarsened(pair.fixed, coarsen)
                pair = replace(pair, fixed=fixed, moving=fixed if kind == "self" else coarsened(pair.moving, coarsen))
            name = f"{pair.moving_modality.value}->{pair.fixed_modality.value}"
            cases.append((PeerCase(kind, seed + k, name, made.description), pair))
    return cases


# --- running each method -------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One method on one case."""

    method: str
    case_index: int
    kind: str
    pair: str
    tre_mm: float
    seconds: float
    attempts: int | None = None
    verdict: str | None = None
    engine: str | None = None
    engine_s: float | None = None  # ours: the engine's own seconds (report.json's timings_s["engine"])
    error: str = ""

    @property
    def success(self) -> bool:
        return not self.error and self.tre_mm < bc.SUCCESS_MM


def run_ours(pair: synthetic.SyntheticPair, engine: str | None) -> tuple[sitk.Transform, dict[str, object]]:
    result = register(pair.fixed, pair.moving, engine=engine)
    return result.transform, {"attempts": len(result.attempts), "verdict": result.verdict.label,
                              "engine": result.engine, "engine_s": result.timings_s["engine"]}


def run_slicerelastix(pair: synthetic.SyntheticPair, parameters: str, elastix: str) -> sitk.Transform:
    return elastix_peers.run_peer(pair, parameters, elastix, {})


def greedy_to_itk(ras_fixed_to_moving: np.ndarray) -> sitk.AffineTransform:
    """greedy's RAS fixed->moving matrix as an ITK (LPS) fixed->moving transform."""
    return affine_from_matrix(_RAS_FROM_LPS @ ras_fixed_to_moving @ _RAS_FROM_LPS)


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send what native code prints (greedy's per-iteration log) to ``path`` instead of the terminal."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(path, "w") as log:
            os.dup2(log.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def run_greedy(pair: synthetic.SyntheticPair) -> sitk.Transform:
    from picsl_greedy import Greedy3D

    folder = Path(tempfile.mkdtemp(prefix="bench-greedy-"))
    try:
        sitk.WriteImage(pair.fixed, str(folder / "f.nii.gz"))
        sitk.WriteImage(pair.moving, str(folder / "m.nii.gz"))
        with _output_to(folder / "greedy.log"):
            Greedy3D().execute(f"{GREEDY_RIGID} -i {folder / 'f.nii.gz'} {folder / 'm.nii.gz'} "
                               f"-o {folder / 'rigid.mat'}")
        return greedy_to_itk(np.loadtxt(folder / "rigid.mat"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_synquick(pair: synthetic.SyntheticPair, stages: dict[bool, ants_peers.PeerStage]) -> sitk.Transform:
    fixed, moving = sitk.Cast(pair.fixed, sitk.sitkFloat32), sitk.Cast(pair.moving, sitk.sitkFloat32)
    # The script's own rule: its larger-image settings once an image has more than 256 voxels on an axis.
    stage = stages[max(*fixed.GetSize(), *moving.GetSize()) > 256]
    return ants_peers.run_peer(stage, fixed, moving)


def measure(method: str, index: int, case: PeerCase, pair: synthetic.SyntheticPair,
            run: Callable[[synthetic.SyntheticPair], sitk.Transform | tuple[sitk.Transform, dict[str, object]]]
            ) -> Outcome:
    start = time.perf_counter()
    try:
        found = run(pair)
    except Exception as exc:  # a method's failure is a data point
        return Outcome(method, index, case.kind, case.pair_name, float("inf"), time.perf_counter() - start,
                       error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    seconds = time.perf_counter() - start
    transform, extra = found if isinstance(found, tuple) else (found, {})
    return Outcome(method, index, case.kind, case.pair_name, bc.mean_tre(transform, pair), seconds,
                   **extra)  # type: ignore[arg-type]


# --- tables ------------------------------------------------------------------------------------------

def per_case_rows(outcomes: Sequence[Outcome], cases: Sequence[PeerCase]) -> list[dict[str, object]]:
    rows = []
    for index, case in enumerate(cases):
        mine = {o.method: o for o in outcomes if o.case_index == index}
        ours = mine.get(OURS)
        row: dict[str, object] = {"case": index, "kind": case.kind, "pair": case.pair_name}
        if ours is not None:
            row.update(ours_mm=ours.tre_mm, ours_s=ours.seconds, attempts=ours.attempts, verdict=ours.verdict)
        if OURS_SITK in mine:
            row.update(sitk_mm=mine[OURS_SITK].tre_mm, sitk_s=mine[OURS_SITK].seconds,
                       sitk_attempts=mine[OURS_SITK].attempts, sitk_verdict=mine[OURS_SITK].verdict)
        peers = [mine[p] for p in PEERS if p in mine]
        for peer in peers:
            row[f"{peer.method}_mm"] = peer.tre_mm
            row[f"{peer.method}_s"] = peer.seconds
        finite = [p.tre_mm for p in peers if np.isfinite(p.tre_mm)]
        best = min(finite) if finite else None
        row["best_peer_mm"] = best
        if ours is not None and best is not None:
            row["ours_over_best"] = ours.tre_mm / best if best > 0 else None
            row["meets_target"] = bool(ours.tre_mm <= max(TARGET_RATIO * best, TARGET_FLOOR_MM))
            for peer in peers:
                row[f"time_vs_{peer.method}"] = ours.seconds / peer.seconds
                if ours.engine_s is not None:
                    # What the ratio would be if nothing but our engine ran: a floor for the whole run's.
                    row[f"engine_vs_{peer.method}"] = ours.engine_s / peer.seconds
        rows.append(row)
    return rows


def success_rows(outcomes: Sequence[Outcome]) -> list[dict[str, object]]:
    rows = []
    for method in (OURS, OURS_SITK, *PEERS):
        mine = [o for o in outcomes if o.method == method]
        if not mine:
            continue
        finite = [o.tre_mm for o in mine if np.isfinite(o.tre_mm)]
        row: dict[str, object] = {
            "method": method, "cases": len(mine), "success_rate": sum(o.success for o in mine) / len(mine),
            "median_tre_mm": statistics.median(finite) if finite else float("inf"),
            "max_tre_mm": max(finite) if finite else float("inf"),
            "median_s": statistics.median(o.seconds for o in mine),
        }
        if mine[0].attempts is not None:
            row["recovered"] = sum((o.attempts or 0) > 1 for o in mine)
            # Verdict quality: every result more than 5 mm off flagged; no result under 2 mm flagged.
            row["missed_failures"] = sum(o.tre_mm > 5.0 and o.verdict == "good" for o in mine)
            row["false_alarms"] = sum(o.tre_mm < 2.0 and o.verdict not in ("good", None) for o in mine)
        rows.append(row)
    return rows


def _shown(path: Path, peers: Path | None) -> str:
    """A peer's file as written to the results: relative to the peers' folder (no machine paths)."""
    root = peers if peers is not None else Path(os.environ.get(bc.PEERS_ENV, "."))
    try:
        return f"<peers>/{path.relative_to(root).as_posix()}"
    except ValueError:
        return path.name


def _write(name: str, coarsen: float, per_kind: int, sources: dict[str, str], cases: Sequence[PeerCase],
           outcomes: Sequence[Outcome], *, complete: bool) -> Path:
    return bc.write_json(name, {
        "complete": complete, "coarsen": coarsen, "per_kind": per_kind, "success_mm": bc.SUCCESS_MM,
        "sources": sources, "target": {"ratio_to_best_peer": TARGET_RATIO, "floor_mm": TARGET_FLOOR_MM},
        "cases": [asdict(c) for c in cases], "outcomes": [asdict(o) for o in outcomes],
        "per_case": per_case_rows(outcomes, cases), "summary": success_rows(outcomes),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bc.add_peers_option(parser)
    parser.add_argument("--quick", action="store_true", help="grids coarsened 2x (development)")
    parser.add_argument("--per-kind", type=int, default=None, help="cases per kind (default 1)")
    parser.add_argument("--coarsen", type=float, default=None, help="coarsen every grid (quick: 2, full: 1)")
    parser.add_argument("--kinds", default=",".join(synthetic.CASE_KINDS), help="comma-separated case kinds")
    parser.add_argument("--methods", default=",".join((OURS, OURS_SITK, *PEERS)))
    parser.add_argument("--name", default="bench_peers", help="results file name (without .json)")
    args = parser.parse_args(argv)
    coarsen = args.coarsen if args.coarsen is not None else (2.0 if args.quick else 1.0)
    per_kind = args.per_kind if args.per_kind is not None else 1
    methods = set(args.methods.split(","))

    sources: dict[str, str] = {}
    runners: dict[str, Callable[[synthetic.SyntheticPair], object]] = {
        OURS: lambda p: run_ours(p, None),
        OURS_SITK: lambda p: run_ours(p, "simpleitk"),
    }
    elastix = ElastixEngine(EngineSettings())
    parameters = bc.locate_peer(SLICERELASTIX_FILE, SLICERELASTIX, args.peers, wanted=SLICERELASTIX in methods)
    if parameters is not None:
        if elastix.availability().available:
            text, program = parameters.read_text(encoding="utf-8"), str(elastix.executable())
            runners[SLICERELASTIX] = lambda p: run_slicerelastix(p, text, program)
            sources[SLICERELASTIX] = f"{_shown(parameters, args.peers)} with {elastix.availability().detail}"
        else:
            print(f"{SLICERELASTIX}: column skipped, no elastix program ({elastix.availability().detail})")
    try:
        import picsl_greedy  # noqa: F401
    except ImportError:
        print(f"{GREEDY}: column skipped, the picsl-greedy wheel is not installed")
    else:
        runners[GREEDY] = run_greedy
        sources[GREEDY] = f"picsl-greedy: {GREEDY_RIGID}"
    script = bc.locate_peer(SYNQUICK_SCRIPT, SYNQUICK, args.peers, wanted=SYNQUICK in methods)
    if script is not None:
        stages = {large: ants_peers.synquick_rigid(script, large_image=large) for large in (False, True)}
        runners[SYNQUICK] = lambda p: run_synquick(p, stages)
        sources[SYNQUICK] = f"{_shown(script, args.peers)}: {' '.join(stages[False].arguments('F', 'M', 'OUT'))}"
    runners = {m: r for m, r in runners.items() if m in methods}

    kinds = [k for k in args.kinds.split(",") if k]
    print(f"{per_kind} case(s) per kind, kinds {', '.join(kinds)}, grids x{coarsen:g}; "
          f"methods: {', '.join(runners)}\n")
    cases: list[PeerCase] = []
    outcomes: list[Outcome] = []
    for index, (case, pair) in enumerate(make_cases(per_kind=per_kind, kinds=kinds, coarsen=coarsen)):
        cases.append(case)
        line = []
        for method, run in runners.items():
            outcome = measure(method, index, case, pair, run)  # type: ignore[arg-type]
            outcomes.append(outcome)
            extra = (f" {outcome.attempts} att {outcome.verdict}" if outcome.attempts is not None else "")
            line.append(f"{method} {outcome.tre_mm:.2f} mm {outcome.seconds:.1f} s{extra}"
                        + (f" [{outcome.error}]" if outcome.error else ""))
        print(f"case {index:2d} {case.description}\n         " + " | ".join(line), flush=True)

        # Written after every case, so a long run interrupted still leaves its finished cases.
        _write(args.name, coarsen, per_kind, sources, cases, outcomes, complete=False)

    rows = per_case_rows(outcomes, cases)
    columns = ["case", "kind", "pair", "ours_mm", "ours_s", "attempts", "verdict", "sitk_mm", "sitk_s",
               "sitk_attempts", "sitk_verdict", *(f"{p}_mm" for p in PEERS if p in runners), "ours_over_best",
               "meets_target", *(f"time_vs_{p}" for p in PEERS if p in runners),
               *(f"engine_vs_{p}" for p in PEERS if p in runners)]
    print()
    bc.print_table(rows, [c for c in columns if any(c in r for r in rows)])
    print()
    bc.print_table(success_rows(outcomes), ["method", "cases", "success_rate", "median_tre_mm", "max_tre_mm",
                                            "median_s", "recovered", "missed_failures", "false_alarms"])
    met = [r["meets_target"] for r in rows if "meets_target" in r]
    print(f"\nours within max({TARGET_RATIO}x best peer, {TARGET_FLOOR_MM} mm) on {sum(met)}/{len(met)} cases; "
          "time_vs_<peer> = our wall time / the peer's on the same case (< 1: faster).")
    for peer in (p for p in PEERS if p in runners):
        whole = [r[f"time_vs_{peer}"] for r in rows if f"time_vs_{peer}" in r]
        engine = [r[f"engine_vs_{peer}"] for r in rows if f"engine_vs_{peer}" in r]
        if whole and engine:
            print(f"median per-case ratio to {peer}: whole run {statistics.median(whole):.2f}, "
                  f"our engine alone {statistics.median(engine):.2f}")
    path = _write(args.name, coarsen, per_kind, sources, cases, outcomes, complete=True)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
