"""Our ANTs preset against the ANTs settings Slicer users already have, through the same runner.

Per case, on the same prepared pair (the pipeline's intensity preparation; CT windowed):

* ``oneclick-ants``: the pipeline's initialization (head-mask moments) + our adapter's arguments;
* ``SlicerANTs-Rigid``: SlicerANTs' ``Rigid`` preset (its Presets/Rigid.json, read at run time);
* ``SyNQuick-rigid``: the rigid stage of ANTs' ``antsRegistrationSyNQuick.sh -t r`` (its variables
  read from the script at run time);
* ``oneclick-ants/no-finest-level``: our preset with 0 iterations on its finest level, as evidence
  for the preset table (``--no-variant`` skips it).

The peers' files are taken from the folder given with ``--peers DIR`` (or ``$ONECLICK_PEERS_DIR``):
a folder, or a folder of git checkouts, containing SlicerANTs' ``Rigid.json`` and ANTs'
``antsRegistrationSyNQuick.sh`` anywhere below it. A peer whose file is missing is skipped with a
message. All three run through the adapter's runner (an antsRegistration executable, else antspyx
in a child process) and write no warped images.

    python Testing/Benchmarks/bench_ants_peers.py --peers DIR [--cases 3] [--coarsen 1.0]
        [--pairs T1:T2,...] [--columns slicerants,synquick] [--no-variant] [--name bench_ants_peers]

Prints a table (success = mean brain TRE < 2 mm; wall and CPU time, each as the median over cases of
method time / our time on the same case) and writes results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    add_peers_option,
    locate_peer,
    make_case_pair,
    print_table,
    random_cases,
    summarize,
    timed,
    write_json,
)

from OneClickRegistrationLib.engines import ants_engine as ae
from OneClickRegistrationLib.engines.base import EngineRequest, RunOptions
from OneClickRegistrationLib.images import write_image
from OneClickRegistrationLib.preparation import PreparedPair, initial_alignment, prepare_pair
from OneClickRegistrationLib.presets import preset_for
from OneClickRegistrationLib.process_runner import engine_workdir, run_process

PAIRS = [("T1", "T1"), ("T1", "T2"), ("T1", "FLAIR"), ("T1", "CT")]
SLICERANTS_FILE = "Rigid.json"
SYNQUICK_FILE = "antsRegistrationSyNQuick.sh"


# --- reading the peers' settings from their files ---------------------------------------------------

@dataclass(frozen=True)
class PeerStage:
    """The settings of one peer's rigid run, in antsRegistration's own terms."""

    name: str
    source: str
    transform: str  # e.g. "Rigid[0.1]"
    metric: str  # with {fixed} and {moving} placeholders
    convergence: str
    shrink_factors: str
    smoothing_sigmas: str
    initialization: int | None  # ANTs feature (0 geometry, 1 centre of mass), None: no initial transform
    precision_float: bool
    winsorize: str
    histogram_matching: int

    def arguments(self, fixed: str, moving: str, prefix: str) -> list[str]:
        args = ["--dimensionality", "3", "--float", "1" if self.precision_float else "0", "--verbose", "1",
                "--collapse-output-transforms", "1", "--output", prefix, "--interpolation", "Linear",
                "--use-histogram-matching", str(self.histogram_matching),
                "--winsorize-image-intensities", self.winsorize]
        if self.initialization is not None:
            args += ["--initial-moving-transform", f"[{fixed},{moving},{self.initialization}]"]
        args += ["--transform", self.transform, "--metric", self.metric.format(fixed=fixed, moving=moving),
                 "--convergence", self.convergence, "--shrink-factors", self.shrink_factors,
                 "--smoothing-sigmas", self.smoothing_sigmas]
        return args


def slicerants_rigid(path: Path) -> PeerStage:
    preset = json.loads(path.read_text(encoding="utf-8"))
    stage = preset["stages"][0]
    metric = stage["metrics"][0]
    levels = stage["levels"]
    steps = levels["steps"]
    feature = int(preset.get("initialTransformSettings", {}).get("initializationFeature", -1))
    general = preset["generalSettings"]
    return PeerStage(
        name="SlicerANTs-Rigid", source=SLICERANTS_FILE,
        transform=f"{stage['transformParameters']['transform']}[{stage['transformParameters']['settings']}]",
        metric=f"{metric['type']}[{{fixed}},{{moving}},{metric['settings']}]",
        convergence=(f"[{'x'.join(str(s['convergence']) for s in steps)},"
                     f"1e-{levels['convergenceThreshold']},{levels['convergenceWindowSize']}]"),
        shrink_factors="x".join(str(s["shrinkFactors"]) for s in steps),
        smoothing_sigmas="x".join(str(s["smoothingSigmas"]) for s in steps) + levels["smoothingSigmasUnit"],
        # SlicerANTs: feature >= 0 is an image-based initialization; below 0 is none / a transform node.
        initialization=feature if feature >= 0 else None,
        precision_float=general.get("computationPrecision", "float") == "float",
        winsorize="[{:g},{:g}]".format(*general["winsorizeImageIntensities"]),
        histogram_matching=int(general.get("histogramMatching", 0)),
    )


def _shell_assignments(text: str) -> dict[str, list[str]]:
    """Every ``NAME=value`` of a shell script, in order (quotes removed)."""
    found: dict[str, list[str]] = {}
    for match in re.finditer(r"^\s*([A-Za-z_]+)=(\"[^\"]*\"|'[^']*'|\S+)", text, re.MULTILINE):
        found.setdefault(match.group(1), []).append(match.group(2).strip("\"'"))
    return found


def _expand(value: str, variables: dict[str, str]) -> str:
    value = value.replace("${FIXEDIMAGES[0]}", "{fixed}").replace("${MOVINGIMAGES[0]}", "{moving}")
    return re.sub(r"\$\{\s*([A-Za-z_]+)\s*\}|\$([A-Za-z_]+)",
                  lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def _bracket(value: str) -> str:
    # The script relies on word splitting of "[ a,b ]"; one argument without the spaces is the same.
    return re.sub(r"\s+", "", value)


def synquick_rigid(path: Path, *, large_image: bool) -> PeerStage:
    text = path.read_text(encoding="utf-8")
    values = _shell_assignments(text)
    pick = -1 if large_image else 0  # the script's second assignment is its >256-voxel branch
    variables = {name: vals[0] for name, vals in values.items()}
    for name in ("RIGIDCONVERGENCE", "RIGIDSHRINKFACTORS", "RIGIDSMOOTHINGSIGMAS"):
        variables[name] = values[name][pick]
    stage = re.search(r'RIGIDSTAGE="(.*?)"', text, re.DOTALL)
    if stage is None:
        raise ValueError(f"no RIGIDSTAGE in {path}")
    rigid = _expand(stage.group(1).replace("\\\n", " "), variables)
    metric = re.search(r"--metric\s+(\w+\[.*?\])", rigid, re.DOTALL)
    transform = re.search(r"--transform\s+(\S+\[.*?\])", rigid, re.DOTALL)
    if metric is None or transform is None:
        raise ValueError(f"cannot read the rigid stage of {path}: {rigid!r}")
    metric_text = _bracket(metric.group(1))
    initial = re.search(r'INITIALSTAGE="--initial-moving-transform \[.*,\s*(\d+)\s*\]"', text)
    feature = int(initial.group(1)) if initial else None
    winsorize = re.search(r"--winsorize-image-intensities\s+(\[.*?\])", text)
    return PeerStage(
        name="SyNQuick-rigid", source=SYNQUICK_FILE,
        transform=_bracket(transform.group(1)),
        metric=metric_text,
        convergence=_bracket(variables["RIGIDCONVERGENCE"]),
        shrink_factors=variables["RIGIDSHRINKFACTORS"],
        smoothing_sigmas=variables["RIGIDSMOOTHINGSIGMAS"],
        initialization=feature,
        precision_float=variables.get("PRECISIONTYPE", "d") == "f",
        winsorize=_bracket(winsorize.group(1)) if winsorize else "[0.005,0.995]",
        histogram_matching=int(variables.get("USEHISTOGRAMMATCHING", "0")),
    )


# --- running -------------------------------------------------------------------------------------

def _zero_based(image: sitk.Image) -> sitk.Image:
    image = sitk.Cast(image, sitk.sitkFloat32)
    return sitk.ShiftScale(image, -float(np.min(sitk.GetArrayViewFromImage(image))), 1.0)


def run_peer(peer: PeerStage, fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    runner = ae.AntsEngine().runner()
    with engine_workdir("ants-peer") as folder:
        # The peers start from ANTs' own intensity centre of mass, which needs non-negative intensities.
        f = os.fspath(write_image(_zero_based(fixed), folder / "fixed.mha", compress=False))
        m = os.fspath(write_image(_zero_based(moving), folder / "moving.mha", compress=False))
        prefix = os.fspath(folder / "peer_")
        arguments = peer.arguments(f, m, prefix)
        outcome = run_process(runner.command(arguments, folder / "arguments.json"), name=peer.name,
                              cwd=folder, env=dict(os.environ))
        ae._raise_on_caught_exception(outcome.log, peer.name)
        return ae.result_transform(prefix + ae.RESULT_SUFFIX, transform_kind="rigid")


def run_ours(fixed: sitk.Image, moving: sitk.Image, fixed_head: sitk.Image,
             moving_head: sitk.Image, fixed_modality: str, moving_modality: str, *,
             skip_finest: bool = False) -> sitk.Transform:
    preset = preset_for(fixed_modality, moving_modality)
    if skip_finest:  # evidence for the preset table: what the finest level buys with ANTs
        preset = replace(preset, iterations=(*preset.iterations[:-1], 0))
    prepared = PreparedPair(fixed=fixed, moving=moving, fixed_head=fixed_head, moving_head=moving_head, notes=())
    initial = initial_alignment(prepared, preset.initialization)
    request = EngineRequest(fixed=fixed, moving=moving, preset=preset, initial_transform=initial)
    return ae.AntsEngine().run(request, RunOptions()).transform


def _children_cpu_s() -> float:
    """CPU seconds used so far by finished child processes (every ANTs run here is one)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def add_ratios(rows: list[dict[str, object]], runs: list, cpu: dict[tuple[str, str, int], float]) -> None:
    """Per row: median CPU time, and the median over cases of this method's time over ours."""
    wall = {(r.method, r.pair, r.case_index): r.seconds for r in runs}
    for row in rows:
        keys = [k for k in wall if k[0] == row["method"] and k[1] == row["pair"]]
        row["median_cpu_s"] = statistics.median(cpu[k] for k in keys)
        for label, table in (("wall_vs_ours", wall), ("cpu_vs_ours", cpu)):
            ratios = [table[k] / table[("oneclick-ants", k[1], k[2])] for k in keys
                      if table.get(("oneclick-ants", k[1], k[2]))]
            row[label] = statistics.median(ratios) if ratios else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="random misalignments per pair")
    parser.add_argument("--coarsen", type=float, default=1.0, help="scale voxel spacing (1.0 = real grids)")
    parser.add_argument("--pairs", default=",".join(f"{f}:{m}" for f, m in PAIRS))
    parser.add_argument("--columns", default="slicerants,synquick", help="peer columns to run")
    add_peers_option(parser)
    parser.add_argument("--name", default="bench_ants_peers", help="results file name (without .json)")
    parser.add_argument("--no-variant", action="store_true",
                        help="skip the extra run of our preset without its finest level")
    args = parser.parse_args()
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    print(f"runner: {ae.AntsEngine().runner().detail}")

    peers: list[PeerStage] = []
    slicerants = locate_peer(SLICERANTS_FILE, "SlicerANTs-Rigid", args.peers, wanted="slicerants" in args.columns)
    if slicerants is not None:
        peers.append(slicerants_rigid(slicerants))
    synquick_small = synquick_large = None
    synquick_script = locate_peer(SYNQUICK_FILE, "SyNQuick-rigid", args.peers, wanted="synquick" in args.columns)
    if synquick_script is not None:
        synquick_small = synquick_rigid(synquick_script, large_image=False)
        synquick_large = synquick_rigid(synquick_script, large_image=True)
    for peer in [*peers, synquick_small]:
        if peer is not None:
            print(f"{peer.name} from {peer.source}:\n  {' '.join(peer.arguments('F', 'M', 'OUT'))}")

    cases = random_cases(pairs, args.cases)  # type: ignore[arg-type]
    runs = []
    cpu: dict[tuple[str, str, int], float] = {}
    for index, case in enumerate(cases):
        pair = make_case_pair(case, coarsen=args.coarsen)
        preset = preset_for(case.fixed_modality, case.moving_modality)
        prepared = prepare_pair(pair.fixed, pair.moving, preset)
        fixed, moving = prepared.fixed, prepared.moving
        heads = (prepared.fixed_head, prepared.moving_head)
        start = len(runs)

        def measure(method: str, register, case=case, index=index, pair=pair) -> None:
            before = _children_cpu_s()
            runs.append(timed(method, case.pair_name, index, pair, register))
            cpu[(method, case.pair_name, index)] = _children_cpu_s() - before

        measure("oneclick-ants", lambda p, f=fixed, m=moving, h=heads, c=case: run_ours(
            f, m, h[0], h[1], c.fixed_modality, c.moving_modality))
        if not args.no_variant:
            measure("oneclick-ants/no-finest-level", lambda p, f=fixed, m=moving, h=heads, c=case: run_ours(
                f, m, h[0], h[1], c.fixed_modality, c.moving_modality, skip_finest=True))
        synquick = synquick_large if max(fixed.GetSize()) > 256 else synquick_small
        for peer in [*peers, synquick]:
            if peer is not None:
                measure(peer.name, lambda p, peer=peer, f=fixed, m=moving: run_peer(peer, f, m))
        print(f"case {index + 1}/{len(cases)} {case.pair_name} rot={case.rotation_deg} "
              f"t={case.translation_mm}: "
              + ", ".join(f"{r.method} {r.tre_mm:.2f} mm {r.seconds:.1f} s "
                          f"(cpu {cpu[(r.method, r.pair, r.case_index)]:.1f} s){' ' + r.error if r.error else ''}"
                          for r in runs[start:]), flush=True)

    rows = summarize(runs)
    add_ratios(rows, runs, cpu)
    print()
    print_table(rows, ["method", "pair", "cases", "success_rate", "median_tre_mm", "max_tre_mm", "median_s",
                       "median_cpu_s", "wall_vs_ours", "cpu_vs_ours"])
    print("\nwall_vs_ours / cpu_vs_ours: median over cases of (this method's time / oneclick-ants' time on "
          "the same case); > 1 means slower than ours. CPU time (all threads of the ANTs process) is the "
          "steadier figure on a shared machine.")
    path = write_json(args.name, {
        "coarsen": args.coarsen, "runner": ae.AntsEngine().runner().detail,
        "peers": {p.name: {"source": p.source, "arguments": p.arguments("F", "M", "OUT")}
                  for p in [*peers, synquick_small] if p is not None},
        "cases": cases, "rows": rows, "runs": runs,
        "cpu_s": [{"method": k[0], "pair": k[1], "case_index": k[2], "cpu_s": v} for k, v in cpu.items()]})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
