"""A plain verdict on a registration: ``good``, ``questionable`` or ``failed``, with reasons.

A similarity value alone cannot be trusted across pairs or metrics, so the verdict combines
evidence that can be:

* the score's status and its gain over the starting (header) alignment;
* the overlap: how much of the fixed head lies inside the moving image's domain;
* head agreement: Dice of the two head masks after registration, counted inside the domain
  intersection (so a partial field of view is not punished), on the pair's statistics grid (every
  k-th fixed voxel, as the scores are);
* local optimality: small rigid perturbations (+/- 2 mm, +/- 2 degrees) of the result must not
  improve the score. They are scored on a coarse copy of the fixed image, so this costs little.

Every threshold lives in :data:`THRESHOLDS`, with the benchmark figures that justify it in the
README ("Verdict thresholds").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk

from .images import bounding_box
from .masks import shrink_mask
from .metrics import ScoreResult, score
from .preparation import STATISTICS_SPACING_MM, PreparedPair
from .transforms import compose

Label = Literal["good", "questionable", "failed"]


@dataclass(frozen=True)
class VerdictThresholds:
    """Decision thresholds (tuned on ``Testing/Benchmarks/bench_verdict.py``)."""

    # Share of the fixed head inside the moving domain. Low on purpose: a thin slab (partial field of
    # view) registers fine, and the domain-restricted Dice below still checks it.
    overlap_failed: float = 0.10
    overlap_questionable: float = 0.25
    dice_failed: float = 0.75  # head-mask Dice inside the domain intersection
    dice_questionable: float = 0.94
    # Thick slices and coarse voxels cap the Dice two correctly aligned head masks can reach; below
    # that ceiling (see dice_ceiling) the thresholds keep these margins.
    dice_questionable_margin: float = 0.04
    dice_failed_margin: float = 0.25
    perturbation_mm: float = 2.0
    perturbation_deg: float = 2.0
    # A perturbation that raises the score by more than this share of |score| means the result is
    # not a local optimum.
    optimum_tolerance: float = 5e-4
    # "Worse than the header alignment" is judged only for a result that moved at least this far from
    # it somewhere in the head. Closer, the two are the same alignment to within interpolation: on an
    # aligned pair, a result 0.2 mm away scored 0.1-0.5% lower only because the header alignment puts
    # voxels on voxels (tests on exact transforms; a real elastix run ended 0.15 mm off, judged worse).
    worse_needs_move_mm: float = 2.0
    coarse_spacing_mm: float = 3.0  # grid on which the perturbations are scored
    # One foreground smaller than this share of the other (inside the domain intersection): one image
    # shows the brain only (skull-stripped) and the other the whole head. Dice then cannot reach its
    # usual values; the brain must instead lie inside the head.
    brain_only_ratio: float = 0.8
    # A "head" mask covering this share of the common domain or more shows no background: no head.
    head_fills_domain: float = 0.95
    brain_only_min_ratio: float = 0.25
    containment_failed: float = 0.85
    containment_questionable: float = 0.97


THRESHOLDS = VerdictThresholds()
# Heads this large or larger use the thresholds' millimetre values as they are; smaller objects scale.
FULL_SCALE_HEAD_RADIUS_MM = 60.0


@dataclass(frozen=True)
class Verdict:
    label: Label
    reasons: tuple[str, ...]
    evidence: Mapping[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "reasons": list(self.reasons), "evidence": dict(self.evidence)}


def coarse_fixed(pair: PreparedPair, spacing_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """The fixed image and head mask block-averaged to about ``spacing_mm`` (cheap: no resampling)."""
    fixed = pair.fixed
    factors = [max(1, min(n // 4, int(spacing_mm // s)))
               for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    if all(f == 1 for f in factors):
        return pair.fixed, pair.fixed_head
    return sitk.BinShrink(pair.fixed, factors), shrink_mask(pair.fixed_head, factors)


def _perturbations(center: tuple[float, float, float], mm: float, deg: float) -> list[sitk.Euler3DTransform]:
    result = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            shift = [0.0, 0.0, 0.0]
            shift[axis] = sign * mm
            t = sitk.Euler3DTransform()
            t.SetCenter(center)
            t.SetTranslation(shift)
            result.append(t)
            angles = [0.0, 0.0, 0.0]
            angles[axis] = sign * math.radians(deg)
            r = sitk.Euler3DTransform()
            r.SetCenter(center)
            r.SetRotation(*angles)
            result.append(r)
    return result


def _head_center(fixed_head: sitk.Image, fixed: sitk.Image) -> tuple[float, float, float]:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(fixed_head)
    if stats.HasLabel(1):
        return tuple(stats.GetCentroid(1))  # type: ignore[return-value]
    size = fixed.GetSize()
    return fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size])  # type: ignore[return-value]


def local_optimum_gain(
    pair: PreparedPair, transform: sitk.Transform, metric: str, thresholds: VerdictThresholds = THRESHOLDS
) -> float | None:
    """Largest relative score gain of a small perturbation of ``transform`` (<= 0 at an optimum).

    Shifts and the coarse grid scale with the head's size (heads of radius 60 mm or more get the
    thresholds' values): 2 mm on a 4 cm object is a 10% misalignment, and a 3 mm grid cannot see it.
    """
    scale = min(1.0, max(0.1, head_radius_mm(pair) / FULL_SCALE_HEAD_RADIUS_MM))
    fixed, head = coarse_fixed(pair, thresholds.coarse_spacing_mm * scale)
    base = score(fixed, pair.moving, transform=transform, metric=metric, fixed_mask=head)
    if not base.ok or base.value is None:
        return None
    center = _head_center(head, fixed)
    best = -math.inf
    for perturbation in _perturbations(center, thresholds.perturbation_mm * scale, thresholds.perturbation_deg):
        trial = score(
            fixed, pair.moving, transform=compose(perturbation, transform), metric=metric, fixed_mask=head
        )
        if trial.ok and trial.value is not None:
            best = max(best, trial.value - base.value)
    if best == -math.inf:
        return None
    return best / max(abs(base.value), 1e-6)


def dice_ceiling(pair: PreparedPair) -> float:
    """The head-mask Dice two correctly aligned masks can be expected to reach, given the voxels.

    Each mask's boundary is uncertain by a share of its voxel size; for a roughly spherical head of
    radius R (from the fixed mask's volume) the Dice then loses about 3 * delta / R, with delta a
    quarter of the two images' mean voxel extents. On 1 mm heads this is about 0.99 (the fixed
    thresholds apply); with 30 mm slices it drops to about 0.88, where a fixed 0.94 would flag
    correct results. The quarter-voxel factor matched the Dice of true transforms in the hard-case
    benchmark (0.97 predicted and measured for a 2 mm T1 / 10 mm-slice CT pair).
    """
    delta = 0.25 * (float(np.mean(pair.fixed.GetSpacing())) + float(np.mean(pair.moving.GetSpacing()))) / 2
    radius = head_radius_mm(pair)
    if radius <= 0:
        return 1.0
    return float(min(1.0, max(0.5, 1.0 - 3.0 * delta / radius)))


def head_radius_mm(pair: PreparedPair) -> float:
    """Radius of the sphere with the fixed head mask's volume (0 for an empty mask)."""
    voxels = float(np.count_nonzero(sitk.GetArrayViewFromImage(pair.fixed_head)))
    volume = voxels * float(np.prod(pair.fixed.GetSpacing()))
    return (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)


