"""The SimpleITK engine's masks: they reach the metric, and a registration with them is accurate."""

from __future__ import annotations

import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.engines.base import EngineRequest, RunOptions
from OneClickRegistrationLib.engines.simpleitk_engine import SimpleITKEngine
from OneClickRegistrationLib.errors import EngineError, InputError
from OneClickRegistrationLib.presets import preset_for


@pytest.fixture(scope="module")
def pair() -> synthetic.SyntheticPair:
    return synthetic.make_pair("T1", "T2", rotation_deg=(6.0, -4.0, 8.0), translation_mm=(5.0, -6.0, 4.0),
                               coarsen=2.5)


def _request(pair: synthetic.SyntheticPair, **changes) -> EngineRequest:
    fixed = sitk.Cast(pair.fixed, sitk.sitkFloat32)
    moving = sitk.Cast(pair.moving, sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    return EngineRequest(fixed=fixed, moving=moving, preset=preset_for("T1", "T2"), initial_transform=initial,
                         **changes)


def _tre(transform: sitk.Transform, pair: synthetic.SyntheticPair) -> float:
    return float(synthetic.target_registration_error(transform, pair.truth, pair.brain_points[:500]).mean())


def _head_mask(image: sitk.Image) -> sitk.Image:
    # The head with a margin of 3 voxels (7.5 mm): a region of interest that keeps the head's edge.
    # (A mask cut exactly at the edge left this engine 24 mm off on this pair: reported, not fixed here.)
    return sitk.BinaryDilate(sitk.BinaryThreshold(image, 100.0, 1e9, 1, 0), [3, 3, 3])


def test_head_masks_give_an_accurate_rigid_result(pair):
    request = _request(pair)
    fixed_mask, moving_mask = _head_mask(request.fixed), _head_mask(request.moving)
    assert _tre(request.initial_transform, pair) > 5.0
    output = SimpleITKEngine().run(_request(pair, fixed_mask=fixed_mask, moving_mask=moving_mask), RunOptions())
    assert _tre(output.transform, pair) < 1.0


def test_the_fixed_mask_reaches_the_metric(pair):
    # A mask of one corner of air, which the start maps outside the moving image: the metric has no
    # sample left and ITK says so. Without the mask the same run, from the same start, finds the head.
    request = _request(pair)
    corner = sitk.Image(request.fixed.GetSize(), sitk.sitkUInt8)
    corner.CopyInformation(request.fixed)
    corner[0:6, 0:6, 0:6] = 1
    with pytest.raises(EngineError, match="All samples map outside moving image buffer"):
        SimpleITKEngine().run(_request(pair, fixed_mask=corner), RunOptions())
    assert _tre(SimpleITKEngine().run(request, RunOptions()).transform, pair) < 1.0


def test_an_empty_mask_is_refused(pair):
    request = _request(pair)
    empty = sitk.Image(request.fixed.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(request.fixed)
    with pytest.raises(InputError, match="fixed mask is empty"):
        SimpleITKEngine().run(_request(pair, fixed_mask=empty), RunOptions())


def test_simpleitk_levels_refine_with_shrinking_steps():
    from OneClickRegistrationLib.engines.simpleitk_engine import plan_levels

    for spacing in (1.0, 2.5, 6.0):
        image = sitk.Image([40, 40, 40], sitk.sitkFloat32)
        image.SetSpacing([spacing] * 3)
        levels = plan_levels(EngineRequest(image, image, preset_for("T1", "T2"), sitk.Euler3DTransform()))
        steps = [level.max_step_mm for level in levels]
        assert all(later <= earlier / 2 for earlier, later in zip(steps, steps[1:])), steps
        assert [level.iterations for level in levels] == list(preset_for("T1", "T2").iterations)
