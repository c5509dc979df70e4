"""BRAINSFit adapter: parameter sets checked against BRAINSFit.xml, and both runners exercised.

BRAINSFit itself cannot be installed on this machine (it ships with 3D Slicer / BRAINSTools builds
only), so no test here runs a real BRAINSFit registration. What is real: the parameter sets are
validated against BRAINSFit's own CLI description (``../shared/reference/BRAINSFit.xml``), and the
executable runner is driven through the project's real process runner against a stand-in program.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib.engines import brainsfit_engine as bf
from OneClickRegistrationLib.engines import get_engine
from OneClickRegistrationLib.engines.base import (
    EngineRequest,
    EngineSettings,
    RegistrationEngine,
    RunOptions,
)
from OneClickRegistrationLib.engines.external_program import EngineFiles
from OneClickRegistrationLib.errors import (
    CancelledError,
    EngineError,
    EngineTimeoutError,
    EngineUnavailableError,
    InputError,
)
from OneClickRegistrationLib.modality import Modality
from OneClickRegistrationLib.presets import PRESETS, preset_for

REPO_ROOT = Path(__file__).resolve().parents[2]
# The contract: beside the clone (CI), or where $ONECLICK_BRAINSFIT_XML says.
XML_PATH = Path(os.environ.get("ONECLICK_BRAINSFIT_XML")
                or REPO_ROOT.parent / "shared" / "reference" / "BRAINSFit.xml")



# --------------------------------------------------------------------------------------------------
# BRAINSFit.xml, parsed once


@dataclass(frozen=True)
class XmlParameter:
    tag: str
    longflag: str | None
    default: str | None
    channel: str | None
    elements: tuple[str, ...]
    attributes: dict[str, str] = field(default_factory=dict)


def _parse_xml(path: Path) -> dict[str, XmlParameter]:
    specs: dict[str, XmlParameter] = {}
    for group in ET.parse(path).getroot().iter("parameters"):
        for element in group:
            name = element.findtext("name")
            if name is None:
                continue  # <label>, <description>
            longflag = element.findtext("longflag")
            specs[name.strip()] = XmlParameter(
                tag=element.tag,
                longflag=longflag.strip() if longflag else None,
                default=(element.findtext("default") or "").strip() or None,
                channel=(element.findtext("channel") or "").strip() or None,
                elements=tuple(e.text.strip() for e in element.findall("element") if e.text),
                attributes=dict(element.attrib),
            )
    return specs


@pytest.fixture(scope="module")
def xml_specs() -> dict[str, XmlParameter]:
    if not XML_PATH.is_file():
        pytest.skip(f"BRAINSFit.xml (the parameter contract) is missing: expected it at {XML_PATH}")
    specs = _parse_xml(XML_PATH)
    assert "fixedVolume" in specs and "useRigid" in specs, "BRAINSFit.xml parsed to nothing useful"
    return specs


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_value(name: str, spec: XmlParameter, value: object) -> None:
    """Assert ``value`` has the XML's declared type and lies in its enumeration."""
    tag = spec.tag
    if tag == "boolean":
        assert isinstance(value, bool), (name, value)
    elif tag == "integer":
        assert _is_int(value), (name, value)
    elif tag in ("float", "double"):
        assert isinstance(value, float) and np.isfinite(value), (name, value)
    elif tag == "string-enumeration":
        assert isinstance(value, str) and value in spec.elements, (name, value, spec.elements)
    elif tag == "integer-vector":
        assert isinstance(value, tuple) and value and all(_is_int(v) for v in value), (name, value)
    elif tag in ("float-vector", "double-vector"):
        assert isinstance(value, tuple) and value and all(isinstance(v, float) for v in value), (name, value)
    elif tag == "string-vector":
        assert isinstance(value, tuple) and all(isinstance(v, str) for v in value), (name, value)
    elif tag == "image":
        assert isinstance(value, str) and value.endswith(".nrrd"), (name, value)
    elif tag == "transform":
        assert isinstance(value, str), (name, value)
        extensions = spec.attributes["fileExtensions"].split(",")
        assert Path(value).suffix in extensions, (name, value, extensions)
    elif tag in ("file", "directory", "string"):
        assert isinstance(value, str), (name, value)
    else:  # pragma: no cover - a tag this test does not know is a test bug
        pytest.fail(f"{name}: XML type {tag!r} is not handled by this test")


