"""The BRAINSFit adapter running the real ``BRAINSFit`` on small synthetic heads with known truth.

The program is found as the adapter finds it: ``$ONECLICK_BRAINSFIT``, then PATH. Without one these
tests are skipped (CI installs ITK's runtime libraries and points ``$ONECLICK_BRAINSFIT`` at a
BRAINSFit build). The stand-in program of test_brainsfit_engine.py is kept only for faults the real
program cannot be made to show (exit 0 without a result, a non-rigid result to a rigid request).
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import engine_test_pair
from robustness_support import running_children

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.engines.base import EngineRequest, EngineSettings, RunOptions
from OneClickRegistrationLib.engines.brainsfit_engine import BrainsFitEngine
from OneClickRegistrationLib.engines.external_program import EngineFiles, ProgramCommand
from OneClickRegistrationLib.errors import CancelledError, EngineError, EngineTimeoutError
from OneClickRegistrationLib.preparation import initial_alignment, prepare_pair
from OneClickRegistrationLib.presets import preset_for

_FOUND = BrainsFitEngine(EngineSettings()).availability()
pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not _FOUND.available,
                       reason=f"no BRAINSFit executable ({_FOUND.detail}); set $ONECLICK_BRAINSFIT to one"),
]



@pytest.fixture(autouse=True)
def private_tempdir(tmp_path, monkeypatch) -> Path:
    """Engine temporary folders go to this test's own folder (spaces and non-ASCII in its path)."""
    folder = tmp_path / "engine temp é ü"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _request(pair: synthetic.SyntheticPair, **changes) -> EngineRequest:
    """What the pipeline hands an engine: prepared images and its centred start (moments)."""
    preset = preset_for(pair.fixed_modality, pair.moving_modality)
    prepared = prepare_pair(pair.fixed, pair.moving, preset)
    # The centred start without the global search: the engine itself must cover the rest.
    changes.setdefault("initial_transform", initial_alignment(prepared, preset.initialization, search=False))
    return EngineRequest(fixed=prepared.fixed, moving=prepared.moving, preset=preset, **changes)


def _tre(transform: sitk.Transform, pair: synthetic.SyntheticPair) -> float:
    return float(synthetic.target_registration_error(transform, pair.truth, pair.brain_points[:500]).mean())


def _engine() -> BrainsFitEngine:
    return BrainsFitEngine(EngineSettings())


def _brainsfit_children() -> set[int]:
    return running_children("BRAINSFit")


def _head_mask(image: sitk.Image) -> sitk.Image:
    return sitk.BinaryDilate(sitk.BinaryThreshold(image, 100.0, 1e9, 1, 0), [2, 2, 2])


# --- accuracy -------------------------------------------------------------------------------------


def test_rigid_cross_modality_coarse_to_fine(t2_pair, private_tempdir):
    request = _request(t2_pair)
    assert _tre(request.initial_transform, t2_pair) > 5.0
    progress: list[tuple[float, str]] = []
    output = _engine().run(request, RunOptions(progress=lambda f, m: progress.append((f, m))))
    assert isinstance(output.transform, sitk.Euler3DTransform)
    assert _tre(output.transform, t2_pair) < 0.25
    commands = [line for line in output.log if line.startswith("$ ")]
    assert len(commands) == 2  # the coarse run, then the full-resolution run started from its result
    assert "--initialTransform level_1_transform.txt" in commands[1]
    assert "--maskProcessingMode NOMASK" in commands[0]
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("level 2/2" in m for _, m in progress)
    assert list(private_tempdir.iterdir()) == []


def test_rigid_same_modality_with_correlation():
    pair = engine_test_pair("T1", "T1")
    request = _request(pair)  # same-contrast MR presets optimise MI; correlation is the CT-CT choice
    request = replace(request, preset=replace(request.preset, similarity="ncc"))
    output = _engine().run(request, RunOptions(threads=1))
    assert "--costMetric NC" in output.log[0] and "--numberOfThreads 1" in output.log[0]
    assert _tre(output.transform, pair) < 0.25


def test_affine_ct_to_t1(ct_pair):
    output = _engine().run(_request(ct_pair, transform_kind="affine"), RunOptions())
    assert isinstance(output.transform, sitk.AffineTransform)
    commands = [line for line in output.log if line.startswith("$ ")]
    # The first run goes rigid then affine from the rigid start; the second starts from that affine.
    assert "--useRigid --useAffine" in commands[0].replace("--useScaleVersor3D ", "")
    assert "--useAffine" in commands[1] and "--useRigid" not in commands[1]
    assert _tre(output.transform, ct_pair) < 1.5  # measured 0.74 mm (elastix: about 1.5 mm here)


def test_masks_reach_brainsfit_and_keep_it_accurate(t2_pair):
    request = _request(t2_pair)
    masked = replace(request, fixed_mask=_head_mask(request.fixed), moving_mask=_head_mask(request.moving))
    output = _engine().run(masked, RunOptions())
    assert "--maskProcessingMode ROI" in output.log[0]
    assert "--fixedBinaryVolume fixed_mask.nrrd" in output.log[0]
    assert _tre(output.transform, t2_pair) < 0.25


