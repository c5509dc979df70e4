"""Preparation and the start it gives the engines: partial fields of view by design, for every engine."""

from __future__ import annotations

import pytest

from OneClickRegistrationLib import pipeline, synthetic
from OneClickRegistrationLib.engines import get_engine
from OneClickRegistrationLib.masks import overlap_mask
from OneClickRegistrationLib.preparation import initial_alignment, prepare_pair
from OneClickRegistrationLib.presets import preset_for


@pytest.fixture(scope="module")
def ct_and_mr_slab() -> synthetic.SyntheticPair:
    """CT fixed, T1 moving cropped to a 60 mm slab above the head's centre (the issue's failing case)."""
    return synthetic.make_pair("CT", "T1", rotation_deg=(9.0, -6.0, 12.0), translation_mm=(6.0, 10.0, -5.0),
                               moving_fov_mm=(200.0, 240.0, 60.0), moving_fov_shift_mm=(0.0, 0.0, 20.0),
                               coarsen=1.25, seed=21)


def test_a_slab_gets_a_sampling_mask_inside_the_overlap(ct_and_mr_slab):
    pair = ct_and_mr_slab
    prepared = prepare_pair(pair.fixed, pair.moving, preset_for("CT", "T1"))
    start = initial_alignment(prepared, "moments")
    mask = overlap_mask(prepared.fixed_head, prepared.moving, start)
    assert mask is not None
    # with the true transform too, the head inside the slab is a minority of the fixed head
    truth_mask = overlap_mask(prepared.fixed_head, prepared.moving, pair.truth)
    assert truth_mask is not None


@pytest.mark.engine
@pytest.mark.parametrize("engine", [
    pytest.param("elastix", marks=pytest.mark.xfail(
        strict=True, reason="elastix now runs (no abort) but ends 2.1-2.6 mm off on this pair's 6 mm CT slices "
        "whatever the sampler or mask margin; at 5 mm CT slices it reaches 0.5-1.3 mm")),
    "simpleitk",
])
def test_ct_fixed_and_an_mr_slab_register_without_recovery(ct_and_mr_slab, engine):
    # Before: elastix stopped with "Too many samples map outside moving image buffer"; the SimpleITK
    # engine ended 13-16 mm off.
    if not get_engine(engine).availability().available:
        pytest.skip(f"{engine} is not installed")
    pair = ct_and_mr_slab
    result = pipeline.register(pair.fixed, pair.moving, fixed_modality="CT", moving_modality="T1", engine=engine,
                               recover=False)
    error = synthetic.target_registration_error(result.transform, pair.truth, pair.brain_points[:500]).mean()
    assert error < 2.0
    assert result.verdict.label == "good"
