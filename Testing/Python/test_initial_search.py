"""The coarse global start: rotations to 90 degrees, no overlap and slabs start inside the capture range."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import initial_search, synthetic
from OneClickRegistrationLib.preparation import initial_alignment, prepare_pair
from OneClickRegistrationLib.presets import preset_for

# The engines' capture range, measured: elastix and SimpleITK converge from starts within ~20 mm / 25 deg.
CAPTURE_MM = 10.0


def _error(transform: sitk.Transform, pair: synthetic.SyntheticPair) -> float:
    return float(synthetic.target_registration_error(transform, pair.truth, pair.brain_points[:300]).mean())


def _prepared(pair: synthetic.SyntheticPair):
    return prepare_pair(pair.fixed, pair.moving, preset_for(pair.fixed_modality, pair.moving_modality))


@pytest.mark.parametrize(("fixed", "moving", "rotation", "translation"), [
    ("T1", "CT", (0.0, 0.0, 80.0), (10.0, -5.0, 8.0)),
    ("CT", "FLAIR", (-70.0, 10.0, 0.0), (0.0, 12.0, -6.0)),
    ("T2", "T1", (20.0, -85.0, 5.0), (-8.0, 0.0, 10.0)),
])
def test_large_rotations_start_inside_the_capture_range(fixed, moving, rotation, translation):
    pair = synthetic.make_pair(fixed, moving, rotation_deg=rotation, translation_mm=translation, coarsen=2.0,
                               moving_fov_shift_mm=(6.0, -4.0, 5.0), seed=11)
    prepared = _prepared(pair)
    centred = initial_alignment(prepared, "moments", search=False)
    assert _error(centred, pair) > 30.0  # the centred start alone is far outside the capture range
    assert _error(initial_alignment(prepared, "moments"), pair) < CAPTURE_MM


def test_no_overlap_in_the_headers_is_found():
    pair = synthetic.make_pair("T1", "T2", rotation_deg=(15.0, -10.0, 20.0), translation_mm=(280.0, -60.0, 40.0),
                               coarsen=2.0, seed=12)
    prepared = _prepared(pair)
    assert _error(initial_alignment(prepared, "geometry"), pair) < CAPTURE_MM


def test_a_slab_under_a_whole_head_is_searched_the_other_way_round():
    pair = synthetic.make_pair("CT", "T1", rotation_deg=(8.0, -6.0, 10.0), translation_mm=(5.0, 8.0, -6.0),
                               moving_fov_mm=(200.0, 240.0, 60.0), moving_fov_shift_mm=(0.0, 0.0, 25.0),
                               coarsen=1.5, seed=13)
    prepared = _prepared(pair)
    centred = initial_alignment(prepared, "moments", search=False)
    found = initial_alignment(prepared, "moments")
    assert _error(found, pair) < min(CAPTURE_MM, _error(centred, pair))


def test_a_good_start_is_kept_and_the_search_is_cheap(t1_t2_pair):
    prepared = _prepared(t1_t2_pair)
    result = initial_search.search_start(prepared.fixed, prepared.fixed_head, prepared.moving,
                                         prepared.moving_head, t1_t2_pair.truth, metric="nmi")
    assert result is not None and result.start_value is not None
    assert result.value >= result.start_value
    assert _error(result.transform, t1_t2_pair) < 3.0  # the truth stays (within the coarse grid's reach)
    assert 300 <= result.candidates <= 3000


def test_euler_parameters_match_itk():
    params = np.array([[0.3, -0.7, 1.2, 5.0, 6.0, 7.0]])
    center = np.array([10.0, 20.0, 30.0])
    rotation, offset = initial_search._matrices(params, center)
    reference = sitk.Euler3DTransform()
    reference.SetCenter(tuple(center))
    reference.SetParameters(tuple(params[0]))
    point = np.array([3.0, -4.0, 5.0])
    assert np.allclose(rotation[0] @ point + offset[0], reference.TransformPoint(tuple(point)))
    assert np.allclose(initial_search._euler_angles(rotation[0]), params[0, :3])


def test_without_a_head_there_is_no_search():
    empty = sitk.Image([32, 32, 32], sitk.sitkFloat32)
    mask = sitk.Image([32, 32, 32], sitk.sitkUInt8)
    assert initial_search.search_start(empty, mask, empty, mask, sitk.Euler3DTransform(), metric="nmi") is None
