"""``oneclick-register FIXED MOVING -o OUTDIR``: register one pair and write its outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import EXIT_OK, QuietParser, TerminalProgress, guarded
from .engines import ENGINE_NAMES
from .images import read_image, read_transform
from .modality import Modality, metadata_from_file
from .outputs import write_outputs
from .pipeline import RegistrationResult, register
from .progress_lines import ProgressLines, guarded_with_events

MODALITY_CHOICES = [m.value for m in Modality]


def add_registration_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the single-pair and the batch commands."""
    parser.add_argument(
        "--engine", choices=ENGINE_NAMES, help="engine to use (default: the preset's first installed)"
    )
    parser.add_argument("--transform", choices=["rigid", "affine"], default="rigid")
    parser.add_argument(
        "--no-recover", action="store_true", help="do not try other starts when the verdict is not good"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="engine time limit in seconds"
    )
    parser.add_argument(
        "--keep-temp", action="store_true", help="keep the engine's temporary folder (debugging)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--progress-lines", action="store_true",
                        help="progress and outcome as JSON lines on stdout (for a parent program)")


def build_parser() -> argparse.ArgumentParser:
    parser = QuietParser(
        prog="oneclick-register",
        description="Register MOVING onto FIXED with one click and write the results to OUTDIR.",
    )
    parser.add_argument("fixed", type=Path)
    parser.add_argument("moving", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    parser.add_argument("--fixed-modality", choices=MODALITY_CHOICES, type=str.upper)
    parser.add_argument("--moving-modality", choices=MODALITY_CHOICES, type=str.upper)
    parser.add_argument("--fixed-volume-index", type=int, default=None, help="volume of a 4D fixed file")
    parser.add_argument("--moving-volume-index", type=int, default=None, help="volume of a 4D moving file")
    parser.add_argument("--initial-transform", type=Path, default=None, metavar="T",
                        help="ITK transform file (fixed->moving) to start from instead of the automatic one")
    add_registration_options(parser)
    return parser


def register_files(
    fixed_path: Path,
    moving_path: Path,
    outdir: Path,
    *,
    fixed_modality: str | None = None,
    moving_modality: str | None = None,
    engine: str | None = None,
    transform: str = "rigid",
    recover: bool = True,
    timeout_s: float | None = None,
    keep_temp: bool = False,
    fixed_volume_index: int | None = None,
    moving_volume_index: int | None = None,
    initial_transform: Path | None = None,
    progress: TerminalProgress | ProgressLines | None = None,
) -> RegistrationResult:
    """Read two files, register them and write the outputs (used by the single and batch commands)."""
    fixed = read_image(fixed_path, role="fixed image", volume_index=fixed_volume_index,
                       index_option="--fixed-volume-index")
    moving = read_image(moving_path, role="moving image", volume_index=moving_volume_index,
                        index_option="--moving-volume-index")
    result = register(
        fixed,
        moving,
        fixed_modality=fixed_modality,
        moving_modality=moving_modality,
        engine=engine,
        transform=transform,  # type: ignore[arg-type]
        progress=progress,
        fixed_name=fixed_path.name,
        moving_name=moving_path.name,
        fixed_metadata=metadata_from_file(fixed_path),
        moving_metadata=metadata_from_file(moving_path),
        keep_temp=keep_temp,
        timeout_s=timeout_s,
        recover=recover,
        initial_transform=read_transform(initial_transform) if initial_transform is not None else None,
    )
    write_outputs(
        result, fixed, outdir, extra={"fixed_file": str(fixed_path), "moving_file": str(moving_path)}
    )
    return result


def summary_line(result: RegistrationResult) -> str:
    before = "n/a" if result.score_before.value is None else f"{result.score_before.value:.4f}"
    after = "n/a" if result.score_after.value is None else f"{result.score_after.value:.4f}"
    return (
        f"{result.moving_modality.modality.value} -> {result.fixed_modality.modality.value} "
        f"with {result.engine} ({result.preset.name}): {result.metric.upper()} {before} -> {after}, "
        f"verdict {result.verdict.label.upper()}, {result.elapsed_s:.1f} s"
    )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    lines = ProgressLines() if args.progress_lines else None

    def run() -> int:
        result = register_files(
            args.fixed,
            args.moving,
            args.output,
            fixed_modality=args.fixed_modality,
            moving_modality=args.moving_modality,
            engine=args.engine,
            transform=args.transform,
            recover=not args.no_recover,
            timeout_s=args.timeout,
            keep_temp=args.keep_temp,
            fixed_volume_index=args.fixed_volume_index,
            moving_volume_index=args.moving_volume_index,
            initial_transform=args.initial_transform,
            progress=lines if lines is not None else TerminalProgress(enabled=not args.quiet),
        )
        if lines is not None:
            lines.done(outdir=str(args.output), verdict=result.verdict.label)
            return EXIT_OK
        print(summary_line(result))
        for reason in result.verdict.reasons:
            print(f"  - {reason}")
        print(f"Outputs in {args.output}")
        return EXIT_OK

    return guarded(run) if lines is None else guarded_with_events(run, lines)
