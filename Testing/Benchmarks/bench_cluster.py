"""Batch throughput on a Dask cluster: the same pairs on 1 worker process and on 2, side by side.

Realistic synthetic heads (MNI152 tissue maps with skull and scalp, modality-typical grids, random
rigid misalignments up to 25 degrees and 30 mm) are written to files and registered by the product's
batch (``register_batch`` on a ``LocalCluster``), as ``oneclick-register batch --workers N`` does.
Three runs: one worker giving each pair every core (engine threads = cores, the batch's default),
one worker with one thread per pair, and N workers sharing the cores (cores / N threads each). The
first ratio (default one worker / N workers) is what running pairs side by side gains over
threading inside one pair; the second (both at one thread per pair) is how the distribution scales
with workers. Per pair: time, TRE against the truth (all runs must agree), peak memory of the
worker and its engine, and bytes read and written.

    python Testing/Benchmarks/bench_cluster.py [--pairs 8] [--workers 2] [--coarsen 1.0] [--no-recover]

Prints a table and writes Testing/Benchmarks/results/bench_cluster.json. The machine's load
average before and after is recorded: other work on the machine lowers the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import make_case_pair, mean_tre, print_table, random_cases, write_json

from OneClickRegistrationLib.batch import Pair, register_batch
from OneClickRegistrationLib.batch_cluster import cluster_client
from OneClickRegistrationLib.batch_pairs import usable_cores
from OneClickRegistrationLib.options import RegistrationOptions

PAIRS = [("T1", "T1"), ("T1", "T2"), ("T1", "FLAIR"), ("T1", "CT"), ("CT", "T1"), ("T2", "FLAIR")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="the cluster compared with one worker")
    parser.add_argument("--coarsen", type=float, default=1.0, help="voxel size factor (1.0: realistic grids)")
    parser.add_argument("--no-recover", action="store_true")
    args = parser.parse_args()

    cases = random_cases(PAIRS, per_pair=(args.pairs + len(PAIRS) - 1) // len(PAIRS), seed=1616)[: args.pairs]
    options = RegistrationOptions(recover=not args.no_recover)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as work:
        root = Path(work)
        pairs, truths = [], {}
        for index, case in enumerate(cases):
            name = f"{index:02d}_{case.moving_modality}_to_{case.fixed_modality}"
            synthetic_pair = make_case_pair(case, coarsen=args.coarsen)
            sitk.WriteImage(synthetic_pair.fixed, str(root / f"{name}_fixed.nrrd"), True)
            sitk.WriteImage(synthetic_pair.moving, str(root / f"{name}_moving.nrrd"), True)
            pairs.append(Pair(name=name, fixed=f"{name}_fixed.nrrd", moving=f"{name}_moving.nrrd", base=root))
            truths[name] = synthetic_pair
        load_before = os.getloadavg()
        runs, idle_mb = {}, {}
        # (label, workers, threads per pair; None = the batch's default share of the cores)
        configurations = [("1w", 1, None), ("1w1t", 1, 1), (f"{args.workers}w", args.workers, None)]
        for tag, workers, threads in configurations:
            with cluster_client(workers=workers) as client:
                # the workers are up before the clock starts; their size before any pair, for comparison
                idle = client.run(lambda: __import__("psutil").Process().memory_info().rss / 1e6)
                idle_mb[tag] = round(max(idle.values()), 1)
                start = time.perf_counter()
                outcomes = register_batch(pairs, root / f"out-{tag}", options=replace(options, threads=threads),
                                          client=client, show_progress=False)
                runs[tag] = (time.perf_counter() - start, outcomes)
        load_after = os.getloadavg()
        per_pair = []
        for index, pair in enumerate(pairs):
            row: dict[str, object] = {"pair": pair.name}
            for tag, (_, outcomes) in runs.items():
                outcome = outcomes[index]
                row[f"status_{tag}"] = outcome.row["status"]
                row[f"threads_{tag}"] = outcome.threads
                row[f"s_{tag}"] = outcome.row.get("elapsed_s")
                transform_file = root / f"out-{tag}" / pair.name / "transform.tfm"
                row[f"tre_mm_{tag}"] = (mean_tre(sitk.ReadTransform(str(transform_file)), truths[pair.name])
                                        if transform_file.is_file() else float("inf"))
                if outcome.resources is not None:
                    row[f"peak_mb_{tag}"] = outcome.resources.peak_memory_mb
                    row[f"read_mb_{tag}"] = outcome.resources.read_mb
                    row[f"written_mb_{tag}"] = outcome.resources.written_mb
            per_pair.append(row)
    many = f"{args.workers}w"
    wall = {tag: run[0] for tag, run in runs.items()}
    cores = usable_cores()
    summary = {
        "pairs": len(pairs),
        "cores": cores,
        "wall_s_1_worker": round(wall["1w"], 1),
        "wall_s_1_worker_1_thread": round(wall["1w1t"], 1),
        f"wall_s_{args.workers}_workers": round(wall[many], 1),
        "throughput_ratio": round(wall["1w"] / wall[many], 3),
        "throughput_ratio_same_threads": round(wall["1w1t"] / wall[many], 3),
        "pairs_per_hour_per_core": round(len(pairs) / (wall[many] / 3600) / cores, 1),
        "idle_worker_mb": idle_mb[many],
        "max_peak_mb_per_pair": max(float(r.get(f"peak_mb_{many}", 0.0)) for r in per_pair),
        "max_tre_mm": round(max(float(r[f"tre_mm_{tag}"]) for r in per_pair for tag in runs), 3),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
    }
    columns = ["pair", "s_1w", "s_1w1t", f"s_{many}", "tre_mm_1w", "tre_mm_1w1t", f"tre_mm_{many}",
               f"peak_mb_{many}", f"read_mb_{many}", f"written_mb_{many}", "peak_mb_1w"]
    print_table(per_pair, columns)
    print()
    for key, value in summary.items():
        print(f"{key}: {value}")
    path = write_json("bench_cluster", {"args": vars(args), "summary": summary, "per_pair": per_pair})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
