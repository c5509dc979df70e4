"""The ``demo`` command: an offline cross-modality registration on a synthetic head.

A CT-like head is moved by a known rigid transform and registered onto a T1-like head of the same
subject; the demo prints the score, the verdict and the true error in millimetres. Its files go to
a new temporary folder unless -o names one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .cli_common import EXIT_OK, QuietParser, TerminalProgress, guarded
from .cli_register import print_result
from .images import write_image
from .output_folder import check_output_folder
from .outputs import write_outputs
from .pipeline import register
from .synthetic import make_pair, target_registration_error

DESCRIPTION = ("An offline cross-modality registration on a synthetic head. "
               + __doc__.split("\n\n")[1].replace("\n", " "))
DEMO_ROTATION_DEG = (12.0, -8.0, 15.0)
DEMO_TRANSLATION_MM = (14.0, -10.0, 8.0)


def main(argv: list[str]) -> int:
    parser = QuietParser(prog="oneclick-register demo", description=DESCRIPTION)
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                        help="folder for the demo's files (default: a new temporary folder)")
    parser.add_argument("--fast", action="store_true", help="coarser images (about 5x faster)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    def run() -> int:
        if args.output is not None:
            check_output_folder(args.output)
        pair = make_pair(
            "T1",
            "CT",
            rotation_deg=DEMO_ROTATION_DEG,
            translation_mm=DEMO_TRANSLATION_MM,
            moving_fov_shift_mm=(6.0, -4.0, 5.0),
            coarsen=2.0 if args.fast else 1.3,
            seed=7,
        )
        print(
            f"Synthetic head: T1 fixed "
            f"{pair.fixed.GetSize()}, CT moving {pair.moving.GetSize()}, "
            f"moved by rotation {DEMO_ROTATION_DEG} deg "
            f"and translation {DEMO_TRANSLATION_MM} mm."
        )
        result = register(
            pair.fixed,
            pair.moving,
            fixed_name="fixed_T1",
            moving_name="moving_CT",
            progress=TerminalProgress(enabled=not args.quiet),
        )
        errors = target_registration_error(result.transform, pair.truth, pair.brain_points)
        print_result(result)
        print(
            f"True error over {len(errors)} brain points: "
            f"mean {errors.mean():.2f} mm, max {errors.max():.2f} mm"
        )
        # Written only now, so an interrupted demo leaves nothing behind.
        output = args.output if args.output is not None else Path(tempfile.mkdtemp(prefix="oneclick-demo-"))
        try:
            write_outputs(result, pair.fixed, output)
            write_image(pair.fixed, output / "fixed_T1.nrrd")
            write_image(pair.moving, output / "moving_CT.nrrd")
        except BaseException:
            if args.output is None:
                shutil.rmtree(output, ignore_errors=True)
            raise
        print(f"Outputs (transform.tfm, registered.nrrd, report.json, overlay.png, the two heads) in {output}")
        return EXIT_OK

    return guarded(run)
