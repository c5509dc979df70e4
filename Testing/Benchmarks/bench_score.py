"""Scoring speed and memory at 256^3: ours next to a naive float64 numpy scorer and ITK's metrics.

The pair: a synthetic T1 head (int16, 1 mm, 256^3) and the same head moved by a rigid transform on
the same grid, scored through that transform (the corners of the fixed grid then fall outside the
moving grid, so the domain intersection is partial, as in practice). Every method runs in this
process, in turn, several times; the table shows the fastest and the median run, and the ratio of
the naive scorer's median to ours; cpu_s is the median process CPU time (all threads), which a busy
machine inflates less than wall time. Peak memory is measured in child processes (one per method, same
inputs): the resident-set high-water mark above the level just before the call (the kernel's
counter is reset first), and tracemalloc's peak (numpy buffers only: ITK's are invisible to it).

    python Testing/Benchmarks/bench_score.py [--size 256] [--repeats 7] [--itk-repeats 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import print_table, write_json

from OneClickRegistrationLib import metrics, synthetic

BINS = 32


# ----------------------------------------------------------------------------------------------
# The methods


def ours(names: tuple[str, ...]) -> Callable[[sitk.Image, sitk.Image, sitk.Transform], dict[str, float | None]]:
    def run(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> dict[str, float | None]:
        results = metrics.score(fixed, moving, transform=transform, metric=names)
        return {name: r.value for name, r in results.items()}
    return run


def ours_resample_only(fixed, moving, transform) -> dict[str, float | None]:
    metrics.resample_with_validity(fixed, moving, transform)
    return {}


def naive(names: tuple[str, ...]) -> Callable[[sitk.Image, sitk.Image, sitk.Transform], dict[str, float | None]]:
    """What a careful user writes after reading the forum thread: float64 everywhere, the domain from
    a resampled image of ones, NCC from centred sums, MI/NMI from np.histogram2d over min..max."""
    def run(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> dict[str, float | None]:
        resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
        ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(moving)
        inside = sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        valid = sitk.GetArrayViewFromImage(inside) > 0
        f = sitk.GetArrayViewFromImage(fixed)[valid].astype(np.float64)
        m = sitk.GetArrayViewFromImage(resampled)[valid]
        out: dict[str, float | None] = {}
        if "ncc" in names:
            fc, mc = f - f.mean(), m - m.mean()
            out["ncc"] = float(np.sum(fc * mc) / math.sqrt(np.sum(fc * fc) * np.sum(mc * mc)))
        if "mi" in names or "nmi" in names:
            counts, _, _ = np.histogram2d(f, m, bins=BINS)
            p = counts / counts.sum()

            def entropy(q: np.ndarray) -> float:
                q = q[q > 0]
                return float(-np.sum(q * np.log(q)))

            h_f, h_m, h_fm = entropy(p.sum(axis=1)), entropy(p.sum(axis=0)), entropy(p.ravel())
            if "mi" in names:
                out["mi"] = h_f + h_m - h_fm
            if "nmi" in names:
                out["nmi"] = (h_f + h_m) / h_fm
        return out
    return run


def itk_metric(kind: str) -> Callable[[sitk.Image, sitk.Image, sitk.Transform], dict[str, float | None]]:
    """ITK's own metric over every fixed voxel (inputs cast to float32 beforehand, outside the timing)."""
    def run(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> dict[str, float | None]:
        method = sitk.ImageRegistrationMethod()
        if kind == "correlation":
            method.SetMetricAsCorrelation()
        else:
            method.SetMetricAsMattesMutualInformation(BINS)
        method.SetMetricSamplingStrategy(method.NONE)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetInitialTransform(transform)
        value = method.MetricEvaluate(fixed, moving)
        return {"itk_" + kind: value}
    return run


METHODS: dict[str, tuple[str, Callable, bool]] = {
    # name: (metrics, function, inputs cast to float32 first)
    "ours ncc+mi+nmi": ("ncc,mi,nmi", ours(("ncc", "mi", "nmi")), False),
    "ours ncc": ("ncc", ours(("ncc",)), False),
    "ours mi": ("mi", ours(("mi",)), False),
    "ours nmi": ("nmi", ours(("nmi",)), False),
    "ours resample only": ("-", ours_resample_only, False),
    "naive ncc+mi+nmi": ("ncc,mi,nmi", naive(("ncc", "mi", "nmi")), False),
    "naive ncc": ("ncc", naive(("ncc",)), False),
    "naive mi": ("mi", naive(("mi",)), False),
    "naive nmi": ("nmi", naive(("nmi",)), False),
    "itk correlation (-ncc^2)": ("ncc^2", itk_metric("correlation"), True),
    "itk mattes mi (32 bins)": ("mi", itk_metric("mattes"), True),
}
NAIVE_PEER = {"ours ncc+mi+nmi": "naive ncc+mi+nmi", "ours ncc": "naive ncc", "ours mi": "naive mi",
              "ours nmi": "naive nmi"}


# ----------------------------------------------------------------------------------------------
# Inputs


def make_inputs(size: int) -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    """Both images on the same 1 mm grid (one scanner field of view); the head moved between them."""
    subject = synthetic.make_subject(resolution_mm=1.5)
    grid = synthetic.Grid.centered(subject.head_center, (float(size),) * 3, (1.0, 1.0, 1.0))
    truth = synthetic.rigid_transform((4.0, -3.0, 6.0), (5.0, -4.0, 3.0), subject.head_center)
    fixed = synthetic.render("T1", grid, resolution_mm=1.5, seed=1)
    moving = synthetic.render("T1", grid, image_to_reference=truth.GetInverse(), resolution_mm=1.5, seed=2)
    return fixed, moving, truth


def load_inputs(folder: Path) -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    return (sitk.ReadImage(str(folder / "fixed.mha")), sitk.ReadImage(str(folder / "moving.mha")),
            sitk.ReadTransform(str(folder / "truth.tfm")))


def float32_inputs(fixed: sitk.Image, moving: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    return sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)


# ----------------------------------------------------------------------------------------------
# Memory: one child process per method


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(name: str, folder: Path) -> None:
    """Peak resident memory of one call above the resident memory just before it (Linux)."""
    fixed, moving, transform = load_inputs(folder)
    _, function, cast = METHODS[name]
    if cast:
        fixed, moving = float32_inputs(fixed, moving)
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM) to the current RSS
    before = _status_mb("VmRSS")
    tracemalloc.start()
    function(fixed, moving, transform)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"peak_rss_above_inputs_mb": _status_mb("VmHWM") - before,
                      "process_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                      "tracemalloc_peak_mb": peak / 2**20}))