def head_dice(pair: PreparedPair, transform: sitk.Transform) -> tuple[float | None, float]:
    """Head-mask Dice inside the domain intersection, and the fixed-head share in the moving domain."""
    agreement = head_agreement(pair, transform)
    return agreement.dice, agreement.overlap


@dataclass(frozen=True)
class HeadAgreement:
    """How the two foreground masks agree inside the domain intersection."""

    dice: float | None
    overlap: float  # share of the fixed head inside the moving domain
    # Share of the smaller foreground inside the larger one, when one image shows much less than the
    # other (a skull-stripped brain against a whole head); None when both show the same extent.
    containment: float | None


def head_agreement(pair: PreparedPair, transform: sitk.Transform,
                   thresholds: VerdictThresholds = THRESHOLDS) -> HeadAgreement:
    """Dice of the two head masks inside the domain intersection, and containment for brain-only images.

    Counted on the pair's statistics grid (every k-th fixed voxel, as the scores are).
    """
    _, fixed_grid_head = pair.statistics_grid
    fixed_head = sitk.GetArrayViewFromImage(fixed_grid_head) > 0
    # One resampling gives both: voxels outside the moving domain get OUTSIDE, a value no mask has.
    outside = 2
    moving_01 = sitk.Cast(sitk.NotEqual(pair.moving_head, 0), sitk.sitkUInt8)
    moved = sitk.GetArrayFromImage(
        sitk.Resample(moving_01, fixed_grid_head, transform, sitk.sitkNearestNeighbor, outside, sitk.sitkUInt8)
    )
    domain = moved != outside
    moving_head = moved == 1
    head_total = int(fixed_head.sum())
    inside = fixed_head & domain
    moving_inside = moving_head & domain
    overlap = float(inside.sum()) / head_total if head_total else 0.0
    fixed_count, moving_count = int(inside.sum()), int(moving_inside.sum())
    denominator = fixed_count + moving_count
    if denominator == 0:
        return HeadAgreement(None, overlap, None)
    common = float((inside & moving_inside).sum())
    dice = 2.0 * common / denominator
    containment = None
    smaller, larger = min(fixed_count, moving_count), max(fixed_count, moving_count)
    # Brain-only against a head: the larger mask is a head, not an image that is "head" everywhere
    # (noise or a mask that found no background), which would contain anything.
    is_head = larger < thresholds.head_fills_domain * int(domain.sum())
    # and the smaller is brain-sized (a brain is about half a head's volume), not a stray blob.
    brain_sized = smaller >= thresholds.brain_only_min_ratio * larger
    if is_head and brain_sized and smaller < thresholds.brain_only_ratio * larger:
        containment = common / smaller if smaller else 0.0
    return HeadAgreement(dice, overlap, containment)


