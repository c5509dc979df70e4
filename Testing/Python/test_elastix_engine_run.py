"""The Elastix adapter running the real ``elastix`` on small synthetic heads with known ground truth."""

from __future__ import annotations

import shutil
import stat
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from robustness_support import running_children

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.engines.base import EngineRequest, EngineSettings, RunOptions
from OneClickRegistrationLib.engines.elastix_engine import ElastixEngine, parameter_map
from OneClickRegistrationLib.engines.elastix_parameters import ParameterMap, format_parameters
from OneClickRegistrationLib.errors import CancelledError, EngineError, EngineTimeoutError
from OneClickRegistrationLib.preparation import initial_alignment, prepare_pair
from OneClickRegistrationLib.presets import preset_for

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(shutil.which("elastix") is None,
                       reason="elastix is not on PATH (Debian/Ubuntu: apt install elastix)"),
]



@pytest.fixture(autouse=True)
def private_tempdir(tmp_path, monkeypatch) -> Path:
    """Engine temp folders go to this test's own folder, so leftovers are ours to see."""
    folder = tmp_path / "engine-temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _leftovers(folder: Path) -> list[Path]:
    return sorted(folder.glob("oneclickreg-elastix-*"))


def _request(pair: synthetic.SyntheticPair, **kwargs) -> EngineRequest:
    """What the pipeline hands an engine: the real preparation (float32, CT windowed, MR winsorized) and, by
    default, the pipeline's start (the moments of the two head masks)."""
    preset = kwargs.pop("preset", preset_for(pair.fixed_modality, pair.moving_modality))
    prepared = prepare_pair(pair.fixed, pair.moving, preset)
    kwargs.setdefault("initial_transform", initial_alignment(prepared, "moments"))
    return EngineRequest(fixed=prepared.fixed, moving=prepared.moving, preset=preset, **kwargs)


def _centred(fixed: sitk.Image, moving: sitk.Image, mode: int) -> sitk.Transform:
    # Intensities shifted to start at 0: mass must be non-negative, and windowed CT has a negative
    # background.
    def mass(image: sitk.Image) -> sitk.Image:
        return sitk.ShiftScale(image, -float(np.min(sitk.GetArrayViewFromImage(image))), 1.0)

    return sitk.CenteredTransformInitializer(mass(fixed), mass(moving), sitk.Euler3DTransform(), mode)


def _tre(transform: sitk.Transform, pair: synthetic.SyntheticPair) -> float:
    return float(synthetic.target_registration_error(transform, pair.truth, pair.brain_points).mean())


class _AdaptedElastix(ElastixEngine):
    """elastix with parameters replaced (to make it fail, or not move), the way a user would adapt
    a parameter map."""

    def __init__(self, overrides: ParameterMap) -> None:
        super().__init__(EngineSettings())
        self.overrides = overrides

    def parameters(self, request: EngineRequest) -> ParameterMap:
        parameters = super().parameters(request)
        parameters.update(self.overrides)
        return parameters


def _engine(**overrides: tuple) -> ElastixEngine:
    return _AdaptedElastix(overrides) if overrides else ElastixEngine(EngineSettings())


def test_recovers_rigid_t2_to_t1_from_the_centres_of_mass(t2_pair, private_tempdir):
    start = _tre(sitk.Euler3DTransform(), t2_pair)
    progress: list[tuple[float, str]] = []
    output = _engine().run(_request(t2_pair), RunOptions(progress=lambda f, m: progress.append((f, m))))
    assert isinstance(output.transform, sitk.Euler3DTransform)
    assert start > 10.0
    assert _tre(output.transform, t2_pair) < 0.18  # measured 0.086 (0.24 with the 0.3 mm canary)
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("level 3/3" in m for _, m in progress)
    assert output.engine_metric_value is not None and output.engine_metric_value < 0  # MI is negated
    assert output.log[0].startswith("$ ") and "-t0" in output.log[0]
    assert _leftovers(private_tempdir) == []


def test_recovers_rigid_ct_to_t1_from_a_centered_initializer(ct_pair, private_tempdir):
    request = _request(ct_pair)
    initial = _centred(request.fixed, request.moving, sitk.CenteredTransformInitializerFilter.GEOMETRY)
    output = _engine().run(replace(request, initial_transform=initial), RunOptions(threads=1))
    assert "-threads 1" in output.log[0]
    assert isinstance(output.transform, sitk.Euler3DTransform)
    assert _tre(output.transform, ct_pair) < 0.25  # measured 0.167 (0.39 with the 0.3 mm canary)
    assert _leftovers(private_tempdir) == []


