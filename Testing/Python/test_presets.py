"""The preset table: one preset per ordered modality pair, with sound choices, and its pyramid."""

from __future__ import annotations

import pytest

from OneClickRegistrationLib.engines import ENGINE_NAMES
from OneClickRegistrationLib.errors import InputError
from OneClickRegistrationLib.modality import Modality
from OneClickRegistrationLib.presets import PRESETS, level_shrink_factors, preset_for


def test_every_ordered_pair_has_a_preset_with_sound_choices() -> None:
    assert set(PRESETS) == {(f, m) for f in Modality for m in Modality}
    for (fixed, moving), preset in PRESETS.items():
        same = fixed == moving and fixed is not Modality.MR
        assert preset.similarity == ("ncc" if same else "mi"), preset.name
        assert preset.score_metric == ("ncc" if same else "nmi"), preset.name
        assert preset.moving_fill_value == (-1024.0 if moving is Modality.CT else 0.0)
        assert (preset.moving_ct_window is not None) == (moving is Modality.CT)
        assert preset.engines[-1] == "simpleitk"  # one click always has an engine
        assert set(preset.engines) <= set(ENGINE_NAMES)
        assert len(preset.shrink_factors) == len(preset.smoothing_sigmas_mm) == len(preset.iterations)
        assert preset.transform == "rigid"


def test_affine_override_and_bad_modality() -> None:
    assert preset_for("t1", "ct", transform="affine").transform == "affine"
    with pytest.raises(InputError, match="T1, T2, FLAIR, CT, MR"):
        preset_for("PET", "T1")


def test_pyramid_adapts_to_the_fixed_resolution() -> None:
    preset = preset_for("T1", "T2")
    assert level_shrink_factors(preset, (1.0, 1.0, 1.0)) == (4, 2, 1)
    assert level_shrink_factors(preset, (2.5, 2.5, 2.5)) == (2, 1, 1)
    assert level_shrink_factors(preset, (0.5, 0.5, 3.0)) == (8, 4, 2)
