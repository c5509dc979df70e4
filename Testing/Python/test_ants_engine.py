"""ANTs adapter, the pure half: the antsRegistration argument list, progress parsing, result reading,
runner selection. Nothing here runs a registration (see test_ants_engine_run.py for that)."""

from __future__ import annotations

import math
import os
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib.engines import ants_engine as ae
from OneClickRegistrationLib.engines import get_engine
from OneClickRegistrationLib.engines.base import EngineSettings, RegistrationEngine
from OneClickRegistrationLib.engines.external_program import EngineFiles
from OneClickRegistrationLib.errors import EngineError, EngineUnavailableError, InputError
from OneClickRegistrationLib.presets import preset_for

FILES = EngineFiles(fixed="/w/fixed.mha", moving="/w/moving.mha", initial_transform="/w/initial.mat")
ONE_MM = (1.0, 1.0, 1.0)


def _args(preset, files=FILES, kind="rigid", spacing=ONE_MM, prefix="/w/ants_"):
    return ae.build_arguments(preset, files, transform_kind=kind, levels=ae.ants_levels(preset, spacing),
                              output_prefix=prefix)


def _values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_rigid_mi_argument_list_is_what_slicerants_users_know():
    preset = preset_for("T1", "T2")
    args = _args(preset)
    assert all(isinstance(a, str) for a in args)
    assert args[:2] == ["--dimensionality", "3"]
    expected_pairs = {
        "--float": "1",
        "--collapse-output-transforms": "1",
        "--output": "/w/ants_",
        "--interpolation": "Linear",
        "--use-histogram-matching": "0",
        "--winsorize-image-intensities": "[0.005,0.995]",
        "--initial-moving-transform": "/w/initial.mat",  # always the pipeline's start
        "--transform": "Rigid[0.1]",
        "--metric": "MI[/w/fixed.mha,/w/moving.mha,1,32,Regular,0.1]",
        # full resolution after a 2x level: 0 iterations, as ANTs' own scripts do ("...x0")
        "--convergence": f"[{preset.iterations[0]}x{preset.iterations[1]}x0,1e-5,10]",
        "--shrink-factors": "4x2x1",
        "--smoothing-sigmas": "2x1x0mm",
        "--verbose": "1",
    }
    for flag, value in expected_pairs.items():
        assert _values(args, flag) == [value], flag
    assert "--masks" not in args


def test_preset_numbers_reach_the_arguments():
    preset = replace(preset_for("T1", "FLAIR"), histogram_bins=48, sampling_fraction=0.25,
                     iterations=(300, 30), shrink_factors=(8, 2), smoothing_sigmas_mm=(3.0, 0.5),
                     winsorize=(0.01, 0.99))
    args = _args(preset)
    assert _values(args, "--metric") == ["MI[/w/fixed.mha,/w/moving.mha,1,48,Regular,0.25]"]
    assert _values(args, "--convergence") == ["[300x30,1e-5,10]"]
    assert _values(args, "--shrink-factors") == ["8x2"]
    assert _values(args, "--smoothing-sigmas") == ["3x0.5mm"]
    assert _values(args, "--winsorize-image-intensities") == ["[0.01,0.99]"]


def test_same_modality_uses_global_correlation_and_ants_never_initializes_itself():
    preset = replace(preset_for("CT", "CT"), initialization="geometry")
    assert preset.similarity == "ncc"
    args = _args(preset)
    assert _values(args, "--metric") == ["GC[/w/fixed.mha,/w/moving.mha,1,1,Regular,0.1]"]
    assert _values(args, "--initial-moving-transform") == ["/w/initial.mat"]


def test_affine_is_a_rigid_stage_then_an_affine_stage():
    args = _args(preset_for("T1", "CT"), kind="affine")
    assert _values(args, "--transform") == ["Rigid[0.1]", "Affine[0.1]"]
    assert len(_values(args, "--metric")) == 2
    assert len(_values(args, "--convergence")) == 2
    assert len(_values(args, "--shrink-factors")) == 2
    assert len(_values(args, "--smoothing-sigmas")) == 2
    # stage options follow their --transform
    first_affine = args.index("Affine[0.1]")
    assert args.index("--metric") < first_affine < len(args) - 1


def test_masks_and_initial_transform_file():
    files = replace(FILES, initial_transform="/w/initial.mat", fixed_mask="/w/fm.mha",
                    moving_mask="/w/mm.mha")
    args = _args(preset_for("T1", "T2"), files=files)
    assert _values(args, "--initial-moving-transform") == ["/w/initial.mat"]
    assert _values(args, "--masks") == ["[/w/fm.mha,/w/mm.mha]"]
    only_fixed = _args(preset_for("T1", "T2"), files=replace(FILES, fixed_mask="/w/fm.mha"))
    assert _values(only_fixed, "--masks") == ["[/w/fm.mha,NA]"]
    only_moving = _args(preset_for("T1", "T2"), files=replace(FILES, moving_mask="/w/mm.mha"))
    assert _values(only_moving, "--masks") == ["[NA,/w/mm.mha]"]


