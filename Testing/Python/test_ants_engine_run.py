"""ANTs adapter, real runs: antsRegistration from the antspyx wheel, on small synthetic heads with a
known rigid misalignment (2.5 mm grids, a few seconds per run).

The accuracy tests run ANTs with one thread: with two or more its result varies from run to run (the
order of the threads' metric sums; the affine case ended 0.22-0.34 mm off over three runs), so only
one thread measures the engine rather than the scheduling."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.engines import ants_engine as ae
from OneClickRegistrationLib.engines.base import EngineRequest, EngineSettings, RunOptions
from OneClickRegistrationLib.engines.external_program import EngineFiles
from OneClickRegistrationLib.errors import CancelledError, EngineError, EngineTimeoutError
from OneClickRegistrationLib.preparation import PreparedPair, initial_alignment, prepare_pair
from OneClickRegistrationLib.presets import preset_for
from OneClickRegistrationLib.process_runner import TEMP_PREFIX
from OneClickRegistrationLib.transforms import mean_displacement_mm

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(ae._antspyx_version() is None and shutil.which("antsRegistration") is None,
                       reason="neither antspyx (pip install antspyx) nor an antsRegistration executable"),
]


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path, monkeypatch):
    """Send every temporary file (ours and the child's) into a fresh folder, so a test can check that
    nothing is left behind without being confused by other programs using /tmp."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


def _system_ants_leftovers() -> set[str]:
    system_tmp = Path("/tmp")
    return {p.name for p in system_tmp.glob("tmp*GenericAffine.mat")} | \
        {p.name for p in system_tmp.glob(f"{TEMP_PREFIX}ants-*")}


def _prepared(pair: synthetic.SyntheticPair) -> PreparedPair:
    """What the pipeline hands an engine: the real preparation (float32, CT windowed, MR winsorized)."""
    return prepare_pair(pair.fixed, pair.moving, preset_for(pair.fixed_modality, pair.moving_modality))


def _request(pair: synthetic.SyntheticPair, **changes) -> EngineRequest:
    """By default the engine starts, as in the pipeline, from the moments of the two head masks."""
    prepared = _prepared(pair)
    preset = preset_for(pair.fixed_modality, pair.moving_modality)
    changes.setdefault("initial_transform", initial_alignment(prepared, "moments"))
    return EngineRequest(fixed=prepared.fixed, moving=prepared.moving, preset=preset, **changes)


def _tre(transform: sitk.Transform, pair: synthetic.SyntheticPair) -> float:
    return float(synthetic.target_registration_error(transform, pair.truth, pair.brain_points[:500]).mean())


def test_recovers_a_known_rigid_transform_t2_to_t1(t1_t2_pair, private_tempdir):
    before = _system_ants_leftovers()
    messages: list[tuple[float, str]] = []
    out = ae.AntsEngine().run(_request(t1_t2_pair), RunOptions(progress=lambda f, m: messages.append((f, m)),
                                                               threads=1))
    tre = _tre(out.transform, t1_t2_pair)
    assert tre < 0.22, f"mean brain TRE {tre:.3f} mm"  # measured 0.148 (0.30 with the 0.3 mm canary)
    # ANTs' result is fixed->moving (ITK resampling convention): its inverse is far from the truth.
    assert _tre(out.transform.GetInverse(), t1_t2_pair) > 10.0
    assert out.transform.GetName() == "Euler3DTransform"
    assert out.engine_metric_value is not None and out.engine_metric_value < 0  # ANTs minimizes -MI
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("level 3/3" in m for _, m in messages)
    assert len(messages) < 400  # throttled, not one report per iteration
    assert list(private_tempdir.iterdir()) == []
    assert _system_ants_leftovers() <= before


def test_recovers_ct_to_t1_from_the_pipelines_initial_transform(t1_ct_pair, private_tempdir):
    initial = initial_alignment(_prepared(t1_ct_pair), "moments")  # the pipeline's start
    out = ae.AntsEngine().run(_request(t1_ct_pair, initial_transform=initial), RunOptions(threads=1))
    tre = _tre(out.transform, t1_ct_pair)
    # measured 0.182 (0.30 with the 0.3 mm canary)
    assert tre < 0.24, f"mean brain TRE {tre:.3f} mm (start {_tre(initial, t1_ct_pair):.1f} mm)"
    assert list(private_tempdir.iterdir()) == []


def test_affine_run_is_a_rigid_then_an_affine_stage(t1_t2_pair):
    messages: list[str] = []
    out = ae.AntsEngine().run(_request(t1_t2_pair, transform_kind="affine"),
                              RunOptions(progress=lambda f, m: messages.append(m), threads=1))
    assert out.transform.GetName() == "AffineTransform"
    assert _tre(out.transform, t1_t2_pair) < 0.33  # measured 0.231 (0.44 with the 0.3 mm canary)
    assert any("rigid stage 1/2" in m for m in messages) and any("affine stage 2/2" in m for m in messages)


def test_ct_with_negative_background_from_the_centres_of_mass(t1_ct_pair):
    # Windowed CT air is -100 HU; ANTs registers it as it is (no intensity shift needed any more).
    out = ae.AntsEngine().run(_request(t1_ct_pair), RunOptions(threads=1))
    assert _tre(out.transform, t1_ct_pair) < 0.24  # measured 0.182 (0.30 with the 0.3 mm canary)


def test_the_initial_transform_is_part_of_the_returned_transform(t1_t2_pair):
    # One iteration on one coarse level barely moves: what comes back must be (close to) the
    # initial transform itself, which is 10 mm away from identity and from the truth.
    offset = sitk.TranslationTransform(3, (10.0, 0.0, 0.0))
    initial = sitk.CompositeTransform([t1_t2_pair.truth, offset])
    preset = replace(preset_for("T1", "T2"), iterations=(1,), shrink_factors=(8,), smoothing_sigmas_mm=(2.0,))
    request = replace(_request(t1_t2_pair, initial_transform=initial), preset=preset)
    out = ae.AntsEngine().run(request, RunOptions())
    points = t1_t2_pair.brain_points[:300]
    assert mean_displacement_mm(out.transform, initial, points) < 1.5
    assert mean_displacement_mm(out.transform, sitk.Euler3DTransform(), points) > 10.0


def test_masks_are_used(t1_t2_pair):
    # A fixed mask of the bright tissue (brain and scalp, no background) reaches ANTs and still
    # gives an accurate rigid result.
    fixed = _prepared(t1_t2_pair).fixed
    brain = sitk.Cast(sitk.BinaryThreshold(fixed, 300.0, 1e9, 1, 0), sitk.sitkUInt8)
    out = ae.AntsEngine().run(_request(t1_t2_pair, fixed_mask=brain), RunOptions(threads=1))
    assert _tre(out.transform, t1_t2_pair) < 0.25  # measured 0.138 (0.33 with the 0.3 mm canary)
    assert "--masks" in out.log[0]


def test_cancel_stops_the_child_mid_run(t1_t2_pair, private_tempdir):
    state: dict[str, float | int] = {}
    cancel = threading.Event()

    def on_progress(fraction: float, message: str) -> None:
        if "iteration" in message and "pid" not in state:
            state["pid"] = _child_pid()
            cancel.set()
        elif "pid" in state:
            state["after"] = max(fraction, float(state.get("after", 0.0)))

    with pytest.raises(CancelledError):
        ae.AntsEngine().run(_request(t1_t2_pair), RunOptions(progress=on_progress, cancel=cancel.is_set))
    # Stopped mid-run (an event, not a clock): nothing reported after the cancel came near the run's end.
    assert float(state.get("after", 0.0)) < 0.9
    pid = int(state["pid"])
    assert pid > 0
    assert not _alive(pid), f"child {pid} survived the cancel"
    assert list(private_tempdir.iterdir()) == []


def test_timeout_stops_the_run(t1_t2_pair, private_tempdir):
    with pytest.raises(EngineTimeoutError, match="did not finish within"):
        ae.AntsEngine().run(_request(t1_t2_pair), RunOptions(timeout_s=0.5))
    assert list(private_tempdir.iterdir()) == []


class _BadMetricAnts(ae.AntsEngine):
    """ANTs asked for a metric it does not know, to check that its own message reaches the user."""

    def arguments(self, request: EngineRequest, files: EngineFiles) -> list[str]:
        return [a.replace("MI[", "NoSuchMetric[") for a in super().arguments(request, files)]


def test_a_failing_run_raises_with_ants_own_message(t1_t2_pair, private_tempdir):
    with pytest.raises(EngineError, match="Unrecognized metric") as caught:
        _BadMetricAnts().run(_request(t1_t2_pair), RunOptions())
    assert "exited with code" in str(caught.value)
    assert list(private_tempdir.iterdir()) == []


def test_no_overlap_is_an_error_not_a_silent_identity(t1_t2_pair):
    # ANTs catches this inside its linear stage, logs it, exits 0 and writes the initial transform:
    # the adapter must turn it into an error.
    far = sitk.TranslationTransform(3, (900.0, 0.0, 0.0))
    with pytest.raises(EngineError, match=r"outside moving image buffer|sufficiently overlap"):
        ae.AntsEngine().run(_request(t1_t2_pair, initial_transform=far), RunOptions())


def test_executable_runner_with_threads_and_keep_temp(t1_t2_pair, tmp_path):
    # A stand-in "antsRegistration" executable that runs the same ANTs code (antspyx) with the
    # command-line arguments it receives: the executable runner end to end, for real.
    program = tmp_path / "bin" / "antsRegistration"
    program.parent.mkdir()
    program.write_text(
        "#!/bin/sh\n"
        'echo "threads=$ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"\n'
        f'exec "{sys.executable}" -u "{ae.CHILD_SCRIPT}" -- "$@"\n', encoding="utf-8")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    engine = ae.AntsEngine(EngineSettings(executable=program))
    assert engine.runner().kind == "executable"
    preset = replace(preset_for("T1", "T2"), iterations=(60, 20), shrink_factors=(4, 2),
                     smoothing_sigmas_mm=(2.0, 1.0))
    out = engine.run(replace(_request(t1_t2_pair), preset=preset), RunOptions(threads=1, keep_temp=True))
    try:
        assert "threads=1" in out.log
        assert out.log[0].startswith(f"antsRegistration executable at {program}")
        kept = Path(out.kept_temp_dir or "")
        assert (kept / f"{ae.OUTPUT_PREFIX}{ae.RESULT_SUFFIX}").is_file()
        assert _tre(out.transform, t1_t2_pair) < 0.22  # measured 0.134 (0.30 with the 0.3 mm canary)
    finally:
        shutil.rmtree(out.kept_temp_dir or "", ignore_errors=True)


# --- /proc helpers (no psutil) ----------------------------------------------------------------------

def _child_pid() -> int:
    """The pid of our antsRegistration child (a direct child of this process)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")), "")
        if ppid == me and "ants_child.py" in cmdline:
            return int(entry.name)
    return -1


def _alive(pid: int) -> bool:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        state = next(ln for ln in lines if ln.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state.split()[1]


def test_helpers_see_a_live_child():
    # The /proc helpers above must be able to see a live child, or the cancel test proves nothing.
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)", "ants_child.py"])
    try:
        time.sleep(0.2)
        assert _child_pid() == child.pid and _alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not _alive(child.pid)