def check_command_line(args: list[str], params: dict[str, object],
                       specs: dict[str, XmlParameter]) -> None:
    """Assert every flag is an XML long flag and every value reads back as the parameter's value."""
    by_flag = {spec.longflag: (name, spec) for name, spec in specs.items() if spec.longflag}
    seen: set[str] = set()
    index = 1
    while index < len(args):
        token = args[index]
        assert token.startswith("--"), f"expected a --longflag at position {index}, got {token!r}"
        assert token[2:] in by_flag, f"{token} is not a long flag of BRAINSFit.xml"
        name, spec = by_flag[token[2:]]
        assert name not in seen, f"{token} given twice"
        seen.add(name)
        if spec.tag == "boolean":
            assert params[name] is True, f"{token} is a switch but the parameter is {params[name]!r}"
            index += 1
            continue
        text = args[index + 1]
        value = params[name]
        if spec.tag == "integer":
            assert int(text) == value
        elif spec.tag == "double":
            assert float(text) == value
        elif spec.tag == "integer-vector":
            assert tuple(int(t) for t in text.split(",")) == value
        else:
            assert text == value
        index += 2
    expected = {name for name, value in params.items() if value is not False}
    assert seen == expected


# --------------------------------------------------------------------------------------------------
# Requests


def _image(size: int = 12, spacing: float = 3.0, seed: int = 0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(100.0, 20.0, (size, size, size)).astype(np.float32))
    image.SetSpacing((spacing,) * 3)
    image.SetOrigin((-18.0, -15.0, 4.0))
    return image


def _mask(size: int = 12) -> sitk.Image:
    array = np.zeros((size, size, size), np.uint8)
    array[2:-2, 2:-2, 2:-2] = 3  # any non-zero value means "inside"
    mask = sitk.GetImageFromArray(array)
    mask.SetSpacing((3.0,) * 3)
    mask.SetOrigin((-18.0, -15.0, 4.0))
    return mask


FIXED = _image(seed=1)
MOVING = _image(seed=2)
RIGID_START = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.05, -0.1, 0.08, (2.0, -3.0, 1.5))


def _affine_start() -> sitk.AffineTransform:
    start = sitk.AffineTransform(3)
    start.SetMatrix((1.05, 0.02, 0.0, 0.0, 0.97, 0.01, 0.0, 0.0, 1.02))
    start.SetTranslation((1.0, 2.0, -1.0))
    return start


def _request(preset=None, *, kind="rigid", masks="none", initial=None) -> EngineRequest:
    return EngineRequest(
        fixed=FIXED,
        moving=MOVING,
        preset=preset or preset_for("T1", "T2"),
        transform_kind=kind,
        initial_transform=initial if initial is not None else sitk.Euler3DTransform(),
        fixed_mask=_mask() if masks in ("both", "fixed") else None,
        moving_mask=_mask() if masks == "both" else None,
    )


def _files(folder: Path, request: EngineRequest) -> EngineFiles:
    """The adapter's file names, placed in ``folder`` (the host runner passes absolute paths)."""
    def name(stem: str, used: bool = True, suffix: str = ".nrrd") -> str | None:
        return os.fspath(Path(folder) / f"{stem}{suffix}") if used else None

    return EngineFiles(fixed=name("fixed"), moving=name("moving"),
                       initial_transform=name("initial_transform", suffix=".txt"),
                       fixed_mask=name("fixed_mask", request.fixed_mask is not None),
                       moving_mask=name("moving_mask", request.moving_mask is not None))


def _max_distance_mm(a: sitk.Transform, b: sitk.Transform) -> float:
    points = [(-60.0 + 40 * i, -50.0 + 35 * j, -40.0 + 45 * k) for i in range(4) for j in range(4)
              for k in range(3)]
    return max(float(np.linalg.norm(np.subtract(a.TransformPoint(p), b.TransformPoint(p)))) for p in points)


# --------------------------------------------------------------------------------------------------
# Parameter sets against BRAINSFit.xml


