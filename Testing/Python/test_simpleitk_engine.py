"""The embedded SimpleITK engine: its plan (pure), its pyramid geometry, its masks, and real registrations.

The accuracy tests use the same pairs and the same 1 mm bound as the elastix engine's tests
(``test_elastix_engine_runs.py``), plus bounds set from this engine's measured errors on them.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.cli_demo import DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM
from OneClickRegistrationLib.engines.base import EngineRequest, RunOptions
from OneClickRegistrationLib.engines.simpleitk_engine import SimpleITKEngine, level_image, plan_levels
from OneClickRegistrationLib.errors import CancelledError, EngineError, InputError
from OneClickRegistrationLib.pipeline import register
from OneClickRegistrationLib.presets import preset_for


def _image(size: tuple[int, int, int], spacing: tuple[float, float, float]) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    return image


# --- the plan (pure) ---------------------------------------------------------------------------------

def test_levels_refine_with_shrinking_steps_over_at_least_the_measured_rounds() -> None:
    for spacing in (1.0, 2.5, 6.0):
        image = _image((40, 40, 40), (spacing,) * 3)
        levels = plan_levels(EngineRequest(image, image, preset_for("T1", "T2"), sitk.Euler3DTransform()))
        starts = [level.max_step_mm for level in levels]
        assert all(later <= earlier / 2 for earlier, later in zip(starts, starts[1:])), starts
        for level in levels:
            steps = level.round_steps_mm
            assert all(later < earlier for earlier, later in zip(steps, steps[1:])), steps
        # The engine's own schedule (the presets' MR budgets are smaller, tuned for elastix).
        assert [level.iterations for level in levels] == [200, 100, 50]
        # The finest level ends with steps of a fiftieth of a voxel.
        assert levels[-1].round_steps_mm[-1] == pytest.approx(0.02 * spacing)


def test_levels_shrink_each_axis_to_the_levels_voxel_size() -> None:
    ct = _image((300, 300, 36), (0.8, 0.8, 5.0))
    t1 = _image((200, 240, 220), (1.0, 1.0, 1.0))
    levels = plan_levels(EngineRequest(ct, t1, preset_for("CT", "T1"), sitk.Euler3DTransform()))
    # 5 mm CT slices are never thinned further at the 4 mm level (an isotropic shrink of 5 would
    # leave 7 slices 25 mm apart).
    assert [level.fixed_factors for level in levels] == [(5, 5, 1), (2, 2, 1), (1, 1, 1)]
    assert [level.moving_factors for level in levels] == [(4, 4, 4), (2, 2, 2), (1, 1, 1)]


def test_a_coarse_level_is_not_shifted() -> None:
    # Intensity = the physical x coordinate (oblique grid, odd size): every coarse voxel must still
    # hold its own x coordinate. A pyramid that keeps the first voxel's position while doubling the
    # spacing (half a fine voxel off) would fail this by 0.25 mm.
    image = _image((41, 30, 12), (0.5, 0.7, 2.0))
    angle = np.deg2rad(20.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]])
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin((3.0, -7.0, 11.0))
    x = np.zeros(image.GetSize()[::-1], dtype=np.float32)
    for index in np.ndindex(*image.GetSize()):
        x[index[::-1]] = image.TransformIndexToPhysicalPoint(index)[0]
    ramp = sitk.GetImageFromArray(x)
    ramp.CopyInformation(image)
    coarse = level_image(ramp, (2, 3, 1), sigma_mm=0.0)
    assert coarse.GetSpacing() == pytest.approx((1.0, 2.1, 2.0))
    values = sitk.GetArrayViewFromImage(coarse)
    for index in itertools.product(range(coarse.GetSize()[0] - 1), range(coarse.GetSize()[1] - 1), (0, 5)):
        expected = coarse.TransformIndexToPhysicalPoint(index)[0]
        assert values[index[::-1]] == pytest.approx(expected, abs=1e-3), index


# --- real registrations --------------------------------------------------------------------------------

def _request(pair: synthetic.SyntheticPair, **kwargs) -> EngineRequest:
    """What the pipeline hands an engine: float32 images, CT windowed as the preset says, a start
    (by default the images' geometric centres matched)."""
    preset = kwargs.pop("preset", preset_for(pair.fixed_modality, pair.moving_modality))
    fixed = sitk.Cast(pair.fixed, sitk.sitkFloat32)
    moving = sitk.Cast(pair.moving, sitk.sitkFloat32)
    if preset.fixed_ct_window is not None:
        fixed = sitk.Clamp(fixed, sitk.sitkFloat32, *preset.fixed_ct_window)
    if preset.moving_ct_window is not None:
        moving = sitk.Clamp(moving, sitk.sitkFloat32, *preset.moving_ct_window)
    if "initial_transform" not in kwargs:
        kwargs["initial_transform"] = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    return EngineRequest(fixed=fixed, moving=moving, preset=preset, **kwargs)


def _tre(transform: sitk.Transform, pair: synthetic.SyntheticPair) -> float:
    return float(synthetic.target_registration_error(transform, pair.truth, pair.brain_points).mean())


@pytest.mark.engine
def test_recovers_rigid_t2_to_t1_and_reports_progress(t2_pair):
    progress: list[tuple[float, str]] = []
    output = SimpleITKEngine().run(_request(t2_pair), RunOptions(progress=lambda f, m: progress.append((f, m))))
    assert isinstance(output.transform, sitk.Euler3DTransform)
    assert _tre(sitk.Euler3DTransform(), t2_pair) > 10.0
    assert _tre(_request(t2_pair).initial_transform, t2_pair) > 5.0
    assert _tre(output.transform, t2_pair) < 0.25  # measured 0.08 mm (elastix's test: < 1 mm)
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("level 3/3" in m for _, m in progress)


@pytest.mark.engine
def test_recovers_rigid_ct_to_t1_from_a_centered_initializer(ct_pair):
    output = SimpleITKEngine().run(_request(ct_pair), RunOptions(threads=1))
    assert _tre(output.transform, ct_pair) < 0.6  # measured 0.24 mm


@pytest.mark.engine
def test_result_includes_a_rotated_initial_transform(t2_pair):
    # A start off by a rotation about a point far from the head: dropping it, or composing it in
    # the wrong order, would leave many millimetres.
    initial = synthetic.rigid_transform((3.0, -9.0, 4.0), (2.0, 5.0, -3.0), center=(40.0, -60.0, 30.0))
    assert _tre(initial, t2_pair) > 10.0
    output = SimpleITKEngine().run(_request(t2_pair, initial_transform=initial), RunOptions())
    assert _tre(output.transform, t2_pair) < 0.25  # measured 0.07 mm


@pytest.mark.engine
def test_affine_with_masks(t2_pair):
    request = _request(t2_pair, transform_kind="affine")
    fixed_mask = sitk.BinaryThreshold(request.fixed, 100.0, 1e9, 1, 0)
    moving_mask = sitk.BinaryThreshold(request.moving, 100.0, 1e9, 1, 0)
    output = SimpleITKEngine().run(replace(request, fixed_mask=fixed_mask, moving_mask=moving_mask),
                                   RunOptions())
    assert isinstance(output.transform, sitk.AffineTransform)
    assert _tre(output.transform, t2_pair) < 1.0  # measured 0.75 mm; the elastix engine's bound


@pytest.mark.engine
def test_same_inputs_give_the_same_result(t2_pair):
    first = SimpleITKEngine().run(_request(t2_pair), RunOptions())
    second = SimpleITKEngine().run(_request(t2_pair), RunOptions())
    # Same samples and steps; only the threads' summation order may differ (1e-9 mm seen).
    assert first.transform.GetParameters() == pytest.approx(second.transform.GetParameters(), abs=1e-6)


@pytest.mark.engine
def test_cancel_stops_the_registration(t2_pair):
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(CancelledError):
        SimpleITKEngine().run(_request(t2_pair), RunOptions(cancel=cancel))


@pytest.mark.engine
def test_the_demo_pair_is_good_on_the_first_try_with_the_embedded_engine_only(monkeypatch):
    # What a plain "pip install" user has: the engine registry finds no elastix, ANTs or BRAINSFit
    # (their variables point at programs that do not exist, which makes them unavailable).
    monkeypatch.setenv("ONECLICK_ELASTIX", "/nonexistent/elastix")
    monkeypatch.setenv("ONECLICK_ANTSREGISTRATION", "/nonexistent/antsRegistration")
    monkeypatch.setenv("ONECLICK_BRAINSFIT", "/nonexistent/BRAINSFit")
    pair = synthetic.make_pair("T1", "CT", rotation_deg=DEMO_ROTATION_DEG, translation_mm=DEMO_TRANSLATION_MM,
                               moving_fov_shift_mm=(6.0, -4.0, 5.0), coarsen=2.0, seed=7)
    result = register(pair.fixed, pair.moving, fixed_name="fixed_T1", moving_name="moving_CT")
    assert result.engine == "simpleitk"
    assert result.verdict.label == "good"
    assert len(result.attempts) == 1
    assert _tre(result.transform, pair) < 0.4  # measured 0.12 mm


# --- masks ---------------------------------------------------------------------------------------------

def _head_mask(image: sitk.Image) -> sitk.Image:
    # The head with a margin of 3 voxels (7.5 mm): a region of interest that keeps the head's edge.
    return sitk.BinaryDilate(sitk.BinaryThreshold(image, 100.0, 1e9, 1, 0), [3, 3, 3])


@pytest.mark.engine
def test_head_masks_give_an_accurate_rigid_result(t2_pair):
    request = _request(t2_pair)
    fixed_mask, moving_mask = _head_mask(request.fixed), _head_mask(request.moving)
    assert _tre(request.initial_transform, t2_pair) > 5.0
    output = SimpleITKEngine().run(replace(request, fixed_mask=fixed_mask, moving_mask=moving_mask), RunOptions())
    assert _tre(output.transform, t2_pair) < 1.0


@pytest.mark.engine
def test_the_fixed_mask_reaches_the_metric(t2_pair):
    # A mask of one corner of air, which the start maps outside the moving image: the metric has no
    # sample left and the first level fails (ITK's words vary with the step that first meets no sample).
    request = _request(t2_pair)
    corner = sitk.Image(request.fixed.GetSize(), sitk.sitkUInt8)
    corner.CopyInformation(request.fixed)
    corner[0:6, 0:6, 0:6] = 1
    with pytest.raises(EngineError, match="failed at level 1/3"):
        SimpleITKEngine().run(replace(request, fixed_mask=corner), RunOptions())


def test_an_empty_mask_is_refused(t2_pair):
    request = _request(t2_pair)
    empty = sitk.Image(request.fixed.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(request.fixed)
    with pytest.raises(InputError, match="fixed mask is empty"):
        SimpleITKEngine().run(replace(request, fixed_mask=empty), RunOptions())
