"""Cost of the QC sheet (overlay.png) against one whole-volume resampling, per image size.

The sheet resamples only the nine planes it shows; a whole-volume approach resamples the moving
image onto the fixed grid (or a display grid of similar size) first. Both are timed on the same
case, in the same run, wall and CPU (the median of ``--repeats``), and their ratio is printed.

    python Testing/Benchmarks/bench_qc_sheet.py [--coarsen 2.5,1.3,1.0] [--repeats 3] [--name bench_qc_sheet]

Prints a table and writes results/<name>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import print_table, write_json

from OneClickRegistrationLib import overlay, synthetic


def _time(work, repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def measure(coarsen: float, folder: Path, repeats: int) -> dict[str, object]:
    pair = synthetic.make_pair("T1", "CT", rotation_deg=(8.0, -6.0, 10.0), translation_mm=(6.0, -8.0, 5.0),
                               coarsen=coarsen, seed=3)
    registered = sitk.Resample(pair.moving, pair.fixed, pair.truth, sitk.sitkLinear, -1024.0)
    caption = overlay.Caption("T1", "CT", "elastix", "nmi", 1.0, 1.1, "good")
    path = folder / "overlay.png"

    def sheet() -> None:
        overlay.write_overlay(pair.fixed, registered, path, fill_value=-1024.0, transform=pair.truth,
                              caption=caption)

    def whole_volume() -> None:
        sitk.Resample(pair.moving, pair.fixed, pair.truth, sitk.sitkLinear, -1024.0)

    sheet()  # warm up: fonts and modules load once per process
    sheet_wall, sheet_cpu = _time(sheet, repeats)
    volume_wall, volume_cpu = _time(whole_volume, repeats)
    return {
        "fixed_size": "x".join(map(str, pair.fixed.GetSize())),
        "voxels_M": pair.fixed.GetNumberOfPixels() / 1e6,
        "sheet_wall_s": sheet_wall, "sheet_cpu_s": sheet_cpu,
        "volume_resample_wall_s": volume_wall, "volume_resample_cpu_s": volume_cpu,
        "sheet/volume_wall": sheet_wall / volume_wall,
        "png_kB": path.stat().st_size / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coarsen", default="2.5,1.3,1.0", help="voxel-size factors of the synthetic heads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="bench_qc_sheet")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(float(c), Path(folder), args.repeats) for c in args.coarsen.split(",")]
    print_table(rows, list(rows[0]))
    print(f"results: {write_json(args.name, {'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