def comparable_gain(pair: PreparedPair, transform: sitk.Transform, metric: str) -> tuple[float, float] | None:
    """Scores of the header alignment and of ``transform``, both computed with interpolation.

    The fixed image is block-averaged by 2 along each axis: its voxel centres then fall between the
    voxels of any image on the same grid, so the start and the result are both interpolated. (A
    trilinear sample at the centre of a 2x2x2 block is that block's mean, so an image against itself
    still scores as a perfect match.) Scoring the start on the original grid, without interpolation,
    made an image registered to itself look worse than where it started. Axes finer than half of
    :data:`~.preparation.STATISTICS_SPACING_MM` are averaged by a larger even factor (block centres
    still fall between voxels), so a 0.5 mm CT costs what a 1 mm one does.
    """
    factors = [_even_factor(n, s) for n, s in zip(pair.fixed.GetSize(), pair.fixed.GetSpacing())]
    fixed = sitk.BinShrink(pair.fixed, factors)
    head = shrink_mask(pair.fixed_head, factors)
    before = score(fixed, pair.moving, transform=sitk.Euler3DTransform(), metric=metric, fixed_mask=head)
    after = score(fixed, pair.moving, transform=transform, metric=metric, fixed_mask=head)
    if not (before.ok and after.ok and before.value is not None and after.value is not None):
        return None
    return before.value, after.value


