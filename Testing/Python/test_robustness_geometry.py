"""Extreme geometry still registers, with the real elastix (the presets' first engine).

Each case changes the image headers of a tiny synthetic pair in a way whose effect on the ground
truth is known exactly: a similarity ``S`` applied to both images' physical space (scaled spacing,
rotated or mirrored axes, an origin kilometres away) turns the true transform ``T`` into
``S T S^-1`` and the fixed points ``p`` into ``S p``; moving only the moving header by ``D`` turns
``T`` into ``D T``. Other cases image the head on a new grid (20:1 slices, oblique or left-handed
axes). Errors are in millimetres of the new space, against a tolerance set per case from its measured baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from robustness_support import leftovers, private_tempdir, tiny_pair, tre_mm

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.errors import InputError
from OneClickRegistrationLib.pipeline import register
from OneClickRegistrationLib.transforms import affine_from_matrix, to_matrix

pytestmark = pytest.mark.engine

# Mean error allowed per case, in mm of the case's space: about 1.5x the measured baseline (in the
# comment). On a 6 mm head the error floor is 0.1-0.9 mm, so these cases guard the header handling (a
# mislabelled axis, spacing or origin gives errors of centimetres), not sub-voxel accuracy: a 0.3 mm
# error injected before the engines (the canary) fails only the first and the 20:1 case here. Sub-voxel
# accuracy on oblique, flipped, thick-slice and fine-vs-coarse grids is checked on 2.5 mm heads in
# test_pipeline.py, where the canary fails every case.
TOLERANCE_MM = {
    "1 mm spacing, a 4 cm object": 0.16,  # measured 0.081 (0.27 with the canary)
    "10 mm spacing": 2.2,  # measured 1.49 on the current pipeline (0.845 on an earlier one)
    "20:1 anisotropic slices": 2.3,  # measured 1.53 on the current pipeline (0.811 on an earlier one)
    "oblique axes": 0.3,  # measured 0.202
    "left-handed axes": 0.5,  # measured 0.349
    "both images in a rotated, mirrored space": 0.55,  # measured 0.361
    "origins kilometres away": 0.8,  # measured 0.536
    "no overlap in physical space": 0.8,  # measured 0.532
}


@pytest.fixture(autouse=True)
def temp_root(tmp_path: Path):
    with private_tempdir(tmp_path / "engine-tmp") as root:
        yield root
    assert leftovers(root) == []


@dataclass(frozen=True)
class Case:
    fixed: sitk.Image
    moving: sitk.Image
    truth: sitk.Transform
    points: np.ndarray
    scale: float  # how much the case scales distances


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    t = sitk.Euler3DTransform()
    t.SetRotation(*(math.radians(a) for a in (ax, ay, az)))
    return np.asarray(t.GetMatrix()).reshape(3, 3)


def _moved_header(image: sitk.Image, similarity: np.ndarray) -> sitk.Image:
    """``image`` with the same voxels, its physical space mapped through the 4x4 ``similarity``."""
    linear = similarity[:3, :3]
    scale = abs(np.linalg.det(linear)) ** (1.0 / 3.0)
    rotation = linear / scale
    copy = sitk.Image(image)
    copy.SetSpacing([s * scale for s in image.GetSpacing()])
    copy.SetOrigin(tuple(linear @ np.asarray(image.GetOrigin()) + similarity[:3, 3]))
    copy.SetDirection(tuple((rotation @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel()))
    return copy


def _similar_case(similarity: np.ndarray) -> Case:
    pair = tiny_pair("T1", "T2")
    truth = similarity @ to_matrix(pair.truth) @ np.linalg.inv(similarity)
    points = (similarity[:3, :3] @ pair.brain_points.T).T + similarity[:3, 3]
    scale = abs(np.linalg.det(similarity[:3, :3])) ** (1.0 / 3.0)
    return Case(_moved_header(pair.fixed, similarity), _moved_header(pair.moving, similarity),
                affine_from_matrix(truth), points, scale)


def _scaled(factor: float) -> Case:
    return _similar_case(np.diag([factor, factor, factor, 1.0]))


def _far_away() -> Case:
    similarity = np.eye(4)
    similarity[:3, 3] = (5.0e6, -3.0e6, 2.0e6)  # 5 km, -3 km, 2 km
    return _similar_case(similarity)


def _mirrored_space() -> Case:
    """Both images' axes rotated and mirrored: oblique, left-handed headers on both sides."""
    similarity = np.eye(4)
    similarity[:3, :3] = _rotation(25.0, -35.0, 50.0) @ np.diag([1.0, 1.0, -1.0])
    return _similar_case(similarity)