def test_adapter_parameter_table_matches_xml(xml_specs):
    """The adapter's own name -> (kind, long flag) table is BRAINSFit.xml's."""
    for name, (kind, flag) in bf.PARAMETERS.items():
        assert name in xml_specs, f"{name} is not a BRAINSFit parameter"
        spec = xml_specs[name]
        assert spec.longflag == flag, (name, spec.longflag, flag)
        if kind.endswith(("-input", "-output")):
            base, channel = kind.rsplit("-", 1)
            assert spec.channel == channel, (name, spec.channel)
            if base == "label":
                assert spec.tag == "image" and spec.attributes.get("type") == "label", name
            else:
                assert spec.tag == base and spec.attributes.get("type") != "label", name
        else:
            assert spec.tag == kind, (name, spec.tag, kind)
        if kind == "boolean":
            # build_command_line's bare switch means "true" only because the default is false.
            assert spec.default in ("false", "0"), (name, spec.default)
    assert set(bf.PHASE_FLAGS) <= set(bf.PARAMETERS)


def _combinations():
    for masks in ("none", "both", "fixed"):
        for initial in (sitk.Euler3DTransform(), RIGID_START):
            yield masks, initial


@pytest.mark.parametrize("kind", ["rigid", "affine"])
@pytest.mark.parametrize("pair", sorted(PRESETS, key=str), ids=lambda p: f"{p[0].value}-{p[1].value}")
def test_every_preset_parameter_set_is_valid_brainsfit(xml_specs, pair, kind, tmp_path):
    preset = PRESETS[pair]
    for masks, initial in _combinations():
        request = _request(preset, kind=kind, masks=masks, initial=initial)
        paths = _files(tmp_path / "run dir é", request)
        params = bf.build_parameters(request, paths, threads=2)
        context = (pair, kind, masks, initial is not None)

        # Names, types and enumerations exactly as BRAINSFit.xml declares them.
        for name, value in params.items():
            assert name in xml_specs, (context, name)
            check_value(name, xml_specs[name], value)

        # The executable gets the XML's long flags with values that read back unchanged.
        check_command_line(bf.build_command_line("BRAINSFit", params), params, xml_specs)

        # BRAINSFit.cxx's own consistency rules.
        phases = [flag for flag in bf.PHASE_FLAGS if params[flag]]
        assert phases, context
        assert len(params["numberOfIterations"]) in (1, len(phases)), context
        assert "bsplineTransform" not in params and "outputTransform" not in params
        assert params["linearTransform"] == bf.OUTPUT_TRANSFORM
        if masks == "none":
            # BRAINSFit's own head mask (ROIAUTO) is slow at full resolution; the samples are random.
            assert params["maskProcessingMode"] == "NOMASK", context
            assert "fixedBinaryVolume" not in params and "movingBinaryVolume" not in params
        else:
            assert params["maskProcessingMode"] == "ROI", context
            assert params["fixedBinaryVolume"] == paths.fixed_mask
            assert ("movingBinaryVolume" in params) == (masks == "both"), context

        # Multimodal brain recommendations, as properties.
        cross_modality = preset.fixed_modality != preset.moving_modality or Modality.MR in pair
        assert params["histogramMatch"] is False, context
        if cross_modality:
            assert params["costMetric"] == "MMI", context
        assert params["useRigid"] is True, context  # rigid start (for affine too, with a rigid start)
        assert params["useAffine"] is (kind == "affine"), context
        assert not any(params[flag] for flag in ("useBSpline", "useSyN", "useComposite",
                                                  "useScaleVersor3D", "useScaleSkewVersor3D"))
        # The pipeline always gives the start: BRAINSFit never initializes itself.
        assert params["initializeTransformMode"] == "Off", context
        assert params["initialTransform"] == paths.initial_transform
        assert params["backgroundFillValue"] == preset.moving_fill_value, context
        assert params["numberOfHistogramBins"] == preset.histogram_bins
        # About SAMPLES_PER_RUN samples: on this small (12^3) image, every voxel.
        assert params["samplingPercentage"] == 1.0
        assert params["maximumStepLength"] == bf.STEP_PER_SHRINK
        assert params["numberOfThreads"] == 2


