"""The engine registry, transform helpers and the core's purity (the preset table: test_presets.py)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import SimpleITK as sitk

import OneClickRegistrationLib
from OneClickRegistrationLib import transforms
from OneClickRegistrationLib.engines import ENGINE_NAMES, engine_availability
from OneClickRegistrationLib.errors import CancelledError, EngineError, EngineTimeoutError, InputError
from OneClickRegistrationLib.process_runner import engine_workdir, run_process


def test_simpleitk_is_always_available() -> None:
    availability = engine_availability()
    assert set(availability) == set(ENGINE_NAMES)
    assert availability["simpleitk"].available


def test_transform_flattening_and_conversions() -> None:
    euler = sitk.Euler3DTransform((10.0, -5.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, -6.0))
    scale = sitk.ScaleTransform(3, (1.1, 0.9, 1.0))
    composite = sitk.CompositeTransform([euler, scale])
    points = np.random.default_rng(0).uniform(-80, 80, (20, 3))
    flat = transforms.as_affine(composite)
    for p in points:
        np.testing.assert_allclose(flat.TransformPoint(tuple(p)), composite.TransformPoint(tuple(p)), atol=1e-9)
    back = transforms.as_euler(euler)
    assert transforms.mean_displacement_mm(back, euler, points) < 1e-9
    assert transforms.rotation_angle_deg(transforms.to_matrix(euler)[:3, :3]) > 10
    composed = transforms.compose(scale, euler)  # x -> euler(scale(x))
    for p in points:
        expected = euler.TransformPoint(scale.TransformPoint(tuple(p)))
        np.testing.assert_allclose(composed.TransformPoint(tuple(p)), expected, atol=1e-9)
    with pytest.raises(InputError, match="linear"):
        transforms.to_matrix(sitk.DisplacementFieldTransform(3))


def test_core_never_imports_slicer_vtk_qt_or_ctk() -> None:
    names = [m.name for m in pkgutil.walk_packages(OneClickRegistrationLib.__path__, "OneClickRegistrationLib.")]
    code = textwrap.dedent(f"""
        import sys, importlib
        for blocked in ("slicer", "vtk", "vtkmodules", "qt", "ctk", "PythonQt"):
            sys.modules[blocked] = None  # any import of them now fails
        for name in {names!r}:
            importlib.import_module(name)
        print(len({names!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(names) > 20


def test_runner_streams_lines_and_reports_failures_with_the_log_tail() -> None:
    lines: list[str] = []
    outcome = run_process([sys.executable, "-c", "print('a'); print('b')"], name="echo", on_line=lines.append)
    assert lines == ["a", "b"] and outcome.log == ("a", "b")
    with pytest.raises(EngineError, match="boom") as info:
        run_process([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], name="failing")
    assert "code 3" in str(info.value)
    with pytest.raises(TypeError):
        run_process("echo hi", name="shell string")  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_and_timeout_kill_the_whole_process_tree(tmp_path, how: str) -> None:
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(c.pid)); print('started', flush=True); time.sleep(60)")
    started = time.monotonic()
    cancel_at = started + 1.0
    expected = CancelledError if how == "cancel" else EngineTimeoutError
    with pytest.raises(expected):
        run_process([sys.executable, "-c", script], name="sleeper",
                    cancel=(lambda: time.monotonic() > cancel_at) if how == "cancel" else None,
                    timeout_s=1.0 if how == "timeout" else None)
    assert time.monotonic() - started < 5.0
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 3.0
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_workdir_is_removed_unless_kept() -> None:
    with engine_workdir("probe") as folder:
        (folder / "x.txt").write_text("x")
    assert not folder.exists()
    kept: list = []
    with engine_workdir("probe", keep_temp=True, on_kept=kept.append) as folder:
        pass
    assert kept == [folder] and folder.exists()
    folder.rmdir()


def test_public_api_is_reexported() -> None:
    for name in OneClickRegistrationLib.__all__:
        assert getattr(OneClickRegistrationLib, name) is not None
    with pytest.raises(AttributeError):
        importlib.import_module("OneClickRegistrationLib").does_not_exist  # noqa: B018
