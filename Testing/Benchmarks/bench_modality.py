"""Modality recognition from the pixels alone: synthetic heads with neutral names, across grids,
noise, bias fields, thick slices, cropped fields of view, skull stripping, lesions and tissue
intensities drawn from each contrast's range; CT heads; MR images of objects that are not heads.

Every case is named ``scan_003.nii.gz`` and has no metadata, so only the intensities decide. Two
disjoint seed sets: ``tune`` (the one the thresholds of ``modality_intensity`` were set on) and
``held-out`` (reported). The table per set and contrast gives: correct answers (a contrast for
T1/T2/FLAIR, CT for CT, generic MR for non-head objects), falls back to generic MR, wrong contrast
at confidence >= 0.6, CT<->MR confusions, and the CPU time of the intensity reading; MR heads are
also counted per grid (the modality's typical thick-slice grid vs an isotropic one).
nibabel's real T1 (``anatomical.nii``) is reported on its own line when nibabel is installed.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import print_table, write_json

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.modality import Modality, detect_modality

NEUTRAL_NAME = "scan_003.nii.gz"
CONTRASTS = ("T1", "T2", "FLAIR")
VARIANTS = ("plain", "varied", "stripped", "lesions", "cropped", "rotated")
SEED_SETS = {"tune": 0, "held-out": 100_000}


@dataclass(frozen=True)
class Case:
    truth: str  # T1, T2, FLAIR, CT, or "object" (an MR of something that is not a head)
    grid: str  # "typical" (the modality's usual grid) or "iso" (isotropic, T1-like)
    coarsen: float
    noise: float
    bias: float
    variant: str
    seed: int

    @property
    def expected(self) -> str:
        return "MR" if self.truth == "object" else self.truth


def make_cases(count_per_truth: int, *, base_seed: int, objects: int, cts: int) -> list[Case]:
    rng = np.random.default_rng(base_seed)
    cases = []
    for truth in CONTRASTS:
        for index in range(count_per_truth):
            cases.append(Case(truth, str(rng.choice(["typical", "iso"])), float(rng.choice([1.0, 1.5, 2.0])),
                              float(rng.choice([0.01, 0.03, 0.05])), float(rng.choice([0.1, 0.3])),
                              VARIANTS[index % len(VARIANTS)], base_seed + len(cases)))
    for _ in range(cts):
        cases.append(Case("CT", "typical", float(rng.choice([1.0, 1.5, 2.0])), 0.02, 0.0,
                          str(rng.choice(["varied", "cropped", "stripped"])), base_seed + len(cases)))
    for index in range(objects):
        kind = synthetic.OBJECT_KINDS[index % len(synthetic.OBJECT_KINDS)]
        cases.append(Case("object", kind, 1.5, float(rng.choice([0.01, 0.03])), 0.2, kind,
                          base_seed + len(cases)))
    return cases


def render(case: Case) -> sitk.Image:
    rng = np.random.default_rng(case.seed)
    if case.truth == "object":
        grid = synthetic.Grid.centered((0.0, 0.0, 0.0), (360.0, 280.0, 240.0),
                                       (case.coarsen, case.coarsen, 2.0 * case.coarsen))
        return synthetic.render_object(case.variant, grid, noise=case.noise, bias=case.bias,  # type: ignore[arg-type]
                                       seed=case.seed)
    resolution = max(1.0, min(2.0, case.coarsen))
    subject = synthetic.make_subject(resolution_mm=resolution)
    center = subject.head_center
    grid_modality = case.truth if case.grid == "typical" else "T1"
    fov = None
    if case.variant == "cropped":  # a slab or a box that cuts through the head
        full = np.asarray(synthetic.TYPICAL_FOV_MM[Modality(grid_modality)])
        axis = int(rng.integers(3))
        full[axis] = rng.uniform(60.0, 110.0)
        fov = tuple(full)
        center = tuple(np.asarray(center) + np.eye(3)[axis] * rng.uniform(-25.0, 25.0))
    grid = synthetic.typical_grid(grid_modality, center, coarsen=case.coarsen, fov_mm=fov)  # type: ignore[arg-type]
    rotation = None
    if case.variant == "rotated":
        rotation = synthetic.rigid_transform(tuple(rng.uniform(-20.0, 20.0, 3)), (0.0, 0.0, 0.0),
                                             subject.head_center)
    return synthetic.render_head(
        case.truth, grid,
        tissue_values=synthetic.varied_contrast(case.truth, seed=case.seed) if case.variant != "plain" else None,
        skull_stripped=case.variant == "stripped", lesions=int(rng.integers(3, 9)) if case.variant == "lesions" else 0,
        image_to_reference=rotation, resolution_mm=resolution, noise=case.noise, bias=case.bias, seed=case.seed)


def evaluate(image: sitk.Image) -> dict[str, object]:
    start = time.process_time()
    evidence = detect_modality(image, name=NEUTRAL_NAME)
    return {"answer": evidence.modality.value, "confidence": evidence.confidence,
            "source": evidence.source, "cpu_s": time.process_time() - start, "detail": evidence.detail}


def run_case(case: Case) -> dict[str, object]:
    return {**asdict(case), "expected": case.expected, **evaluate(render(case))}


def tally(rows: list[dict[str, object]], label: str) -> dict[str, object]:
    n = len(rows)
    correct = sum(r["answer"] == r["expected"] for r in rows)
    wrong_confident = sum(r["answer"] in CONTRASTS and r["answer"] != r["expected"]
                          and float(r["confidence"]) >= 0.6 for r in rows)  # type: ignore[arg-type]
    ct_mr = sum((r["answer"] == "CT") != (r["expected"] == "CT") for r in rows)
    cpu = sorted(float(r["cpu_s"]) for r in rows)  # type: ignore[arg-type]
    return {"set": label, "cases": n, "correct": correct, "correct_rate": correct / n if n else 0.0,
            "generic_mr": sum(r["answer"] == "MR" and r["expected"] != "MR" for r in rows),
            "wrong_conf>=0.6": wrong_confident, "ct<->mr": ct_mr,
            "median_cpu_s": cpu[n // 2] if n else 0.0, "max_cpu_s": cpu[-1] if n else 0.0}


def real_t1() -> dict[str, object] | None:
    try:
        import nibabel
    except ImportError:
        return None
    path = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    return {"case": "nibabel anatomical.nii (real T1)", "expected": "T1", **evaluate(sitk.ReadImage(str(path)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-contrast", type=int, default=24, help="MR heads per contrast and seed set")
    parser.add_argument("--objects", type=int, default=8, help="non-head MR objects per seed set")
    parser.add_argument("--cts", type=int, default=6, help="CT heads per seed set")
    parser.add_argument("--sets", nargs="*", default=list(SEED_SETS), choices=list(SEED_SETS))
    parser.add_argument("--name", default="bench_modality")
    parser.add_argument("--verbose", action="store_true", help="print every case")
    parser.add_argument("--jobs", type=int, default=2, help="cases rendered and read in parallel")
    args = parser.parse_args()

    table, payload_sets = [], {}
    for label in args.sets:
        cases = make_cases(args.per_contrast, base_seed=SEED_SETS[label], objects=args.objects, cts=args.cts)
        rows = []
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(run_case, cases))
        for case, row in zip(cases, results):
            rows.append(row)
            if args.verbose:
                print(f"[{label}] {case.truth:6s} {case.variant:8s} {case.grid:7s} c{case.coarsen} "
                      f"n{case.noise} b{case.bias} -> {row['answer']} {row['confidence']:.2f}  "
                      f"{str(row['detail'])[-330:]}", flush=True)
        for truth in (*CONTRASTS, "CT", "object"):
            table.append({"truth": truth, **tally([r for r in rows if r["truth"] == truth], label)})
        mr_rows = [r for r in rows if r["truth"] in CONTRASTS]
        for grid in ("typical", "iso"):  # thick slices vs the isotropic grid, where FLAIR was hardest
            table.append({"truth": f"MR heads, {grid} grid", **tally([r for r in mr_rows if r["grid"] == grid], label)})
        table.append({"truth": "all MR heads", **tally(mr_rows, label)})
        table.append({"truth": "everything", **tally(rows, label)})
        payload_sets[label] = rows
    print_table(table, ["set", "truth", "cases", "correct", "correct_rate", "generic_mr", "wrong_conf>=0.6",
                        "ct<->mr", "median_cpu_s", "max_cpu_s"])
    real = real_t1()
    if real is not None:
        print(f"\n{real['case']}: {real['answer']} (confidence {real['confidence']}, "
              f"cpu {float(real['cpu_s']):.3f} s)\n  {real['detail']}")
    path = write_json(args.name, {"args": vars(args), "table": table, "real_t1": real, "cases": payload_sets})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
