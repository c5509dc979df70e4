"""Shared pieces of the benchmarks: cases with known ground truth, error statistics, table and JSON.

Every benchmark runs the peers side by side in the same process and reports ratios, because this
machine is shared and absolute times are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.errors import first_line
from OneClickRegistrationLib.options import RegistrationOptions
from OneClickRegistrationLib.pipeline import RegistrationResult, register

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SUCCESS_MM = 2.0  # a registration succeeds when its mean brain TRE is under this
PEERS_ENV = "ONECLICK_PEERS_DIR"


# --- the peers' files ----------------------------------------------------------------------------

def add_peers_option(parser: argparse.ArgumentParser) -> None:
    """``--peers DIR``: where the peers' files are (default: ``$ONECLICK_PEERS_DIR``)."""
    parser.add_argument(
        "--peers", type=Path, default=None, metavar="DIR",
        help="a folder or git checkout holding the peers' files (SlicerElastix's Parameters_Rigid.txt, "
             "SlicerANTs' Rigid.json, ANTs' antsRegistrationSyNQuick.sh), found by file name anywhere "
             f"below it; default: ${PEERS_ENV}",
    )


def find_peer_file(name: str, peers: Path | None) -> Path | None:
    """The file called ``name`` anywhere below ``peers`` (else ``$ONECLICK_PEERS_DIR``), or None.

    When several files have that name, the shallowest (then alphabetically first) is used.
    """
    folder = peers if peers is not None else (Path(os.environ[PEERS_ENV]) if os.environ.get(PEERS_ENV) else None)
    if folder is None or not folder.is_dir():
        return None
    matches = sorted((p for p in folder.rglob(name) if p.is_file()), key=lambda p: (len(p.parts), str(p)))
    return matches[0] if matches else None


def locate_peer(name: str, column: str, peers: Path | None, *, wanted: bool = True) -> Path | None:
    """The file called ``name`` for the peer ``column``; prints which file is used or why the column
    is skipped (not asked for, or not found)."""
    if not wanted:
        print(f"{column}: column not asked for")
        return None
    path = find_peer_file(name, peers)
    if path is None:
        print(f"{column}: {name} not found below --peers / ${PEERS_ENV}; column skipped "
              "(pass a folder or git checkout that contains it)")
    else:
        print(f"{column}: {path}")
    return path


# --- our side ------------------------------------------------------------------------------------

def register_case(pair: synthetic.SyntheticPair, options: RegistrationOptions) -> RegistrationResult:
    """Our one-click registration of a synthetic pair, its modalities given (as a user would)."""
    return register(pair.fixed, pair.moving, options=options, fixed_modality=pair.fixed_modality.value,
                    moving_modality=pair.moving_modality.value)


@dataclass(frozen=True)
class Case:
    """One synthetic registration problem with a known rigid misalignment."""

    fixed_modality: str
    moving_modality: str
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    fov_shift_mm: tuple[float, float, float]
    seed: int

    @property
    def pair_name(self) -> str:
        return f"{self.moving_modality}->{self.fixed_modality}"


def random_cases(pairs: Sequence[tuple[str, str]], per_pair: int, *, max_rotation_deg: float = 25.0,
                 max_translation_mm: float = 30.0, max_fov_shift_mm: float = 15.0,
                 seed: int = 2026) -> list[Case]:
    """``per_pair`` random misalignments per pair: each rotation angle and translation component is
    drawn uniformly, then the whole vector is scaled so its largest component is in range."""
    rng = np.random.default_rng(seed)
    cases = []
    for fixed, moving in pairs:
        for _ in range(per_pair):
            rot = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
            trans = rng.uniform(-1.0, 1.0, 3)
            trans = trans / np.linalg.norm(trans) * rng.uniform(0.3, 1.0) * max_translation_mm
            shift = rng.uniform(-max_fov_shift_mm, max_fov_shift_mm, 3)
            cases.append(Case(fixed, moving, _rounded(rot), _rounded(trans), _rounded(shift),
                              int(rng.integers(0, 2**31))))
    return cases


def _rounded(values: np.ndarray) -> tuple[float, float, float]:
    """Plain Python floats (they print and serialize as numbers, not numpy reprs)."""
    x, y, z = (round(float(v), 2) for v in values)
    return x, y, z


def make_case_pair(case: Case, *, coarsen: float = 1.0) -> synthetic.SyntheticPair:
    return synthetic.make_pair(case.fixed_modality, case.moving_modality, rotation_deg=case.rotation_deg,
                               translation_mm=case.translation_mm, moving_fov_shift_mm=case.fov_shift_mm,
                               coarsen=coarsen, seed=case.seed)


def mean_tre(estimated: sitk.Transform, pair: synthetic.SyntheticPair) -> float:
    return float(synthetic.target_registration_error(estimated, pair.truth, pair.brain_points[:500]).mean())


@dataclass
class Run:
    """One method on one case."""

    method: str
    pair: str
    case_index: int
    tre_mm: float
    seconds: float
    error: str = ""

    @property
    def success(self) -> bool:
        return not self.error and self.tre_mm < SUCCESS_MM


def timed(method: str, pair_name: str, index: int, pair: synthetic.SyntheticPair,
          register: Callable[[synthetic.SyntheticPair], sitk.Transform]) -> Run:
    """Run ``register`` on ``pair`` and measure TRE and wall time; failures are recorded, not raised."""
    start = time.perf_counter()
    try:
        transform = register(pair)
    except Exception as exc:  # a peer's failure is a data point
        return Run(method, pair_name, index, float("inf"), time.perf_counter() - start,
                   f"{type(exc).__name__}: {first_line(exc)[:120]}")
    return Run(method, pair_name, index, mean_tre(transform, pair), time.perf_counter() - start)


def summarize(runs: Iterable[Run]) -> list[dict[str, object]]:
    """One row per (method, pair): success rate, median TRE, median time."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.method, run.pair), []).append(run)
    rows = []
    for (method, pair), items in sorted(groups.items()):
        finite = [r.tre_mm for r in items if np.isfinite(r.tre_mm)]
        rows.append({
            "method": method, "pair": pair, "cases": len(items),
            "success_rate": sum(r.success for r in items) / len(items),
            "median_tre_mm": statistics.median(finite) if finite else float("inf"),
            "max_tre_mm": max(finite) if finite else float("inf"),
            "median_s": statistics.median(r.seconds for r in items),
        })
    return rows


def print_table(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> None:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.3g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def write_json(name: str, payload: dict[str, object]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    meta = {"python": sys.version.split()[0], "machine": platform.machine(),
            "sitk": sitk.Version_VersionString(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.write_text(json.dumps({"meta": meta, **payload}, indent=2, default=_jsonable), encoding="utf-8")
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[arg-type]
    return str(value)