def test_recovers_from_the_geometric_centres_with_the_recursive_pyramid(t2_pair):
    # Sigmas following ITK's pyramid rule at 2.5 mm (levels 5/2.5/2.5 mm) select the recursive pyramid.
    preset = replace(preset_for("T1", "T2"), initialization="geometry", smoothing_sigmas_mm=(2.5, 0.0, 0.0))
    request = _request(t2_pair, preset=preset)
    request = replace(request, initial_transform=_centred(
        request.fixed, request.moving, sitk.CenteredTransformInitializerFilter.GEOMETRY))
    assert '(FixedImagePyramid "FixedRecursiveImagePyramid")' in format_parameters(parameter_map(request))
    output = _engine().run(request, RunOptions())
    assert "-t0" in output.log[0]
    assert _tre(output.transform, t2_pair) < 0.18  # measured 0.087 (0.24 with the 0.3 mm canary)


def test_result_includes_a_rotated_initial_transform(t2_pair):
    # The start is off by a rotation about a point far from the head, so applying the initial
    # transform in the wrong order (or dropping it) would leave an error of many millimetres.
    initial = synthetic.rigid_transform((3.0, -9.0, 4.0), (2.0, 5.0, -3.0), center=(40.0, -60.0, 30.0))
    assert _tre(initial, t2_pair) > 10.0
    output = _engine().run(_request(t2_pair, initial_transform=initial), RunOptions())
    assert _tre(output.transform, t2_pair) < 0.18  # measured 0.087 (0.24 with the 0.3 mm canary)
    # With a zero step size the result is the initial transform itself (the -t0 file is read right).
    unoptimized = _engine(AutomaticParameterEstimation=(False,), SP_a=(0.0,)).run(
        _request(t2_pair, initial_transform=initial), RunOptions())
    points = t2_pair.brain_points[:200]
    assert synthetic.target_registration_error(unoptimized.transform, initial, points).max() < 1e-3


def test_affine_with_masks(t2_pair):
    request = _request(t2_pair, transform_kind="affine")
    # Head masks (everything brighter than the background noise), as the pipeline would pass them.
    fixed_mask = sitk.BinaryThreshold(request.fixed, 100.0, 1e9, 1, 0)
    moving_mask = sitk.BinaryThreshold(request.moving, 100.0, 1e9, 1, 0)
    output = _engine().run(replace(request, fixed_mask=fixed_mask, moving_mask=moving_mask),
                           RunOptions(keep_temp=True))
    assert isinstance(output.transform, sitk.AffineTransform)
    assert "-fMask" in output.log[0] and "-mMask" in output.log[0]
    assert _tre(output.transform, t2_pair) < 0.25  # measured 0.161 (0.32 with the 0.3 mm canary)
    kept = Path(output.kept_temp_dir)
    try:
        assert (kept / "out" / "TransformParameters.0.txt").is_file()
        assert '(Transform "AffineTransform")' in (kept / "parameters.txt").read_text()
        assert '(ErodeMask "false")' in (kept / "parameters.txt").read_text()
    finally:
        shutil.rmtree(kept)


