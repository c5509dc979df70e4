"""Our ANTs preset against the ANTs settings Slicer users already have, through the same runner.

Per case, on the same prepared pair (the pipeline's intensity preparation; CT windowed):

* ``oneclick-ants``: the pipeline's initialization (head-mask moments) + our adapter's arguments;
* ``SlicerANTs-Rigid``: SlicerANTs' ``Rigid`` preset (its Presets/Rigid.json, read at run time);
* ``SyNQuick-rigid``: the rigid stage of ANTs' ``antsRegistrationSyNQuick.sh -t r`` (its variables
  read from the script at run time);
* ``oneclick-ants/no-finest-level``: our preset with 0 iterations on its finest level, as evidence
  for the preset table (``--no-variant`` skips it).

The peers' files are read from fetched git copies (never committed): set ``ONECLICK_SLICERANTS_GIT``
/ ``ONECLICK_ANTS_GIT`` to their git directories, or leave them under /work/.mirror (``fetch`` tool).
A peer whose copy is missing is skipped with a message. All three run through the adapter's runner
(an antsRegistration executable, else antspyx in a child process) and write no warped images.

    python Testing/Benchmarks/bench_ants_peers.py [--cases 3] [--coarsen 1.0] [--pairs T1:T2,...]
        [--peers slicerants,synquick] [--no-variant] [--name bench_ants_peers]

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
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import make_case_pair, print_table, random_cases, summarize, timed, write_json

from OneClickRegistrationLib.engines import ants_engine as ae
from OneClickRegistrationLib.engines.base import EngineRequest, RunOptions
from OneClickRegistrationLib.images import write_image
from OneClickRegistrationLib.presets import preset_for
from OneClickRegistrationLib.process_runner import engine_workdir, run_process

try:  # the pipeline's own preparation and initialization, when the pipeline exists
    from OneClickRegistrationLib.preparation import initial_alignment, prepare_pair
except ImportError:  # pragma: no cover - early checkouts
    initial_alignment = prepare_pair = None  # type: ignore[assignment]

PAIRS = [("T1", "T1"), ("T1", "T2"), ("T1", "FLAIR"), ("T1", "CT")]
MIRROR_ROOT = Path("/work/.mirror")


# --- reading the peers' settings from their fetched copies -----------------------------------------

def _git_dir(env_var: str, name_part: str) -> Path | None:
    value = os.environ.get(env_var)
    if value:
        return Path(value)
    if MIRROR_ROOT.is_dir():
        for candidate in sorted(MIRROR_ROOT.iterdir()):
            if candidate.name.lower() == name_part.lower() and (candidate / "repo").exists():
                return candidate / "repo"
    return None


def _git_file(git_dir: Path, suffix: str) -> tuple[str, str]:
    """(path, text) of the one file in the repository's HEAD whose path ends with ``suffix``."""
    names = subprocess.run(["git", f"--git-dir={git_dir}", "ls-tree", "-r", "--name-only", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    matches = [n for n in names if n.endswith(suffix)]
    if len(matches) != 1:
        raise FileNotFoundError(f"expected one file ending with {suffix!r} in {git_dir}; found {matches}")
    text = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{matches[0]}"],
                          capture_output=True, text=True, check=True).stdout
    return matches[0], text


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


def slicerants_rigid(git_dir: Path) -> PeerStage:
    path, text = _git_file(git_dir, "Presets/Rigid.json")
    preset = json.loads(text)
    stage = preset["stages"][0]
    metric = stage["metrics"][0]
    levels = stage["levels"]
    steps = levels["steps"]
    feature = int(preset.get("initialTransformSettings", {}).get("initializationFeature", -1))
    general = preset["generalSettings"]
    return PeerStage(
        name="SlicerANTs-Rigid", source=f"{git_dir}:{path}",
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


def synquick_rigid(git_dir: Path, *, large_image: bool) -> PeerStage:
    path, text = _git_file(git_dir, "Scripts/antsRegistrationSyNQuick.sh")
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
        name="SyNQuick-rigid", source=f"{git_dir}:{path}",
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


def run_ours(fixed: sitk.Image, moving: sitk.Image, fixed_head: sitk.Image | None,
             moving_head: sitk.Image | None, fixed_modality: str, moving_modality: str, *,
             skip_finest: bool = False) -> sitk.Transform:
    preset = preset_for(fixed_modality, moving_modality)
    if skip_finest:  # evidence for the preset table: what the finest level buys with ANTs
        preset = replace(preset, iterations=(*preset.iterations[:-1], 0))
    initial = None
    if initial_alignment is not None and fixed_head is not None:
        from OneClickRegistrationLib.preparation import PreparedPair

        prepared = PreparedPair(fixed=fixed, moving=moving, fixed_head=fixed_head, moving_head=moving_head,
                                notes=())  # type: ignore[arg-type]
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
    parser.add_argument("--peers", default="slicerants,synquick", help="peer columns to run")
    parser.add_argument("--name", default="bench_ants_peers", help="results file name (without .json)")
    parser.add_argument("--no-variant", action="store_true",
                        help="skip the extra run of our preset without its finest level")
    args = parser.parse_args()
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    print(f"runner: {ae.AntsEngine().runner().detail}")

    peers: list[PeerStage] = []
    slicerants = _git_dir("ONECLICK_SLICERANTS_GIT", "netstim+SlicerANTs")
    ants_repo = _git_dir("ONECLICK_ANTS_GIT", "ANTsX+ANTs")
    if "slicerants" not in args.peers:
        slicerants = None
        print("SlicerANTs-Rigid column not asked for (--peers)")
    elif slicerants is None:
        print("SlicerANTs copy not found (set ONECLICK_SLICERANTS_GIT): SlicerANTs-Rigid column skipped")
    else:
        peers.append(slicerants_rigid(slicerants))
    synquick_small = synquick_large = None
    if "synquick" not in args.peers:
        print("SyNQuick-rigid column not asked for (--peers)")
    elif ants_repo is None:
        print("ANTs copy not found (set ONECLICK_ANTS_GIT): SyNQuick-rigid column skipped")
    else:
        synquick_small = synquick_rigid(ants_repo, large_image=False)
        synquick_large = synquick_rigid(ants_repo, large_image=True)
    for peer in [*peers, synquick_small]:
        if peer is not None:
            print(f"{peer.name} from {peer.source}:\n  {' '.join(peer.arguments('F', 'M', 'OUT'))}")

    cases = random_cases(pairs, args.cases)  # type: ignore[arg-type]
    runs = []
    cpu: dict[tuple[str, str, int], float] = {}
    for index, case in enumerate(cases):
        pair = make_case_pair(case, coarsen=args.coarsen)
        preset = preset_for(case.fixed_modality, case.moving_modality)
        if prepare_pair is not None:
            prepared = prepare_pair(pair.fixed, pair.moving, preset)
            fixed, moving = prepared.fixed, prepared.moving
            heads = (prepared.fixed_head, prepared.moving_head)
        else:  # pragma: no cover
            fixed, moving = sitk.Cast(pair.fixed, sitk.sitkFloat32), sitk.Cast(pair.moving, sitk.sitkFloat32)
            heads = (None, None)
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
