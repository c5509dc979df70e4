"""``oneclick-register FIXED MOVING -o OUTDIR``: register one pair and write its outputs."""

from __future__ import annotations

import argparse
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cli_common import EXIT_OK, MODALITY_CHOICES, QuietParser, TerminalProgress, guarded
from .engines import ENGINE_NAMES
from .images import read_image, read_transform
from .modality import metadata_from_file
from .options import ImageInfo, RegistrationOptions, from_shortcuts
from .output_folder import check_output_folder
from .outputs import write_outputs
from .pipeline import RegistrationResult, register
from .progress_lines import ProgressLines, guarded_with_events
from .stage_times import StageTimes


def add_registration_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the single-pair and the batch commands (read back by :func:`options_from_args`)."""
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
        "--keep-temp", action="store_true",
        help="keep the engine's temporary folder (debugging); its path is printed and in report.json",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--progress-lines", action="store_true",
                        help="progress and outcome as JSON lines on stdout (for a parent program)")


def options_from_args(args: argparse.Namespace, *, progress_prefix: str = "") -> RegistrationOptions:
    """The :class:`RegistrationOptions` the options of :func:`add_registration_options` ask for."""
    return RegistrationOptions(
        engine=args.engine,
        transform=args.transform,
        recover=not args.no_recover,
        timeout_s=args.timeout,
        keep_temp=args.keep_temp,
        progress=TerminalProgress(progress_prefix, enabled=not args.quiet),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = QuietParser(
        prog="oneclick-register",
        description="Register MOVING onto FIXED with one click and write the results to OUTDIR.",
    )
    parser.add_argument("fixed", type=Path, metavar="FIXED", help="fixed image file (NRRD, NIfTI, MHA, ...)")
    parser.add_argument("moving", type=Path, metavar="MOVING", help="moving image file")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR",
                        help="folder for transform.tfm, registered.nrrd, report.json and overlay.png")
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
    options: RegistrationOptions | None = None,
    fixed_volume_index: int | None = None,
    moving_volume_index: int | None = None,
    **shortcuts: Any,
) -> RegistrationResult:
    """Read two files, register them and write the outputs (used by the single and batch commands).

    ``options`` and the keyword shortcuts (``engine=``, ``fixed_modality=``, ...) are those of
    :func:`~.pipeline.register`; the file names and headers fill in what the shortcuts leave open.
    The result's ``timings_s`` includes reading the files and writing the outputs.
    """
    times = StageTimes()
    # The overlay's drawing library takes seconds to import; import it while the engine runs. Not a
    # daemon: a run that fails early must not exit with the import half done in C extension code,
    # which can crash the interpreter's shutdown (seen once as a child ending with SIGSEGV).
    threading.Thread(target=_preload_drawing, name="preload-matplotlib").start()
    options, fixed_info, moving_info = from_shortcuts(options, None, None, shortcuts)
    check_output_folder(outdir)  # before any work: not after a whole registration
    progress = options.progress
    if progress is not None and fixed_path.is_file() and moving_path.is_file():  # else: one error line only
        progress(0.0, f"Reading {fixed_path.name} and {moving_path.name}")
    with times.stage("reading"):
        fixed = read_image(fixed_path, role="fixed image", volume_index=fixed_volume_index,
                           index_option="--fixed-volume-index")
        moving = read_image(moving_path, role="moving image", volume_index=moving_volume_index,
                            index_option="--moving-volume-index")
        fixed_info, moving_info = _from_file(fixed_info, fixed_path), _from_file(moving_info, moving_path)
    result = register(fixed, moving, options=options, fixed_info=fixed_info, moving_info=moving_info,
                      timings=times)
    if progress is not None:
        progress(1.0, f"Writing the outputs to {outdir}")
    write_outputs(
        result, fixed, outdir, extra={"fixed_file": str(fixed_path), "moving_file": str(moving_path)},
        timings=times,
    )
    return replace(result, timings_s=times.as_dict())


def _preload_drawing() -> None:
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401
    except ImportError:  # the overlay then draws without text; nothing to prepare
        pass


def _from_file(info: ImageInfo, path: Path) -> ImageInfo:
    return ImageInfo(
        name=info.name or path.name,
        metadata=info.metadata if info.metadata is not None else metadata_from_file(path),
        modality=info.modality,
        mask=info.mask,
    )


def summary_line(result: RegistrationResult) -> str:
    """The result's summary in one line of text."""
    row = result.summary()
    before, after = ("n/a" if row[key] is None else f"{row[key]:.4f}" for key in ("score_before", "score_after"))
    return (
        f"{row['moving_modality']} -> {row['fixed_modality']} with {row['engine']} ({row['preset']}): "
        f"{row['metric'].upper()} {before} -> {after}, verdict {row['verdict'].upper()}, {row['elapsed_s']:.1f} s"
    )


def print_result(result: RegistrationResult) -> None:
    """The summary, the verdict's reasons and the notes (which engine ran when the preferred one could not)."""
    print(summary_line(result))
    for reason in result.verdict.reasons:
        print(f"  - {reason}")
    for note in result.notes:
        print(f"  Note: {note}")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    lines = ProgressLines() if args.progress_lines else None

    def run() -> int:
        options = options_from_args(args)
        if lines is not None:
            options = replace(options, progress=lines)
        if args.initial_transform is not None:
            options = replace(options, initial_transform=read_transform(args.initial_transform))
        result = register_files(
            args.fixed,
            args.moving,
            args.output,
            options=options,
            fixed_modality=args.fixed_modality,
            moving_modality=args.moving_modality,
            fixed_volume_index=args.fixed_volume_index,
            moving_volume_index=args.moving_volume_index,
        )
        if lines is not None:
            lines.done(outdir=str(args.output), verdict=result.verdict.label)
            return EXIT_OK
        print_result(result)
        for folder in result.kept_temp_dirs:
            print(f"Engine work folder kept in {folder}")
        print(f"Outputs in {args.output}")
        return EXIT_OK

    return guarded(run) if lines is None else guarded_with_events(run, lines)