def test_a_fine_fixed_image_reaches_elastix_on_the_finest_levels_grid(t2_pair):
    # The T2 pair's 2.5 mm fixed image resampled to 0.625 mm in plane: its finest level works at
    # 1.25 mm, so elastix reads it block-averaged 2x2 in plane, each voxel at its block's centre;
    # its mask stays on the fine grid.
    request = _request(t2_pair)
    size, spacing = request.fixed.GetSize(), request.fixed.GetSpacing()
    fine_grid = sitk.Image([4 * size[0], 4 * size[1], size[2]], sitk.sitkFloat32)
    fine_grid.SetSpacing((spacing[0] / 4, spacing[1] / 4, spacing[2]))
    fine_grid.SetDirection(request.fixed.GetDirection())
    fine_grid.SetOrigin(request.fixed.TransformContinuousIndexToPhysicalPoint((-0.375, -0.375, 0.0)))
    fine = sitk.Resample(request.fixed, fine_grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    head = sitk.BinaryThreshold(fine, 100.0, 1e9, 1, 0)
    output = _engine().run(replace(request, fixed=fine, fixed_mask=head), RunOptions(keep_temp=True))
    assert "-fMask" in output.log[0]
    kept = Path(output.kept_temp_dir)
    try:
        read = sitk.ReadImage(str(kept / "fixed.mha"))
        assert read.GetSize() == (2 * size[0], 2 * size[1], size[2])
        assert np.allclose(read.GetSpacing(), (spacing[0] / 2, spacing[1] / 2, spacing[2]))
        assert np.allclose(read.GetOrigin(), request.fixed.TransformContinuousIndexToPhysicalPoint((-0.25, -0.25, 0)))
    finally:
        shutil.rmtree(kept)
    assert _tre(output.transform, t2_pair) < 0.18  # measured 0.120 (0.34 with the 0.3 mm canary)


def _long_request(pair: synthetic.SyntheticPair) -> EngineRequest:
    preset = replace(preset_for("T1", "T2"), iterations=(20000, 20000, 20000))
    return _request(pair, preset=preset)


def _elastix_children() -> set[int]:
    return running_children("elastix")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process check reads /proc (Linux)")
def test_cancel_stops_elastix_mid_run_and_cleans_up(t2_pair, private_tempdir):
    seen: dict[str, object] = {}

    def progress(fraction: float, message: str) -> None:
        if "iteration" in message and "pids" not in seen:
            seen["pids"] = _elastix_children()
            seen["folders"] = _leftovers(private_tempdir)
        elif "cancelled_at" in seen:
            seen["after"] = max(fraction, float(seen.get("after", 0.0)))  # type: ignore[arg-type]

    def cancel() -> bool:
        if "pids" in seen:
            seen.setdefault("cancelled_at", True)
            return True
        return False

    with pytest.raises(CancelledError):
        _engine().run(_long_request(t2_pair), RunOptions(progress=progress, cancel=cancel))
    assert seen["pids"] and len(seen["folders"]) == 1  # elastix was really running in its folder
    # Stopped mid-run (an event, not a clock): nothing reported after the cancel came near the run's end.
    assert float(seen.get("after", 0.0)) < 0.9  # type: ignore[arg-type]
    for pid in seen["pids"]:
        assert not Path(f"/proc/{pid}").exists() or pid not in _elastix_children()
    assert _elastix_children() == set()
    assert _leftovers(private_tempdir) == []


def test_timeout_stops_elastix_and_cleans_up(t2_pair, private_tempdir):
    with pytest.raises(EngineTimeoutError, match=r"did not finish within 1\.5 s"):
        _engine().run(_long_request(t2_pair), RunOptions(timeout_s=1.5))
    assert _elastix_children() == set()
    assert _leftovers(private_tempdir) == []


def test_unknown_component_gives_elastixs_own_message(t2_pair, private_tempdir):
    with pytest.raises(EngineError) as caught:
        _engine(Metric=("NoSuchMetric",)).run(_request(t2_pair), RunOptions())
    message = str(caught.value)
    assert "elastix failed: it exited with code 1" in message
    assert "The following component could not be created: NoSuchMetric" in message
    assert any("NoSuchMetric" in line for line in caught.value.log_tail)
    assert _leftovers(private_tempdir) == []


def test_impossible_value_fails_with_elastixs_message(t2_pair):
    with pytest.raises(EngineError) as caught:
        _engine(NumberOfHistogramBins=(-5,)).run(_request(t2_pair), RunOptions())
    assert "elastix says:" in str(caught.value)
    assert caught.value.log_tail


def _fake_elastix(folder: Path, body: str) -> Path:
    program = folder / "elastix"
    program.write_text("#!/bin/sh\n" + body + "\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program


@pytest.mark.parametrize(("body", "expected"), [
    ('echo "Total time elapsed: 0s."; exit 0', "exited normally but wrote no TransformParameters.0.txt"),
    ('echo "about to crash"; kill -SEGV $$', "killed by signal 11"),
])
def test_programs_that_misbehave_raise_engine_error(t2_pair, tmp_path, private_tempdir, body, expected):
    # Stand-ins: the real elastix cannot be made to exit 0 without a result, or to crash, on demand.
    program = _fake_elastix(tmp_path, body)
    engine = ElastixEngine(EngineSettings(executable=program))
    with pytest.raises(EngineError, match=expected) as caught:
        engine.run(_request(t2_pair), RunOptions())
    assert caught.value.log_tail
    assert _leftovers(private_tempdir) == []


def test_inputs_are_not_modified(t2_pair):
    request = _request(t2_pair, initial_transform=sitk.Euler3DTransform())
    before = sitk.GetArrayFromImage(request.moving).copy(), request.initial_transform.GetParameters()
    _engine(MaximumNumberOfIterations=(5, 5, 5)).run(request, RunOptions())
    assert np.array_equal(sitk.GetArrayViewFromImage(request.moving), before[0])
    assert request.initial_transform.GetParameters() == before[1]
