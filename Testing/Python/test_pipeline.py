"""End-to-end tests of the one-click pipeline on synthetic heads with known ground truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from robustness_support import fingerprint

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.errors import CancelledError, EngineUnavailableError, InputError
from OneClickRegistrationLib.pipeline import _resolve_engines, judge_transform, register
from OneClickRegistrationLib.presets import preset_for
from OneClickRegistrationLib.transforms import compose


@pytest.mark.engine
def test_cross_modality_pair_is_recovered_within_1mm(t1_ct_pair: synthetic.SyntheticPair) -> None:
    pair = t1_ct_pair
    before = (fingerprint(pair.fixed), fingerprint(pair.moving))
    seen: list[float] = []
    result = register(pair.fixed, pair.moving, fixed_name="sub01_T1w", moving_name="head_ct",
                      engine="simpleitk", progress=lambda f, _m: seen.append(f))
    errors = synthetic.target_registration_error(result.transform, pair.truth, pair.brain_points)
    assert errors.mean() < 1.0, f"mean TRE {errors.mean():.2f} mm"
    assert result.fixed_modality.modality == "T1" and result.moving_modality.modality == "CT"
    assert result.preset.name == "CT-to-T1"
    assert result.metric == "nmi"
    assert result.score_after.value is not None and result.score_before.value is not None
    assert result.score_after.value > result.score_before.value
    assert result.verdict.label == "good", result.verdict.reasons
    # the resampled moving image lies on the fixed grid and keeps the moving pixel type
    assert result.registered.GetSize() == pair.fixed.GetSize()
    assert result.registered.GetPixelID() == pair.moving.GetPixelID()
    # inputs untouched, progress monotonic and complete
    assert (fingerprint(pair.fixed), fingerprint(pair.moving)) == before
    assert seen == sorted(seen) and seen[-1] == 1.0
    report = result.to_report()
    for key in ("fixed_modality", "moving_modality", "preset", "engine", "metric", "score_before",
                "score_after", "elapsed_s", "verdict", "verdict_reasons", "attempts"):
        assert key in report


def test_unavailable_engines_fall_back_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # BRAINSFit with no executable (none named, none on PATH) and no Slicer host: a real "not installed" case.
    monkeypatch.delenv("ONECLICK_BRAINSFIT", raising=False)
    preset = replace(preset_for("T1", "T2"), engines=("brainsfit", "simpleitk"))
    chosen, notes = _resolve_engines(preset, None)
    assert chosen == "simpleitk"
    assert any("brainsfit" in note.lower() and "not available" in note for note in notes)


def test_explicitly_requested_missing_engine_is_an_error(
    t1_t2_pair: synthetic.SyntheticPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ONECLICK_BRAINSFIT", raising=False)  # no BRAINSFit named, none on PATH
    with pytest.raises(EngineUnavailableError, match="brainsfit"):
        register(t1_t2_pair.fixed, t1_t2_pair.moving, engine="brainsfit")


def test_unknown_engine_and_transform_kind_are_input_errors(t1_t2_pair: synthetic.SyntheticPair) -> None:
    with pytest.raises(InputError, match="expected one of"):
        register(t1_t2_pair.fixed, t1_t2_pair.moving, engine="flirt")
    with pytest.raises(InputError, match="rigid"):
        register(t1_t2_pair.fixed, t1_t2_pair.moving, transform="deformable")  # type: ignore[arg-type]


@pytest.mark.engine
def test_cancel_during_the_engine_raises_and_returns_nothing(t1_t2_pair: synthetic.SyntheticPair) -> None:
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 5  # let the run start, then cancel inside the engine

    with pytest.raises(CancelledError):
        register(t1_t2_pair.fixed, t1_t2_pair.moving, engine="simpleitk", cancel=cancel)


@pytest.mark.engine
def test_wrong_transforms_are_flagged_and_the_truth_is_good(t1_t2_pair: synthetic.SyntheticPair) -> None:
    pair = t1_t2_pair
    center = synthetic.make_subject(resolution_mm=2.5).head_center
    good = judge_transform(pair.fixed, pair.moving, pair.truth, fixed_modality="T1", moving_modality="T2")
    assert good.verdict.label == "good", good.verdict.reasons
    rotated = compose(synthetic.rigid_transform((0.0, 0.0, 10.0), (0.0, 0.0, 0.0), center), pair.truth)
    shifted = compose(synthetic.rigid_transform((0.0, 0.0, 0.0), (15.0, 0.0, 0.0), center), pair.truth)
    for wrong in (rotated, shifted):
        judged = judge_transform(pair.fixed, pair.moving, wrong, fixed_modality="T1", moving_modality="T2")
        assert judged.verdict.label in ("questionable", "failed"), judged.verdict.evidence
        assert judged.score_after.value < good.score_after.value
    assert np.isfinite(good.score_after.value)
