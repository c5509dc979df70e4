"""Engines that are missing, crash, hang, write garbage or nothing; full disks; cancel at any moment;
awkward path names. Every failure is a documented error with the engine's own words, and leaves no
temporary folder and no process behind.

Faults the real engines cannot be made to show on demand (a crash, a hang, garbage output) come from
stand-in programs (``robustness_support.write_stand_in``): real executables started by the real
adapters through the real process runner, whose behaviour the test chooses. They are not mocks.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from robustness_support import (
    AWKWARD_NAME,
    TINY_PAIR_TOLERANCE_MM,
    alive,
    engine_program,
    fingerprint,
    leftovers,
    private_tempdir,
    processes_under,
    stand_in_calls,
    stand_in_pids,
    tiny_pair,
    tre_mm,
    write_stand_in,
)

from OneClickRegistrationLib import images, synthetic
from OneClickRegistrationLib.cli import main as cli_main
from OneClickRegistrationLib.errors import (
    CancelledError,
    EngineError,
    EngineTimeoutError,
    EngineUnavailableError,
    InputError,
)
from OneClickRegistrationLib.pipeline import register
from OneClickRegistrationLib.transforms import to_matrix

EXTERNAL = ["elastix", "ants", "brainsfit"]


@pytest.fixture
def temp_root(tmp_path: Path):
    """Engine work folders go to a private folder, which must be empty again afterwards."""
    with private_tempdir(tmp_path / "engine-tmp") as root:
        yield root
    assert leftovers(root) == []
    assert processes_under(root) == []


def _register(engine: str, **options):
    pair = tiny_pair()
    options.setdefault("recover", False)
    return register(pair.fixed, pair.moving, engine=engine, fixed_modality="T1", moving_modality="T1", **options)


def _assert_all_dead(program: Path) -> None:
    pids = stand_in_pids(program)
    deadline = time.monotonic() + 60.0  # generous: a passing run never waits it out
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # an orphaned grandchild is reaped by init, not by us
    assert pids and not [pid for pid in pids if alive(pid)], pids


# ---------------------------------------------------------------------------------------------------
# Missing engines


@pytest.mark.parametrize("engine", EXTERNAL)
def test_missing_engine_program_says_where_it_looked(engine, temp_root, tmp_path) -> None:
    missing = tmp_path / "no such folder" / "program"
    with engine_program(engine, missing), pytest.raises(EngineUnavailableError) as caught:
        _register(engine)
    message = str(caught.value)
    assert f"The {engine} engine was requested but is not available" in message
    assert "is not an executable file" in message and str(missing) in message


def test_elastix_not_installed_names_the_places_and_the_fix(temp_root, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # a PATH without elastix, for real
    monkeypatch.delenv("ONECLICK_ELASTIX", raising=False)
    pair_dir = tmp_path / "pair"
    pair_dir.mkdir()
    sitk.WriteImage(tiny_pair().fixed, str(pair_dir / "f.nrrd"))
    sitk.WriteImage(tiny_pair().moving, str(pair_dir / "m.nrrd"))
    code = cli_main([str(pair_dir / "f.nrrd"), str(pair_dir / "m.nrrd"), "-o", str(tmp_path / "out"),
                     "--engine", "elastix", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "elastix was not found (looked in PATH" in err and "apt install elastix" in err, err
    assert not (tmp_path / "out").exists()


def test_unset_executable_variable_pointing_nowhere_is_an_error_not_a_fallback(temp_root, monkeypatch) -> None:
    monkeypatch.setenv("ONECLICK_ELASTIX", "/nowhere/elastix")
    with pytest.raises(EngineUnavailableError, match=r"\$ONECLICK_ELASTIX is not an executable file: '/nowhere"):
        _register("elastix")


# ---------------------------------------------------------------------------------------------------
# Engines that run and fail


FAULTS = {
    # behaviour: message pattern, per engine when they differ
    "crash": {"*": r"killed by signal 11"},
    "fail": {"*": r"exited with code 3", "elastix": r"exited with code 3.*elastix says: ERROR: the stand-in"},
    "no-output": {"elastix": r"exited normally but wrote no TransformParameters\.0\.txt",
                  "ants": r"finished without writing its transform ants_0GenericAffine\.mat",
                  "brainsfit": r"finished without error but wrote no transform"},
    "garbage": {"elastix": r"elastix returned a unnamed transform; expected a linear one",
                "ants": r"ANTs wrote a transform file that cannot be read as a linear ITK transform",
                "brainsfit": r"BRAINSFit's output transform cannot be read"},
    "nan": {"elastix": r"non-finite values", "ants": r"non-finite values",
            "brainsfit": r"(output transform cannot be read|non-finite)"},
}


@pytest.mark.parametrize("behaviour", FAULTS)
@pytest.mark.parametrize("engine", EXTERNAL)
def test_engine_faults_are_engine_errors_with_its_words(engine, behaviour, temp_root, tmp_path) -> None:
    program = write_stand_in(tmp_path / "bin", engine, behaviour)
    pair = tiny_pair()
    before = (fingerprint(pair.fixed), fingerprint(pair.moving))
    expected = FAULTS[behaviour].get(engine, FAULTS[behaviour].get("*"))
    with engine_program(engine, program), pytest.raises(EngineError, match=expected) as caught:
        _register(engine)
    assert not isinstance(caught.value, EngineTimeoutError)
    assert len(stand_in_calls(program)) == 1  # the program really ran, once
    if behaviour in ("crash", "fail"):
        assert caught.value.log_tail  # the program's last words reach the user
    assert (fingerprint(pair.fixed), fingerprint(pair.moving)) == before


@pytest.mark.engine
def test_a_failing_preset_engine_falls_back_to_simpleitk_and_says_so(temp_root, tmp_path) -> None:
    program = write_stand_in(tmp_path / "bin", "elastix", "crash")
    coarse = synthetic.make_pair("T1", "T1", translation_mm=(6.0, 0.0, 0.0), coarsen=10.0, source="analytic")
    with engine_program("elastix", program):
        result = register(coarse.fixed, coarse.moving, fixed_modality="T1", moving_modality="T1", recover=False)
    assert len(stand_in_calls(program)) == 1
    assert result.engine == "simpleitk"
    assert any("Engine elastix failed; the embedded SimpleITK engine was used instead." in n for n in result.notes)


@pytest.mark.parametrize("engine", EXTERNAL)
def test_hanging_engine_times_out_and_its_whole_process_tree_dies(engine, temp_root, tmp_path) -> None:
    program = write_stand_in(tmp_path / "bin", engine, "hang")
    # The message names the 1 s limit: the time limit, not the hang's end, stopped it (no clock asserted).
    with engine_program(engine, program), pytest.raises(EngineTimeoutError, match=r"did not finish within 1 s"):
        _register(engine, timeout_s=1.0)
    _assert_all_dead(program)  # the stand-in and the grandchild it started


@pytest.mark.engine
def test_real_ants_child_process_is_killed_on_timeout(temp_root) -> None:
    # The antspyx runner is a Python child process; it must not outlive a timeout. The pair is large
    # enough (1.8 mm head) that ANTs needs several seconds: the tiny pair finishes in ~0.5 s on a
    # quiet machine, which made this test depend on the load.
    pair = synthetic.make_pair("T1", "T2", rotation_deg=(5.0, 0.0, 5.0), coarsen=1.8, seed=2)
    with pytest.raises(EngineTimeoutError, match=r"antsRegistration \(antspyx\) did not finish within 1 s"):
        register(pair.fixed, pair.moving, engine="ants", fixed_modality="T1", moving_modality="T2",
                 recover=False, timeout_s=1.0)


# ---------------------------------------------------------------------------------------------------
# Cancel at any moment


def test_cancel_before_the_engine_starts_nothing(temp_root, tmp_path) -> None:
    program = write_stand_in(tmp_path / "bin", "elastix", "identity")
    with engine_program("elastix", program), pytest.raises(CancelledError):
        _register("elastix", cancel=lambda: True)
    assert stand_in_calls(program) == []


def test_cancel_during_the_engine_kills_its_process_tree(temp_root, tmp_path) -> None:
    program = write_stand_in(tmp_path / "bin", "elastix", "hang")
    with engine_program("elastix", program), pytest.raises(CancelledError):
        _register("elastix", cancel=lambda: bool(stand_in_pids(program)))
    _assert_all_dead(program)


@pytest.mark.engine
def test_cancel_during_a_real_elastix_run(temp_root) -> None:
    seen: list[str] = []

    def progress(fraction: float, message: str) -> None:
        seen.append(message)

    with pytest.raises(CancelledError):
        _register("elastix", progress=progress, cancel=lambda: any("iteration" in m for m in seen))
    assert any("elastix: level" in m for m in seen)  # elastix was really iterating


@pytest.mark.engine
def test_cancel_during_recovery_kills_the_candidate_run(temp_root, tmp_path) -> None:
    # The stand-in returns the identity first (a misaligned result: recovery starts), then hangs
    # in the recovery candidate it is asked to run, which is when the user cancels.
    program = write_stand_in(tmp_path / "bin", "elastix", "identity-then-hang")
    messages: list[str] = []
    with engine_program("elastix", program), pytest.raises(CancelledError):
        _register("elastix", recover=True, progress=lambda f, m: messages.append(m),
                  cancel=lambda: len(stand_in_pids(program)) >= 2)
    assert any("trying other starting points" in m for m in messages), messages
    assert len(stand_in_calls(program)) == 2
    _assert_all_dead(program)


# ---------------------------------------------------------------------------------------------------
# Temporary folders: removed unless keep-temp


def test_keep_temp_keeps_the_work_folder(temp_root, tmp_path) -> None:
    program = write_stand_in(tmp_path / "bin", "elastix", "identity")
    with engine_program("elastix", program):
        _register("elastix", keep_temp=True)
    kept = leftovers(temp_root)
    assert len(kept) == 1 and (temp_root / kept[0] / "parameters.txt").is_file()
    shutil.rmtree(temp_root / kept[0])  # the fixture checks that nothing else was left


# ---------------------------------------------------------------------------------------------------
# Full disks


def _on_dev_full(monkeypatch, folder: Path) -> None:
    """Make every file written (atomically) under ``folder`` land on /dev/full.

    A full disk cannot be caused for real on every test machine. This is the narrow simulation: only
    the temporary name the atomic writer picks is redirected, through a symlink, to /dev/full, so the
    "No space left on device" the writer meets comes from the kernel itself.
    """
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux)")
    original = images._partial_name

    def partial_on_full_disk(final: Path) -> Path:
        partial = original(final)
        if str(final).startswith(str(folder)):
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.symlink_to("/dev/full")
        return partial

    monkeypatch.setattr(images, "_partial_name", partial_on_full_disk)


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory: pytest.TempPathFactory):
    """A real, full file system: a small tmpfs filled to the last byte (needs the right to mount)."""
    mount = tmp_path_factory.mktemp("full disk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here; the /dev/full tests stand for a full disk")
    try:
        handle = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError) as caught:
                while True:
                    os.write(handle, b"x" * 512)
        finally:
            os.close(handle)
        assert caught.value.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# HDF5 (.h5) raises on a full disk too (measured), but leaves its library in a state that prints
# "HDF5: infinite loop closing library" when the test process exits; it is left out.
@pytest.mark.parametrize("ending", [".nrrd", ".nii.gz", ".nii", ".mha", ".tfm", ".txt", ".mat", ".json"])
def test_every_writer_reports_a_full_disk_and_leaves_no_file(ending, full_disk) -> None:
    # ITK's NIfTI and transform writers return normally on a full disk (they print a message and leave
    # a truncated file); the atomic writers read each file back before giving it its final name.
    out = full_disk / "out"
    out.mkdir(exist_ok=True)
    target = out / f"result{ending}"
    with pytest.raises(InputError, match=r"Cannot write '.*result.*': .*Expected a writable folder with free space"):
        if ending in (".tfm", ".txt", ".mat"):
            images.write_transform(sitk.Euler3DTransform((1, 2, 3), 0.1, 0.2, 0.3, (4, 5, 6)), target)
        elif ending == ".json":
            images.write_text('{"a": 1}' * 2000, target)
        else:
            images.write_image(tiny_pair().fixed, target)
    assert list(out.iterdir()) == []  # neither the final name nor the partial one


def test_full_temporary_disk_for_a_real_engine_run(full_disk) -> None:
    with private_tempdir(full_disk / "tmp") as root:
        # the work folder's first file (the note naming its owner) meets the full disk
        with pytest.raises(EngineError, match=r"Cannot create a temporary folder for elastix in .*: No space left "
                                              r"on device\. Expected a writable temporary folder with free space"):
            _register("elastix")
        assert list(root.iterdir()) == []  # the work folder is gone


def test_full_temp_disk_during_an_engine_run_simulated(temp_root, monkeypatch) -> None:
    _on_dev_full(monkeypatch, temp_root)
    message = r"Cannot write '.*oneclickreg-elastix-.*fixed\.mha': No space left on device\."
    with pytest.raises(InputError, match=message):
        _register("elastix")


@pytest.mark.engine
def test_full_output_disk_late_in_the_command_line_leaves_no_half_written_output(tmp_path, monkeypatch,
                                                                                  capsys) -> None:
    pair = tiny_pair()
    fixed, moving = tmp_path / "f.nrrd", tmp_path / "m.nrrd"
    sitk.WriteImage(pair.fixed, str(fixed))
    sitk.WriteImage(pair.moving, str(moving))
    out = tmp_path / "out"
    original = images._partial_name

    def full_for_the_overlay(final: Path) -> Path:
        # Only the overlay (written after the transform and the volume) meets the full disk.
        partial = original(final)
        if final.name == "overlay.png":
            partial.symlink_to("/dev/full")
        return partial

    monkeypatch.setattr(images, "_partial_name", full_for_the_overlay)
    code = cli_main([str(fixed), str(moving), "-o", str(out), "--engine", "elastix", "--no-recover", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "Cannot write" in err and "overlay.png" in err and "No space left on device" in err, err
    # All or nothing: the transform and the volume, written before the failure, are not left behind
    # either (no new transform beside a missing report), and no staging or partial file remains.
    assert sorted(p.name for p in out.iterdir()) == []


def test_missing_temporary_folder_is_an_engine_error(tmp_path) -> None:
    with private_tempdir(tmp_path / "tmp"):
        tempfile.tempdir = str(tmp_path / "deleted")
        with pytest.raises(EngineError, match=r"Cannot create a temporary folder for elastix in '.*deleted': "
                                              r"No such file or directory"):
            _register("elastix")


# ---------------------------------------------------------------------------------------------------
# Awkward names: engines get argument lists, never a shell string


@pytest.mark.engine
@pytest.mark.parametrize("engine", ["elastix", "ants"])
def test_real_engines_run_in_a_folder_with_awkward_characters(engine, tmp_path) -> None:
    root = tmp_path / AWKWARD_NAME
    with private_tempdir(root):
        result = _register(engine)
        assert leftovers(root) == []
    pair = tiny_pair()
    assert tre_mm(result.transform, pair.truth, pair.brain_points).mean() < TINY_PAIR_TOLERANCE_MM[engine]


@pytest.mark.parametrize("engine", EXTERNAL)
def test_engine_programs_with_awkward_paths_get_their_arguments_intact(engine, tmp_path) -> None:
    # The stand-in lives in, and works in, folders named with spaces, quotes, unicode and shell
    # metacharacters; it fails unless every input path it is given exists as given.
    program = write_stand_in(tmp_path / f"bin {AWKWARD_NAME}", engine, "identity")
    root = tmp_path / f"tmp {AWKWARD_NAME}"
    with private_tempdir(root), engine_program(engine, program):
        result = _register(engine)
        assert leftovers(root) == []
    assert len(stand_in_calls(program)) == 1
    np.testing.assert_allclose(to_matrix(result.transform), np.eye(4), atol=1e-9)  # what the stand-in wrote


@pytest.mark.engine
def test_command_line_with_awkward_file_and_folder_names(tmp_path, capsys) -> None:
    folder = tmp_path / AWKWARD_NAME
    folder.mkdir()
    pair = tiny_pair()
    fixed, moving = folder / "fixed 'T1' ü;$(x).nrrd", folder / 'moving "T1" & `y`.nii.gz'
    sitk.WriteImage(pair.fixed, str(fixed))
    sitk.WriteImage(pair.moving, str(moving))
    out = folder / "out put ü;|"
    with private_tempdir(tmp_path / "tmp"):
        code = cli_main([str(fixed), str(moving), "-o", str(out), "--engine", "elastix", "--no-recover", "--quiet"])
    assert code == 0, capsys.readouterr().err
    error = tre_mm(sitk.ReadTransform(str(out / "transform.tfm")), pair.truth, pair.brain_points).mean()
    assert error < TINY_PAIR_TOLERANCE_MM["elastix"]
    assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "registered.nrrd", "report.json",
                                                     "transform.tfm"]


def test_errno_of_a_full_disk_is_what_the_simulation_produces(tmp_path) -> None:
    # Guards the simulation itself: /dev/full really refuses writes with ENOSPC.
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux)")
    with pytest.raises(OSError) as caught, open("/dev/full", "w") as handle:
        handle.write("x" * 10000)
        handle.flush()
    assert caught.value.errno == errno.ENOSPC


@pytest.mark.slicer
@pytest.mark.parametrize("fault", ["timeout", "cancel during the engine"])
def test_slicer_glue_leaves_the_scene_as_it_was_when_the_engine_hangs(fault, temp_root, tmp_path) -> None:
    slicer = pytest.importorskip("slicer")
    from OneClickRegistrationSlicer import registration as glue

    scene = slicer.vtkMRMLScene()
    pair = tiny_pair()
    fixed = glue.addVolumeNodeFromImage(scene, pair.fixed, "fixed")
    moving = glue.addVolumeNodeFromImage(scene, pair.moving, "moving")
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    composite.SetBackgroundVolumeID(moving.GetID())
    before = (frozenset(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())),
              moving.GetTransformNodeID(), composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(),
              fingerprint(glue.imageFromVolumeNode(moving)))
    program = write_stand_in(tmp_path / "bin", "elastix", "hang")
    options = ({"timeout_s": 1.0} if fault == "timeout"
               else {"cancel": lambda: bool(stand_in_pids(program))})
    expected = EngineTimeoutError if fault == "timeout" else CancelledError
    with engine_program("elastix", program), pytest.raises(expected):
        glue.registerNodes(fixed, moving, engine="elastix", recover=False, fixed_modality="T1",
                           moving_modality="T1", environment={"ONECLICK_ELASTIX": str(program)}, **options)
    after = (frozenset(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())),
             moving.GetTransformNodeID(), composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(),
             fingerprint(glue.imageFromVolumeNode(moving)))
    assert after == before
    _assert_all_dead(program)
