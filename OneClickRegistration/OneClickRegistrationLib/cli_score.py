"""``oneclick-register score FIXED MOVING``: print a similarity score as JSON.

Exit status: 0 when a result was printed (check its ``status``: a degenerate overlap is an answer,
not a failure), 2 for bad input, with one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import SimpleITK as sitk

from . import metrics
from .cli_common import EXIT_OK, MODALITY_CHOICES, QuietParser, guarded
from .images import read_image, read_transform
from .masks import head_mask
from .pipeline import judge_transform

PROG = "oneclick-register score"


def build_parser() -> argparse.ArgumentParser:
    """The ``score`` parser; other commands may add options to it before parsing."""
    parser = QuietParser(
        prog=PROG,
        description="Score how well MOVING, seen through TRANSFORM, matches FIXED. The score is "
                    "computed only where both images have data (and inside the masks).",
    )
    parser.add_argument("fixed", metavar="FIXED", help="fixed image file (NRRD, NIfTI, MHA, ...)")
    parser.add_argument("moving", metavar="MOVING", help="moving image file")
    parser.add_argument("--transform", metavar="T",
                        help="ITK transform file mapping fixed points to moving points (default: identity)")
    parser.add_argument("--metric", choices=metrics.METRICS, default="ncc",
                        help="ncc: same modality; mi/nmi: different modalities (default: ncc)")
    parser.add_argument("--fixed-mask", metavar="M",
                        help="mask on the fixed image's grid (nonzero = inside)")
    parser.add_argument("--moving-mask", metavar="M",
                        help="mask on the moving image's grid (nonzero = inside)")
    parser.add_argument("--auto-mask", action="store_true",
                        help="compute a head mask for an image whose mask is not given")
    parser.add_argument("--bins", type=int, default=metrics.DEFAULT_BINS,
                        help=f"histogram bins per image for mi/nmi (default: {metrics.DEFAULT_BINS})")
    parser.add_argument("--min-overlap", type=float, default=metrics.DEFAULT_MIN_OVERLAP_FRACTION,
                        metavar="FRACTION",
                        help="smallest overlap, as a fraction of the fixed domain, that gets a value "
                             f"(default: {metrics.DEFAULT_MIN_OVERLAP_FRACTION})")
    parser.add_argument("--verdict", action="store_true",
                        help="also judge the transform (good / questionable / failed, with reasons), the way "
                             "registrations are judged: with the pair's preset metric on the prepared images")
    parser.add_argument("--fixed-modality", type=str.upper, choices=MODALITY_CHOICES,
                        help="fixed modality for --verdict (default: detected)")
    parser.add_argument("--moving-modality", type=str.upper, choices=MODALITY_CHOICES,
                        help="moving modality for --verdict (default: detected)")
    return parser


def compute(args: argparse.Namespace) -> dict[str, object]:
    """Read the inputs named in ``args``, score them, and return the JSON-ready result."""
    fixed = read_image(args.fixed, role="fixed image")
    moving = read_image(args.moving, role="moving image")
    transform = read_transform(args.transform) if args.transform else None
    fixed_mask = _mask(args.fixed_mask, "fixed mask", fixed, args.auto_mask)
    moving_mask = _mask(args.moving_mask, "moving mask", moving, args.auto_mask)
    result = metrics.score(fixed, moving, transform=transform, metric=args.metric, fixed_mask=fixed_mask,
                           moving_mask=moving_mask, bins=args.bins, min_overlap_fraction=args.min_overlap)
    judged: dict[str, object] = {}
    if getattr(args, "verdict", False):
        judgement = judge_transform(fixed, moving, transform if transform is not None else sitk.Transform(),
                                    fixed_modality=args.fixed_modality, moving_modality=args.moving_modality,
                                    fixed_name=str(args.fixed), moving_name=str(args.moving))
        judged = {
            "verdict": judgement.verdict.label,
            "verdict_reasons": list(judgement.verdict.reasons),
            "verdict_evidence": dict(judgement.verdict.evidence),
            # the same summary as report.json and the registration's one-line summary (preset,
            # preset metric, score without and with the transform, ...)
            "judgement": judgement.summary(),
        }
    return {
        **result.to_dict(),
        **judged,
        "fixed": args.fixed,
        "moving": args.moving,
        "transform": args.transform,
        "fixed_mask": args.fixed_mask or ("auto" if args.auto_mask else None),
        "moving_mask": args.moving_mask or ("auto" if args.auto_mask else None),
    }


def _mask(path: str | None, role: str, image: sitk.Image, auto: bool) -> sitk.Image | None:
    if path:
        return read_image(path, role=role)
    return head_mask(image) if auto else None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        payload = compute(args)
        try:
            print(json.dumps(payload, indent=2), flush=True)
        except BrokenPipeError:  # the reader went away (``| head``): not an error worth a traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK

    # RuntimeError, OSError: ITK or the file system refused something the checks let through.
    return guarded(run, prog=PROG, unexpected=(RuntimeError, OSError))