def test_cost_metric_follows_the_preset_and_initialization_is_always_the_given_start(xml_specs, tmp_path):
    for preset in PRESETS.values():
        request = _request(preset)
        params = bf.build_parameters(request, _files(tmp_path, request))
        assert params["costMetric"] == {"mi": "MMI", "ncc": "NC"}[preset.similarity], preset.name
        assert params["initializeTransformMode"] == "Off"
        assert params["interpolationMode"] in xml_specs["interpolationMode"].elements
    # The same-modality CT pair correlates; a CT moving image fills with air in Hounsfield units.
    ct = preset_for("CT", "CT")
    request = _request(ct)
    params = bf.build_parameters(request, _files(tmp_path, request))
    assert params["costMetric"] == "NC"
    assert params["backgroundFillValue"] == -1024.0


def test_output_volume_only_when_asked(xml_specs, tmp_path):
    request = _request()
    without = bf.build_parameters(request, _files(tmp_path, request))
    assert "outputVolume" not in without and "outputVolumePixelType" not in without
    with_volume = bf.build_parameters(request, _files(tmp_path, request), output_volume="output_volume.nrrd")
    assert with_volume["outputVolume"] == "output_volume.nrrd"
    check_value("outputVolumePixelType", xml_specs["outputVolumePixelType"],
                with_volume["outputVolumePixelType"])


def test_non_rigid_initial_transform(tmp_path):
    # Affine registration from an affine start: only the affine phase, so the start is kept whole.
    request = _request(kind="affine", initial=_affine_start())
    params = bf.build_parameters(request, _files(tmp_path, request))
    assert params["useAffine"] is True and params["useRigid"] is False
    assert params["numberOfIterations"] == (sum(request.preset.iterations),)
    # A rigid registration cannot keep an affine start in BRAINSFit: refused, not silently cut down.
    request = _request(kind="rigid", initial=_affine_start())
    with pytest.raises(InputError, match="rigid part"):
        bf.build_parameters(request, _files(tmp_path, request))


def test_non_linear_initial_transform_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    field_image = sitk.GetImageFromArray(rng.normal(0, 2.0, (6, 6, 6, 3)), isVector=True)
    field_image.SetSpacing((5.0, 5.0, 5.0))
    warp = sitk.DisplacementFieldTransform(sitk.Cast(field_image, sitk.sitkVectorFloat64))
    request = _request(initial=warp)
    with pytest.raises(InputError, match="must be linear"):
        bf.build_parameters(request, _files(tmp_path, request))


def test_command_line_rejects_unknown_names_and_formats_values():
    with pytest.raises(InputError, match="Unknown BRAINSFit parameter"):
        bf.build_command_line("BRAINSFit", {"useRigd": True})
    args = bf.build_command_line("/opt/my tools/BRAINSFit", {
        "useRigid": True, "useAffine": False, "numberOfIterations": (350, 350),
        "backgroundFillValue": -1024.0, "fixedVolume": "/tmp/a b/ü.nrrd"})
    assert args == ["/opt/my tools/BRAINSFit", "--useRigid", "--numberOfIterations", "350,350",
                    "--backgroundFillValue", "-1024.0", "--fixedVolume", "/tmp/a b/ü.nrrd"]


# --------------------------------------------------------------------------------------------------
# The executable runner, against a stand-in program.
#
# FAKE, on purpose, for what the real BRAINSFit (test_brainsfit_engine_run.py) cannot be made to
# show: exit 0 without writing its transform, a non-rigid result to a rigid request, a program that
# hangs with a child process of its own (the whole tree must be stopped), and the exact argument
# list as received. It records the arguments it received and writes a valid ITK linear transform
# file where --linearTransform says; everything around it (skeleton, process runner, temporary
# folder, file formats, transform reading) is the real code.