def _no_overlap() -> Case:
    pair = tiny_pair("T1", "T2")
    shift = np.eye(4)
    shift[:3, 3] = (400.0, -250.0, 300.0)  # the moving field of view is far from the fixed one
    truth = shift @ to_matrix(pair.truth)
    return Case(pair.fixed, _moved_header(pair.moving, shift), affine_from_matrix(truth), pair.brain_points, 1.0)


def _regridded(spacing: tuple[float, float, float], direction: np.ndarray) -> Case:
    """The tiny pair's moving head imaged again on another grid (slice thickness, axes)."""
    pair = tiny_pair("T1", "T2")
    center = synthetic.make_subject(resolution_mm=2.5, source="analytic").head_center
    moved_center = pair.truth.TransformPoint(center)
    grid = synthetic.Grid.centered(moved_center, (220.0, 230.0, 180.0), spacing, tuple(direction.ravel()))
    moving = synthetic.render("T2", grid, image_to_reference=pair.truth.GetInverse(), resolution_mm=2.5,
                              source="analytic", seed=8)
    return Case(pair.fixed, moving, pair.truth, pair.brain_points, 1.0)


CASES = {
    "1 mm spacing, a 4 cm object": lambda: _scaled(1.0 / 6.0),
    "10 mm spacing": lambda: _scaled(10.0 / 6.0),
    "20:1 anisotropic slices": lambda: _regridded((1.5, 1.5, 30.0), np.eye(3)),
    "oblique axes": lambda: _regridded((5.0, 5.0, 5.0), _rotation(20.0, -30.0, 40.0)),
    "left-handed axes": lambda: _regridded((5.0, 5.0, 5.0), _rotation(10.0, 15.0, -20.0) @ np.diag([1.0, -1.0, 1.0])),
    "both images in a rotated, mirrored space": _mirrored_space,
    "origins kilometres away": _far_away,
    "no overlap in physical space": _no_overlap,
}


@pytest.mark.parametrize("name", CASES, ids=CASES)
def test_extreme_geometry_registers_accurately(name: str) -> None:
    case = CASES[name]()
    result = register(case.fixed, case.moving, engine="elastix", recover=False, fixed_modality="T1",
                      moving_modality="T2")
    errors = tre_mm(result.transform, case.truth, case.points)
    print(f"{name}: mean error {errors.mean():.3g} mm, max {errors.max():.3g} mm, verdict {result.verdict.label}")
    assert errors.mean() < TOLERANCE_MM[name], f"{name}: mean error {errors.mean():.3g} mm"
    assert result.registered.GetSize() == case.fixed.GetSize()
    np.testing.assert_allclose(result.registered.GetOrigin(), case.fixed.GetOrigin())
    assert result.score_after.ok and result.score_after.value > result.score_before.value if (
        result.score_before.ok) else result.score_after.ok
    # The verdict is tuned on clinical grids; on these grids it may be cautious (questionable: partial
    # volume on 30 mm slices, 2 mm perturbations on a 4 cm object), but a correct result is never "failed".
    assert result.verdict.label != "failed", (name, result.verdict.reasons)


def test_point_one_mm_spacing_of_a_head_sized_grid_is_refused_with_the_reason() -> None:
    # The tiny pair's voxels at 0.1 mm: a "head" 3-4 mm across, which is what a header storing
    # centimetres or a wrong unit looks like. The presets' pyramid works in millimetres (4, 2, 1 mm
    # voxels), so the image cannot be registered with them; the message says so and why, and no
    # engine was started (nothing to clean up, checked by the fixture).
    case = _scaled(0.1 / 6.0)
    with pytest.raises(InputError, match=r"The fixed image is too small for the registration pyramid.*"
                                         r"coarsest level \(4 mm voxels\).*0x1x0 voxels.*at least 4 per axis.*"
                                         r"covering 3.3x4x3.7 mm.*check the voxel spacing"):
        register(case.fixed, case.moving, engine="elastix", recover=False, fixed_modality="T1",
                 moving_modality="T2")