def _even_factor(size: int, spacing: float) -> int:
    if size < 8:
        return 1
    return 2 * max(1, min(int(STATISTICS_SPACING_MM // (2.0 * spacing)), size // 8))


def largest_move_mm(head: sitk.Image, transform: sitk.Transform) -> float:
    """How far ``transform`` moves the corners of the head's bounding box from where they are (mm)."""
    box = bounding_box(sitk.GetArrayViewFromImage(head))  # nonzero is inside; no boolean copy of the mask
    if box is None:
        return float("inf")
    z, y, x = ((b.start, b.stop - 1) for b in box)
    corners = [head.TransformIndexToPhysicalPoint((i, j, k)) for i in x for j in y for k in z]
    return max(float(np.linalg.norm(np.subtract(transform.TransformPoint(c), c))) for c in corners)


def judge(
    pair: PreparedPair,
    transform: sitk.Transform,
    *,
    metric: str,
    score_before: ScoreResult,
    score_after: ScoreResult,
    thresholds: VerdictThresholds = THRESHOLDS,
) -> Verdict:
    """Combine the evidence into a verdict with reasons in plain words."""
    failed: list[str] = []
    doubtful: list[str] = []
    agreement = head_agreement(pair, transform, thresholds)
    dice, overlap = agreement.dice, agreement.overlap
    evidence: dict[str, float | None] = {
        "head_dice": dice,
        "head_overlap": overlap,
        "score_after": score_after.value,
        "score_before": score_before.value,
    }
    if not score_after.ok:
        failed.append(f"The result cannot be scored: {score_after.message}")
    if overlap < thresholds.overlap_failed:
        failed.append(
            f"Only {overlap:.0%} of the fixed head lies inside the moving image after registration "
            f"(at least {thresholds.overlap_failed:.0%} expected)."
        )
    elif overlap < thresholds.overlap_questionable:
        doubtful.append(
            f"Only {overlap:.0%} of the fixed head lies inside the moving image "
            f"({thresholds.overlap_questionable:.0%} or more is typical)."
        )
    ceiling = dice_ceiling(pair)
    dice_failed = min(thresholds.dice_failed, ceiling - thresholds.dice_failed_margin)
    dice_questionable = min(thresholds.dice_questionable, ceiling - thresholds.dice_questionable_margin)
    evidence["head_dice_ceiling"] = ceiling
    if agreement.containment is not None:
        # One image shows the brain only: it must lie inside the other's head.
        contained = agreement.containment
        evidence["brain_in_head"] = contained
        if contained < thresholds.containment_failed:
            failed.append(
                f"One image shows only the brain, and only {contained:.0%} of it lies inside the other's "
                f"head (at least {thresholds.containment_failed:.0%} expected)."
            )
        elif contained < thresholds.containment_questionable:
            doubtful.append(
                f"One image shows only the brain, and {contained:.0%} of it lies inside the other's head "
                f"({thresholds.containment_questionable:.0%} or more when aligned)."
            )
    elif dice is None or dice < dice_failed:
        shown = "no" if dice is None else f"{dice:.2f}"
        failed.append(
            f"The two heads do not line up: head-mask Dice {shown} "
            f"(at least {dice_failed:.2f} expected)."
        )
    elif dice < dice_questionable:
        doubtful.append(
            f"The head outlines agree only partly: Dice {dice:.2f} "
            f"({dice_questionable:.2f} or more when aligned)."
        )
    comparable = comparable_gain(pair, transform, metric) if score_after.ok else None
    if comparable is not None:
        before, after = comparable
        gain = after - before
        evidence["score_gain"] = gain
        moved = largest_move_mm(pair.fixed_head, transform)
        evidence["moved_from_header_mm"] = moved
        if gain < -1e-3 * max(abs(before), 1e-6) and moved >= thresholds.worse_needs_move_mm:
            doubtful.append(
                f"The similarity got worse than the starting alignment ({before:.4f} -> {after:.4f}, "
                "both scored with interpolation on a 2x coarser fixed grid)."
            )
    if score_after.ok and not failed:
        gain_nearby = local_optimum_gain(pair, transform, metric, thresholds)
        evidence["perturbation_gain"] = gain_nearby
        if gain_nearby is not None and gain_nearby > thresholds.optimum_tolerance:
            doubtful.append(
                f"Not a local optimum: moving the result by {thresholds.perturbation_mm:g} mm or "
                f"{thresholds.perturbation_deg:g} degrees improves the similarity by {gain_nearby:.2%}."
            )
    if failed:
        return Verdict("failed", tuple(failed + doubtful), evidence)
    if doubtful:
        return Verdict("questionable", tuple(doubtful), evidence)
    return Verdict(
        "good",
        ("The heads line up, the similarity is at a local optimum and the overlap is sufficient.",),
        evidence,
    )