STAND_IN = '''\
#!{python}
# Stand-in for BRAINSFit (see test_brainsfit_engine.py): records argv, then acts as MODE says.
import json, os, subprocess, sys, time
MODE = {mode!r}
RECORD = {record!r}
TRANSFORM_TEXT = {transform_text!r}
args = sys.argv[1:]
flags = {{}}
for i, token in enumerate(args):
    if token.startswith("--"):
        nxt = args[i + 1] if i + 1 < len(args) else None
        flags[token[2:]] = nxt if nxt is not None and not nxt.startswith("--") else True
record = {{"argv": sys.argv, "cwd": os.getcwd(), "exists": {{}}, "initial_text": None}}
for name, value in flags.items():
    if isinstance(value, str) and value.endswith((".nrrd", ".txt")):
        record["exists"][name] = os.path.exists(value)
if "initialTransform" in flags:
    with open(flags["initialTransform"], encoding="utf-8") as f:
        record["initial_text"] = f.read()
with open(RECORD, "w", encoding="utf-8") as f:
    json.dump(record, f)
print("TransformTypes: Rigid(1 of 1).", flush=True)
if MODE == "fail":
    print("Exception during registration:", flush=True)
    print("itk::ExceptionObject: too few samples inside the fixed mask", flush=True)
    sys.exit(1)
if MODE == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(RECORD + ".pids", "w") as f:
        f.write(f"{{os.getpid()}} {{child.pid}}")
    time.sleep(120)
if MODE == "no_output":
    print("Finished.", flush=True)
    sys.exit(0)
print("=== ITKv4 Registration: Starting Transform Estimations for Rigid(1 of 1).===", flush=True)
for iteration in range(0, 300, 50):
    print(f"{{iteration:4d}}   -0.{{iteration + 100}}   [ 0.01 0.02 0.03 1 2 3 ]", flush=True)
with open(flags["linearTransform"], "w", encoding="utf-8") as f:
    f.write(TRANSFORM_TEXT)
'''


def itk_text(transform: sitk.Transform, class_name: str) -> str:
    """An ITK text transform file, written out by hand as BRAINSFit's writer lays it out."""
    numbers = " ".join(repr(float(v)) for v in transform.GetParameters())
    fixed = " ".join(repr(float(v)) for v in transform.GetFixedParameters())
    return (f"#Insight Transform File V1.0\n#Transform 0\nTransform: {class_name}\n"
            f"Parameters: {numbers}\nFixedParameters: {fixed}\n")


def _true_rigid() -> sitk.VersorRigid3DTransform:
    rigid = sitk.VersorRigid3DTransform()
    rigid.SetCenter((1.0, 2.0, 3.0))
    rigid.SetRotation((0.3, -0.2, 0.9), 0.12)
    rigid.SetTranslation((4.0, -6.5, 2.25))
    return rigid


TRUE_RIGID = _true_rigid()


def _true_affine() -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.1, 0.05, 0.0, -0.03, 0.95, 0.02, 0.0, 0.01, 1.03))
    affine.SetTranslation((3.0, -2.0, 5.0))
    affine.SetCenter((1.0, -1.0, 10.0))
    return affine


@dataclass
class StandIn:
    executable: Path
    record: Path

    def recorded(self) -> dict:
        return json.loads(self.record.read_text(encoding="utf-8"))

    def pids(self) -> list[int]:
        pid_file = Path(f"{self.record}.pids")
        deadline = time.monotonic() + 10
        while not pid_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        return [int(p) for p in pid_file.read_text().split()]


def make_stand_in(folder: Path, mode: str = "ok", transform_text: str | None = None) -> StandIn:
    """Write an executable named BRAINSFit into ``folder`` (a path with spaces and non-ASCII)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "record.json"
    script = folder / "BRAINSFit"
    script.write_text(STAND_IN.format(
        python=sys.executable, mode=mode, record=str(record),
        transform_text=transform_text if transform_text is not None
        else itk_text(TRUE_RIGID, "VersorRigid3DTransform_double_3_3"),
    ), encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return StandIn(script, record)


@pytest.fixture
def odd_tempdir(tmp_path, monkeypatch) -> Path:
    """Make the engine's temporary folders live under a path with spaces and non-ASCII letters."""
    root = tmp_path / "temp dir é ü 中"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def bin_dir(tmp_path) -> Path:
    return tmp_path / "bin dir ü"


def _engine(stand_in: StandIn):
    return bf.create_engine(EngineSettings(executable=stand_in.executable))


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie has exited; only its exit status is left to collect