def test_paths_with_spaces_stay_one_argument():
    files = EngineFiles(fixed="/my data/f.mha", moving="/my data/m.mha", initial_transform="/my data/i.mat")
    args = _args(preset_for("T1", "T2"), files=files, prefix="/my data/ants_")
    assert "/my data/ants_" in args
    assert "MI[/my data/f.mha,/my data/m.mha,1,32,Regular,0.1]" in args


def test_pyramid_follows_the_fixed_resolution():
    preset = preset_for("T1", "T2")
    assert [lv.shrink for lv in ae.ants_levels(preset, (1.0, 1.0, 1.0))] == [4, 2, 1]
    assert [lv.shrink for lv in ae.ants_levels(preset, (2.5, 2.5, 2.5))] == [2, 1, 1]
    assert [lv.sigma_mm for lv in ae.ants_levels(preset, (2.5, 2.5, 2.5))] == [2.0, 1.0, 0.0]


def test_sampling_share_is_bounded_by_sample_counts():
    preset = preset_for("T1", "T2")  # 10% in the preset
    small = ae.ants_levels(preset, (2.5, 2.5, 2.5))
    assert ae.sampling_percentage(preset, (80, 96, 88), small) == pytest.approx(0.10)
    # A 1 mm head: 10% would be a million samples on the fine level; lowered until the coarsest
    # level (shrink 4) keeps its floor of samples.
    real = ae.ants_levels(preset, ONE_MM)
    share = ae.sampling_percentage(preset, (200, 240, 220), real)
    coarse_voxels = 200 * 240 * 220 / 4**3
    assert share * coarse_voxels == pytest.approx(ae.COARSE_SAMPLE_FLOOR)
    assert 0.04 < share < 0.05
    # A mask halves the samples ANTs keeps, so the share doubles (never above the preset's).
    masked = ae.sampling_percentage(preset, (200, 240, 220), real, masked_share=0.5)
    assert masked == pytest.approx(2 * share)
    assert ae.sampling_percentage(preset, (200, 240, 220), real, masked_share=0.1) == pytest.approx(0.10)
    args = ae.build_arguments(preset, FILES, transform_kind="rigid", levels=real, sampling_fraction=share)
    assert _values(args, "--metric") == [f"MI[/w/fixed.mha,/w/moving.mha,1,32,Regular,{share:g}]"]


def test_bad_inputs_are_refused_with_what_was_received():
    with pytest.raises(InputError, match="sampling fraction"):
        ae.build_arguments(preset_for("T1", "T2"), FILES, transform_kind="rigid",
                           levels=ae.ants_levels(preset_for("T1", "T2"), ONE_MM), sampling_fraction=0.0)
    with pytest.raises(InputError, match="'similar'"):
        ae.stage_transforms("similar")
    with pytest.raises(InputError, match="one shrink factor"):
        ae.ants_levels(replace(preset_for("T1", "T2"), iterations=(10,)), ONE_MM)
    with pytest.raises(InputError, match="'nmi'"):
        _args(replace(preset_for("T1", "T2"), similarity="nmi"))


# --- progress -----------------------------------------------------------------------------------

def _log_of_one_stage(iterations: tuple[int, ...]) -> list[str]:
    # The shape of ANTs' verbose log (copied from a real run's line formats).
    lines = ["All_Command_lines_OK", "Stage 0", "*** Running Euler3DTransform registration ***"]
    for count in iterations:
        lines.append("DIAGNOSTIC,Iteration,metricValue,convergenceValue,ITERATION_TIME_INDEX,SINCE_LAST")
        lines += [f" 2DIAGNOSTIC,    {i:2d}, -{0.5 + i / 1000:.12e}, inf, 5.8300e-02, 5.8299e-02,"
                  for i in range(1, count + 1)]
    return lines


def test_progress_rises_through_levels_and_keeps_the_last_metric():
    levels = ae.ants_levels(preset_for("T1", "T2"), ONE_MM)
    parser = ae.ProgressParser(("Rigid",), levels)
    fractions, messages = [], []
    for line in _log_of_one_stage((200, 100, 50)):
        moved = parser.feed(line)
        if moved is not None:
            fractions.append(moved[0])
            messages.append(moved[1])
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0)
    assert "level 3/3, iteration 50" in messages[-1]
    assert parser.metric_value == pytest.approx(-0.55)
    assert parser.feed("  Elapsed time (stage 0): 6.4806e+00") is None


def test_progress_of_an_affine_run_reaches_the_second_stage():
    levels = ae.ants_levels(preset_for("T1", "T2"), ONE_MM)
    parser = ae.ProgressParser(("Rigid", "Affine"), levels)
    for line in _log_of_one_stage((20, 10, 5)):  # converged early: levels end before their budget
        parser.feed(line)
    halfway = parser.fraction()
    assert 0.0 < halfway <= 0.5
    parser.feed("*** Running AffineTransform registration ***")
    assert parser.fraction() == pytest.approx(0.5)
    assert parser.message().startswith("ANTs affine stage 2/2")


