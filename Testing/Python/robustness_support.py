"""Shared pieces of the robustness tests (``test_robustness_*.py``): tiny images, stand-in engines,
and checks that nothing was left behind (temporary folders, processes, partial files).

Not a test module itself; the test files import it from their own folder.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.engines import configure_engine, engine_settings
from OneClickRegistrationLib.engines.base import EngineSettings
from OneClickRegistrationLib.process_runner import TEMP_PREFIX

# One character of each kind a shell, an engine's own argument parser (ANTs' "[a,b]" syntax) or a
# parameter file (elastix's quoted strings) could trip on.
AWKWARD_NAME = "a b 'q' \"dq\" ü-名 $HOME;&|`x`(a,b)[c]{d}*?"


@functools.cache
def tiny_pair(fixed: str = "T1", moving: str = "T1", seed: int = 7) -> synthetic.SyntheticPair:
    """About 33x40x37 voxels at 6 mm: the smallest synthetic head every engine still registers."""
    return synthetic.make_pair(fixed, moving, rotation_deg=(3.0, -4.0, 8.0), translation_mm=(6.0, -5.0, 4.0),
                               coarsen=6.0, source="analytic", seed=seed)


def fingerprint(image: sitk.Image) -> tuple:
    """Everything that identifies an image: geometry, pixel type and every voxel's bytes."""
    return (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(),
            image.GetPixelIDValue(), image.GetNumberOfComponentsPerPixel(),
            sitk.GetArrayViewFromImage(image).tobytes())


# Mean brain error (mm) allowed for the tiny pair (T1/T1, 6 mm voxels) per engine: 1.5-2x the measured
# baseline (elastix 0.23 mm, ANTs 1.01 mm). Tests on the tiny pair check plumbing (paths, files, pixel
# types) and that the result is the registration, not a wild one; at 6 mm voxels the error floor hides a
# 0.3 mm geometry error (the canary leaves them passing): accuracy is tested on finer heads elsewhere.
TINY_PAIR_TOLERANCE_MM = {"elastix": 0.4, "ants": 1.5}


def tre_mm(estimated: sitk.Transform, truth: sitk.Transform, points: np.ndarray) -> np.ndarray:
    return synthetic.target_registration_error(estimated, truth, points)


def with_geometry(image: sitk.Image, *, spacing=None, origin=None, direction=None) -> sitk.Image:
    """A copy of ``image`` with the same voxels and a different header."""
    copy = sitk.Image(image)
    if spacing is not None:
        copy.SetSpacing([float(s) for s in spacing])
    if origin is not None:
        copy.SetOrigin([float(o) for o in origin])
    if direction is not None:
        copy.SetDirection([float(d) for d in np.asarray(direction, dtype=float).ravel()])
    return copy


# ---------------------------------------------------------------------------------------------------
# Temporary folders and processes


@contextmanager
def private_tempdir(root: Path) -> Iterator[Path]:
    """Point ``tempfile`` (hence every engine's work folder) at ``root`` for the duration.

    The machine's /tmp is shared with other test runs, so leftovers are looked for here only, where
    nothing else writes.
    """
    root.mkdir(parents=True, exist_ok=True)
    saved = tempfile.tempdir
    tempfile.tempdir = str(root)
    try:
        yield root
    finally:
        tempfile.tempdir = saved