def _wait_gone(pids: list[int], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return all(_gone(pid) for pid in pids)


def test_executable_runner_passes_paths_unmangled_and_returns_the_transform(bin_dir, odd_tempdir):
    stand_in = make_stand_in(bin_dir)
    progress: list[tuple[float, str]] = []
    # A budget of 350 iterations, so the stand-in's iteration lines (0 to 250) each move the bar.
    request = _request(replace(preset_for("T1", "T2"), iterations=(200, 100, 50)), masks="both")
    output = _engine(stand_in).run(request, RunOptions(progress=lambda f, m: progress.append((f, m))))

    # The transform BRAINSFit wrote is returned unchanged (same mapping), as a rigid transform (one
    # Euler3DTransform, as every engine returns).
    assert output.transform.GetName() == "Euler3DTransform"
    assert _max_distance_mm(output.transform, TRUE_RIGID) < 1e-9
    assert output.engine_metric_value is None and output.kept_temp_dir is None

    recorded = stand_in.recorded()
    argv = recorded["argv"]
    assert argv[0] == str(stand_in.executable)
    workdir = Path(recorded["cwd"])
    assert workdir.parent == odd_tempdir  # ran inside its own temporary folder
    files = EngineFiles(fixed="fixed.nrrd", moving="moving.nrrd", initial_transform="initial_transform.txt",
                        fixed_mask="fixed_mask.nrrd", moving_mask="moving_mask.nrrd")
    expected = bf.build_command_line(stand_in.executable, bf.build_parameters(request, files))
    # Spaces and non-ASCII letters in the program's path reached it as they were; files are named
    # relative to the work folder it runs in, so the temporary folder's path never appears.
    assert argv == expected
    assert "temp dir é ü 中" in recorded["cwd"] and "bin dir ü" in argv[0]
    assert recorded["exists"] == {"fixedVolume": True, "movingVolume": True, "fixedBinaryVolume": True,
                                  "movingBinaryVolume": True, "initialTransform": True,
                                  "linearTransform": False}
    assert not workdir.exists(), "the temporary folder must be removed after the run"

    # The log holds the command and the program's output; progress is monotonic, parsed, complete.
    assert output.log[0].startswith("$ ") and "Starting Transform Estimations" in "\n".join(output.log)
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    # A progress step per iteration line that moved the bar by half a percent or more (the first,
    # iteration 0, does not), each further along than the last.
    per_iteration = [f for f, m in progress if "iteration" in m]
    assert len(per_iteration) == 5 and all(a < b for a, b in zip(per_iteration, per_iteration[1:]))
    assert per_iteration[0] > 0.05 and per_iteration[-1] < 0.95


def test_written_inputs_and_initial_transform(bin_dir, odd_tempdir):
    stand_in = make_stand_in(bin_dir)
    request = _request(masks="both", initial=RIGID_START)
    output = _engine(stand_in).run(request, RunOptions(keep_temp=True))
    try:
        kept = Path(output.kept_temp_dir)
        fixed = sitk.ReadImage(str(kept / "fixed.nrrd"))
        assert fixed.GetPixelID() == sitk.sitkFloat32
        assert np.array_equal(sitk.GetArrayFromImage(fixed), sitk.GetArrayFromImage(FIXED))
        assert fixed.GetOrigin() == FIXED.GetOrigin() and fixed.GetSpacing() == FIXED.GetSpacing()
        mask = sitk.ReadImage(str(kept / "moving_mask.nrrd"))
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayFromImage(mask))) == {0, 1}
    finally:
        shutil.rmtree(output.kept_temp_dir, ignore_errors=True)

    # The initial transform reached BRAINSFit as a VersorRigid3D (an Euler3D would be skipped by it)
    # with the same mapping, and initialization was switched off as BRAINSFit requires.
    recorded = stand_in.recorded()
    assert "VersorRigid3DTransform_double_3_3" in recorded["initial_text"]
    initial_file = odd_tempdir / "initial.txt"
    initial_file.write_text(recorded["initial_text"], encoding="utf-8")
    assert _max_distance_mm(sitk.ReadTransform(str(initial_file)), RIGID_START) < 1e-9
    argv = recorded["argv"]
    assert argv[argv.index("--initializeTransformMode") + 1] == "Off"


def test_affine_run_from_an_affine_start(bin_dir, odd_tempdir):
    truth = _true_affine()
    stand_in = make_stand_in(bin_dir, transform_text=itk_text(truth, "AffineTransform_double_3_3"))
    output = _engine(stand_in).run(_request(kind="affine", initial=_affine_start()), RunOptions())
    assert output.transform.GetName() == "AffineTransform"
    assert _max_distance_mm(output.transform, truth) < 1e-9
    recorded = stand_in.recorded()
    assert "AffineTransform_double_3_3" in recorded["initial_text"]
    assert "--useAffine" in recorded["argv"] and "--useRigid" not in recorded["argv"]