# --- reading the result -------------------------------------------------------------------------

def _rigid(angles_deg, translation, center=(10.0, -20.0, 30.0)):
    t = sitk.Euler3DTransform()
    t.SetCenter(center)
    t.SetRotation(*(math.radians(a) for a in angles_deg))
    t.SetTranslation(translation)
    return t


def test_result_is_flattened_to_euler_for_rigid_and_affine_otherwise(tmp_path):
    rigid = _rigid((5.0, -3.0, 12.0), (4.0, 5.0, -6.0))
    path = tmp_path / "r.mat"
    sitk.WriteTransform(sitk.AffineTransform(rigid.GetMatrix(), rigid.GetTranslation(), rigid.GetCenter()),
                        str(path))
    out = ae.result_transform(path, transform_kind="rigid")
    assert out.GetName() == "Euler3DTransform"
    points = np.random.default_rng(0).uniform(-80, 80, (50, 3))
    for p in points:
        assert np.allclose(out.TransformPoint(tuple(p)), rigid.TransformPoint(tuple(p)), atol=1e-6)

    scaled = sitk.AffineTransform(3)
    scaled.SetMatrix((1.1, 0, 0, 0, 0.9, 0, 0, 0, 1.0))
    sitk.WriteTransform(scaled, str(tmp_path / "s.mat"))
    # A rigid run that started from an affine initial transform keeps its scaling (no silent projection).
    assert ae.result_transform(tmp_path / "s.mat", transform_kind="rigid").GetName() == "AffineTransform"
    assert ae.result_transform(path, transform_kind="affine").GetName() == "AffineTransform"


def test_ants_error_lines_are_found_in_a_log():
    log = ["Stage 0", "*** Running Euler3DTransform registration ***", "Exception caught: ",
           "itk::ExceptionObject (0x1)", 'Location: "unknown"',
           "Description: ITK ERROR: All samples map outside moving image buffer.", "", "Elapsed time"]
    with pytest.raises(EngineError, match="All samples map outside moving image buffer"):
        ae._raise_on_caught_exception(log, "antspyx")
    ae._raise_on_caught_exception(["All_Command_lines_OK", "Total elapsed time: 1"], "antspyx")


# --- runners ------------------------------------------------------------------------------------

def _stand_in(folder: Path) -> Path:
    program = folder / "antsRegistration"
    program.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program


def test_registry_builds_the_adapter():
    engine = get_engine("ants")
    assert isinstance(engine, RegistrationEngine)
    assert engine.name == "ants"


def test_executable_wins_over_antspyx_in_the_documented_order(tmp_path, monkeypatch):
    monkeypatch.delenv(ae.ENV_VAR, raising=False)
    program = _stand_in(tmp_path)
    by_dir = ae.AntsEngine(EngineSettings(search_dirs=(str(tmp_path),))).runner()
    assert by_dir.kind == "executable" and by_dir.executable == program
    explicit = ae.AntsEngine(EngineSettings(executable=program)).runner()
    assert explicit.kind == "executable"
    monkeypatch.setenv(ae.ENV_VAR, str(program))
    assert ae.AntsEngine().runner().executable == program
    assert ae.AntsEngine().availability().detail.startswith("antsRegistration executable at")
    command = by_dir.command(["--dimensionality", "3"], tmp_path / "unused.json")
    assert command == [os.fspath(program), "--dimensionality", "3"]


def test_without_executable_the_antspyx_child_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv(ae.ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no antsRegistration anywhere on PATH
    if ae._antspyx_version() is None:
        pytest.skip("antspyx is not installed (pip install antspyx)")
    runner = ae.AntsEngine().runner()
    assert runner.kind == "antspyx"
    command = runner.command(["--dimensionality", "3"], tmp_path / "args.json")
    assert command[-2:] == [os.fspath(ae.CHILD_SCRIPT), os.fspath(tmp_path / "args.json")]
    assert (tmp_path / "args.json").read_text(encoding="utf-8").count("--dimensionality") == 1


def test_a_wrong_explicit_path_is_reported_not_ignored(tmp_path):
    engine = ae.AntsEngine(EngineSettings(executable=tmp_path / "nowhere" / "antsRegistration"))
    availability = engine.availability()
    assert not availability.available
    assert "nowhere" in availability.detail
    with pytest.raises(EngineUnavailableError):
        engine.runner()


def test_nothing_installed_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.delenv(ae.ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(ae, "_antspyx_version", lambda: None)  # antspyx cannot be uninstalled for a test
    availability = ae.AntsEngine().availability()
    assert not availability.available
    assert "pip install antspyx" in availability.detail and ae.ENV_VAR in availability.detail