def test_a_fixed_mask_outside_the_moving_image_fails_in_brainsfits_words(t2_pair):
    # A mask of one corner of air, which the start maps outside the moving image: BRAINSFit's metric
    # has no sample, and it says so. The same run without the mask succeeds (the tests above).
    request = _request(t2_pair, initial_transform=sitk.TranslationTransform(3, (150.0, 0.0, 0.0)))
    corner = sitk.Image(request.fixed.GetSize(), sitk.sitkUInt8)
    corner.CopyInformation(request.fixed)
    corner[0:4, 0:4, 0:4] = 1
    with pytest.raises(EngineError, match=r"BRAINSFit says: .*(samples|overlap)"):
        _engine().run(replace(request, fixed_mask=corner), RunOptions())


def test_the_initial_transform_is_where_brainsfit_starts(t2_pair):
    # A start rotated about a point far from the head: it must be applied in the right direction
    # (fixed -> moving) and composed into the result, or the error stays many millimetres.
    initial = synthetic.rigid_transform((3.0, -9.0, 4.0), (2.0, 5.0, -3.0), center=(40.0, -60.0, 30.0))
    start = sitk.CompositeTransform([t2_pair.truth, initial])
    assert _tre(start, t2_pair) > 8.0
    output = _engine().run(_request(t2_pair, initial_transform=start), RunOptions())
    assert _tre(output.transform, t2_pair) < 0.25


def test_inputs_are_not_modified(t2_pair):
    request = _request(t2_pair)
    before = sitk.GetArrayFromImage(request.moving).copy(), request.initial_transform.GetParameters()
    _engine().run(request, RunOptions())
    assert np.array_equal(sitk.GetArrayViewFromImage(request.moving), before[0])
    assert request.initial_transform.GetParameters() == before[1]


# --- awkward places, failures, cancel and timeout ---------------------------------------------------


def test_program_in_a_folder_with_spaces_and_non_ascii_letters(t2_pair, tmp_path):
    folder = tmp_path / "my tools ü 中"
    folder.mkdir()
    (folder / "BRAINSFit").symlink_to(_engine().program())
    output = BrainsFitEngine(EngineSettings(executable=folder / "BRAINSFit")).run(_request(t2_pair), RunOptions())
    assert "my tools ü 中" in output.log[0]
    assert _tre(output.transform, t2_pair) < 0.25


class _BadMetricBrainsFit(BrainsFitEngine):
    """BRAINSFit asked for a cost metric it does not have."""

    def commands(self, program, request: EngineRequest, files: EngineFiles, work, options):
        return tuple(ProgramCommand(arguments=tuple("NoSuchMetric" if a == "MMI" else a for a in c.arguments),
                                    label=c.label, shown=c.shown)
                     for c in super().commands(program, request, files, work, options))


def test_a_bad_parameter_fails_with_brainsfits_own_message(t2_pair, private_tempdir):
    with pytest.raises(EngineError) as caught:
        _BadMetricBrainsFit(EngineSettings()).run(_request(t2_pair), RunOptions())
    message = str(caught.value)
    assert "BRAINSFit failed: it exited with code" in message
    assert "BRAINSFit says: PARSE ERROR" in message and "costMetric" in message
    assert any("NoSuchMetric" in line for line in caught.value.log_tail)
    assert list(private_tempdir.iterdir()) == []


def test_no_overlap_is_an_error_in_brainsfits_words(t2_pair, private_tempdir):
    far = sitk.TranslationTransform(3, (900.0, 0.0, 0.0))
    with pytest.raises(EngineError, match="All samples map outside moving image buffer"):
        _engine().run(_request(t2_pair, initial_transform=far), RunOptions())
    assert list(private_tempdir.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process check reads /proc (Linux)")
def test_cancel_stops_brainsfit_and_cleans_up(t2_pair, private_tempdir):
    seen: dict[str, object] = {}

    def progress(fraction: float, message: str) -> None:
        if "level 1" in message and "pids" not in seen:
            seen["pids"] = _brainsfit_children()
            seen["folders"] = list(private_tempdir.iterdir())

    def cancel() -> bool:
        if "pids" in seen:
            seen.setdefault("cancelled_at", time.monotonic())
            return True
        return False

    with pytest.raises(CancelledError):
        _engine().run(_request(t2_pair), RunOptions(progress=progress, cancel=cancel))
    assert seen["pids"] and len(seen["folders"]) == 1  # BRAINSFit was really running in its folder
    assert time.monotonic() - seen["cancelled_at"] < 2.0
    assert _brainsfit_children() == set()
    assert list(private_tempdir.iterdir()) == []


def test_timeout_stops_brainsfit_and_cleans_up(t2_pair, private_tempdir):
    # Both runs together take a fraction of a second on a quiet machine: a limit shorter than
    # BRAINSFit's own start-up (loading ITK's libraries) stops it for certain.
    with pytest.raises(EngineTimeoutError, match=r"did not finish within 0\.02 s"):
        _engine().run(_request(t2_pair), RunOptions(timeout_s=0.02))
    assert _brainsfit_children() == set()
    assert list(private_tempdir.iterdir()) == []


def test_cancel_from_another_thread_between_runs(t2_pair, private_tempdir):
    # The user cancels while the first run is going; the second run must not start.
    flag = threading.Event()
    messages: list[str] = []

    def progress(fraction: float, message: str) -> None:
        messages.append(message)
        if "level 1" in message and not flag.is_set():
            threading.Timer(0.2, flag.set).start()

    with pytest.raises(CancelledError):
        _engine().run(_request(t2_pair), RunOptions(progress=progress, cancel=flag.is_set))
    assert any("level 1" in m for m in messages) and not any("level 2" in m for m in messages)
    assert list(private_tempdir.iterdir()) == []