def test_failure_reports_the_last_log_lines(bin_dir, odd_tempdir):
    stand_in = make_stand_in(bin_dir, mode="fail")
    with pytest.raises(EngineError, match="exited with code 1") as caught:
        _engine(stand_in).run(_request(), RunOptions())
    assert "too few samples inside the fixed mask" in caught.value.log_tail[-1]
    assert "too few samples" in str(caught.value)
    assert not Path(stand_in.recorded()["cwd"]).exists()


def test_missing_output_is_an_error(bin_dir, odd_tempdir):
    stand_in = make_stand_in(bin_dir, mode="no_output")
    with pytest.raises(EngineError, match="wrote no transform") as caught:
        _engine(stand_in).run(_request(), RunOptions())
    assert caught.value.log_tail[-1] == "Finished."
    assert not Path(stand_in.recorded()["cwd"]).exists()


def test_rigid_request_with_a_non_rigid_result_is_an_error(bin_dir, odd_tempdir):
    stand_in = make_stand_in(bin_dir, transform_text=itk_text(_true_affine(), "AffineTransform_double_3_3"))
    with pytest.raises(EngineError, match="scaling or shear"):
        _engine(stand_in).run(_request(kind="rigid"), RunOptions())


def test_timeout_stops_the_whole_process_tree(bin_dir, odd_tempdir):
    stand_in = make_stand_in(bin_dir, mode="hang")
    with pytest.raises(EngineTimeoutError, match="did not finish within"):
        _engine(stand_in).run(_request(), RunOptions(timeout_s=2.0))
    assert _wait_gone(stand_in.pids()), "BRAINSFit and its child must be stopped"
    assert not Path(stand_in.recorded()["cwd"]).exists()
    assert list(odd_tempdir.iterdir()) == []


def test_cancel_stops_the_process_and_cleans_up(bin_dir, odd_tempdir):
    stand_in = make_stand_in(bin_dir, mode="hang")
    pid_file = Path(f"{stand_in.record}.pids")
    with pytest.raises(CancelledError):
        _engine(stand_in).run(_request(), RunOptions(cancel=pid_file.is_file, timeout_s=60))
    assert _wait_gone(stand_in.pids())
    assert list(odd_tempdir.iterdir()) == []


def test_cancel_before_start_runs_nothing(bin_dir, odd_tempdir):
    stand_in = make_stand_in(bin_dir)
    with pytest.raises(CancelledError):
        _engine(stand_in).run(_request(), RunOptions(cancel=lambda: True))
    assert not stand_in.record.exists()


# --------------------------------------------------------------------------------------------------
# Finding the executable


def test_availability_and_lookup_order(bin_dir, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv(bf.ENV_VAR, raising=False)

    missing = bf.create_engine(EngineSettings()).availability()
    assert not missing.available and "PATH" in missing.detail
    with pytest.raises(EngineUnavailableError):
        bf.create_engine(EngineSettings()).run(_request(), RunOptions())

    stand_in = make_stand_in(bin_dir)
    for settings in (EngineSettings(executable=stand_in.executable),
                     EngineSettings(search_dirs=(str(bin_dir),))):
        found = bf.create_engine(settings).availability()
        assert found.available and str(stand_in.executable) in found.detail
    monkeypatch.setenv(bf.ENV_VAR, str(stand_in.executable))
    assert bf.create_engine(EngineSettings()).availability().available
    monkeypatch.delenv(bf.ENV_VAR)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert str(stand_in.executable) in bf.create_engine(EngineSettings()).availability().detail

    wrong = bf.create_engine(EngineSettings(executable=tmp_path / "no such BRAINSFit")).availability()
    assert not wrong.available and "no such BRAINSFit" in wrong.detail


def test_registry_returns_the_adapter(bin_dir):
    engine = get_engine("brainsfit", EngineSettings(executable=make_stand_in(bin_dir).executable))
    assert isinstance(engine, RegistrationEngine) and engine.name == "brainsfit"
