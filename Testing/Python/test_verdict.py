"""Verdict pieces that adapt to the data: the Dice ceiling of coarse voxels, the head's size."""

from __future__ import annotations

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.preparation import prepare_pair
from OneClickRegistrationLib.presets import preset_for
from OneClickRegistrationLib.verdict import THRESHOLDS, dice_ceiling, head_dice, head_radius_mm


def _prepared(fixed: str, moving: str, coarsen: float):
    pair = synthetic.make_pair(fixed, moving, rotation_deg=(4.0, 0.0, 6.0), coarsen=coarsen, seed=1)
    return pair, prepare_pair(pair.fixed, pair.moving, preset_for(fixed, moving))


def test_thick_slices_lower_the_dice_ceiling_and_the_truth_reaches_it() -> None:
    thin_pair, thin = _prepared("T1", "T1", 2.5)
    thick_pair, thick = _prepared("T1", "FLAIR", 2.5)  # 12.5 mm FLAIR slices at this coarsening
    assert dice_ceiling(thick) < dice_ceiling(thin) <= 1.0
    assert 70.0 < head_radius_mm(thin) < 110.0  # an adult-sized synthetic head
    for pair, prepared in ((thin_pair, thin), (thick_pair, thick)):
        dice, overlap = head_dice(prepared, pair.truth)
        # the true transform's Dice stays within the questionable margin of the predicted ceiling
        assert dice is not None and dice > dice_ceiling(prepared) - THRESHOLDS.dice_questionable_margin
        assert overlap > 0.95