def leftovers(root: Path) -> list[str]:
    """Engine work folders still present under ``root``."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(TEMP_PREFIX)) if root.is_dir() else []


def processes_under(folder: Path) -> list[int]:
    """Live processes whose working folder or command line mentions ``folder`` (Linux /proc)."""
    needle = str(folder)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (cwd.startswith(needle) or needle in cmdline):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its parent to reap it does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---------------------------------------------------------------------------------------------------
# Stand-in engine programs
#
# A stand-in is a real program started by the real adapter through the real process runner; only
# its behaviour is chosen by the test. It records each registration call (not ``--version``) in
# ``calls.txt`` beside itself, with its own PID, and can start a grandchild that must die with it.

_STAND_IN = r'''#!{python}
import os, pathlib, signal, subprocess, sys, time
here = pathlib.Path(__file__).resolve().parent
args = sys.argv[1:]
if args[:1] == ["--version"]:
    print("elastix version: 5.0.1 (stand-in)")
    sys.exit(0)
calls = here / "calls.txt"
with calls.open("a") as log:
    log.write(f"{{os.getpid()}}\n")
number = len(calls.read_text().split())
engine, behaviour = {engine!r}, {behaviour!r}
if behaviour == "identity-then-hang":
    behaviour = "hang" if number > 1 else "identity"

def value(flag):
    return args[args.index(flag) + 1]

def result_path():
    if engine == "elastix":
        return pathlib.Path(value("-out")) / "TransformParameters.0.txt"
    if engine == "ants":
        return pathlib.Path(value("--output") + "0GenericAffine.mat")
    return pathlib.Path(value("--linearTransform"))

def write_result(parameters):
    if engine == "elastix":
        result_path().write_text(
            '(Transform "EulerTransform")\n(NumberOfParameters 6)\n'
            f'(TransformParameters {{" ".join(parameters)}})\n(CenterOfRotationPoint 0 0 0)\n'
            '(InitialTransformParametersFileName "NoInitialTransform")\n(HowToCombineTransforms "Compose")\n')
    else:
        import SimpleITK as sitk
        affine = sitk.AffineTransform(3)
        if "nan" in parameters:
            affine.SetTranslation((float("nan"), 0.0, 0.0))
        sitk.WriteTransform(affine, str(result_path()))

# The inputs named on the command line must exist, whatever characters their paths hold.
for flag in ("-f", "-m", "--fixedVolume", "--movingVolume"):
    if flag in args and not pathlib.Path(value(flag)).is_file():
        print(f"ERROR: input {{value(flag)!r}} not found", flush=True)
        sys.exit(4)
print("stand-in starting", flush=True)
if behaviour == "crash":
    print("about to crash", flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)
elif behaviour == "fail":
    print("ERROR: the stand-in refuses to register", flush=True)
    sys.exit(3)
elif behaviour == "hang":
    child = subprocess.Popen(["sleep", "300"])
    # Written under another name, then renamed: a test polling the pid files never reads an empty one.
    for name, pid in ((f"grandchild-{{number}}.pid", child.pid), (f"child-{{number}}.pid", os.getpid())):
        (here / (name + ".partial")).write_text(str(pid))
        os.replace(here / (name + ".partial"), here / name)
    while True:
        print("still working", flush=True)
        time.sleep(0.2)
elif behaviour == "no-output":
    print("finished (but wrote nothing)", flush=True)
elif behaviour == "garbage":
    result_path().write_bytes(b"\x00\xffgarbage (Transform \"Nonsense\"\n" + bytes(range(256)))
elif behaviour == "nan":
    write_result(["nan", "0", "0", "0", "0", "0"])
elif behaviour == "identity":
    write_result(["0", "0", "0", "0", "0", "0"])
sys.exit(0)
'''

EXECUTABLE = {"elastix": "elastix", "ants": "antsRegistration", "brainsfit": "BRAINSFit"}


def write_stand_in(folder: Path, engine: str, behaviour: str) -> Path:
    """An executable stand-in for ``engine`` in ``folder`` (see the notes above)."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / EXECUTABLE[engine]
    program.write_text(_STAND_IN.format(python=sys.executable, behaviour=behaviour, engine=engine),
                       encoding="utf-8")
    program.chmod(0o755)
    return program


def stand_in_calls(program: Path) -> list[int]:
    calls = program.parent / "calls.txt"
    return [int(v) for v in calls.read_text().split()] if calls.is_file() else []


def stand_in_pids(program: Path) -> list[int]:
    """PIDs of every hanging stand-in and of the grandchild each one started."""
    return [int(p.read_text()) for p in sorted(program.parent.glob("*child-*.pid"))]


@contextmanager
def engine_program(engine: str, program: Path | str) -> Iterator[None]:
    """Configure ``engine`` to run ``program``, restoring the previous settings afterwards."""
    saved = engine_settings(engine)
    configure_engine(engine, EngineSettings(executable=str(program)))
    try:
        yield
    finally:
        configure_engine(engine, saved)


def running_children(name_prefix: str) -> set[int]:
    """Running (not zombie) processes whose name starts with ``name_prefix``, started by this test process.

    Reads /proc (Linux); the kernel truncates names to 15 characters, hence a prefix.
    """
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)
            name = fields[0].split("(", 1)[1]
            state, ppid = fields[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue
        if name.startswith(name_prefix) and int(ppid) == os.getpid() and state not in ("Z", "X"):
            found.add(int(entry.name))
    return found