def measure_memory(name: str, folder: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--memory-child", name, "--input-dir", str(folder)],
                          capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--itk-repeats", type=int, default=2, help="ITK's metrics take seconds each")
    parser.add_argument("--memory-child")
    parser.add_argument("--input-dir", type=Path)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.input_dir)
        return 0

    load_before = os.getloadavg()
    fixed, moving, transform = make_inputs(args.size)
    fixed32, moving32 = float32_inputs(fixed, moving)
    _, valid = metrics.resample_with_validity(fixed, moving, transform)
    inside_fraction = float(valid.mean())
    del valid

    times: dict[str, list[float]] = {name: [] for name in METHODS}
    cpu: dict[str, list[float]] = {name: [] for name in METHODS}
    values: dict[str, dict[str, float | None]] = {}
    for name, (_, function, cast) in METHODS.items():  # warm-up: imports, first-touch page faults
        if not name.startswith("itk"):  # ITK's metrics take seconds: their first timed run is enough
            values[name] = function(*((fixed32, moving32) if cast else (fixed, moving)), transform)
    for repeat in range(args.repeats):  # interleaved, so a busy spell on the shared machine hits all alike
        for name, (_, function, cast) in METHODS.items():
            if name.startswith("itk") and repeat >= args.itk_repeats:
                continue
            inputs = (fixed32, moving32) if cast else (fixed, moving)
            start, start_cpu = time.perf_counter(), time.process_time()
            values[name] = function(*inputs, transform)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sitk.WriteImage(fixed, str(folder / "fixed.mha"))
        sitk.WriteImage(moving, str(folder / "moving.mha"))
        sitk.WriteTransform(transform, str(folder / "truth.tfm"))
        memory = {name: measure_memory(name, folder) for name in METHODS}

    rows = []
    for name, (names, _, _) in METHODS.items():
        median = statistics.median(times[name])
        peer = NAIVE_PEER.get(name)
        rows.append({
            "method": name,
            "metrics": names,
            "min_s": min(times[name]),
            "median_s": median,
            "cpu_s": statistics.median(cpu[name]),
            "naive_over_ours": statistics.median(times[peer]) / median if peer else "",
            "peak_rss_mb": memory[name]["peak_rss_above_inputs_mb"],
            "numpy_peak_mb": memory[name]["tracemalloc_peak_mb"],
            "values": ", ".join(f"{k}={v:.6f}" for k, v in values[name].items() if v is not None),
        })
    print(f"\nScoring a {args.size}^3 int16 pair through a rigid transform; "
          f"{inside_fraction:.1%} of the fixed grid lies inside the moving domain.")
    print(f"load average before: {load_before[0]:.2f}, after: {os.getloadavg()[0]:.2f} (2-core shared machine)\n")
    print_table(rows, ["method", "min_s", "median_s", "cpu_s", "naive_over_ours", "peak_rss_mb",
                       "numpy_peak_mb", "values"])
    ours_ncc = values["ours ncc+mi+nmi"]["ncc"]
    naive_ncc = values["naive ncc+mi+nmi"]["ncc"]
    itk = values["itk correlation (-ncc^2)"]["itk_correlation"]
    print(f"\nNCC ours {ours_ncc:.9f}, naive float64 {naive_ncc:.9f}; ITK -NCC^2 {itk:.9f} vs ours "
          f"{-(ours_ncc or 0.0) ** 2:.9f}")
    path = write_json("bench_score", {
        "size": args.size, "repeats": args.repeats, "itk_repeats": args.itk_repeats,
        "inside_fraction": inside_fraction,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "rows": rows, "times_s": times, "cpu_s": cpu,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
