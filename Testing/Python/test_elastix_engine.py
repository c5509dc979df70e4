"""Elastix adapter without a registration run: parameter map, transform conversion, log parsing,
executable lookup. The conversion tests check our reading of elastix's transform files against
elastix's own ``transformix`` mapping the same points."""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib.engines import get_engine
from OneClickRegistrationLib.engines.base import EngineRequest, EngineSettings
from OneClickRegistrationLib.engines.elastix_engine import (
    MAX_SPATIAL_SAMPLES,
    MIN_SPATIAL_SAMPLES,
    ElastixEngine,
    ProgressParser,
    elastix_messages,
    finest_level_request,
    parameter_map,
    pyramid_schedule,
    spatial_samples,
)
from OneClickRegistrationLib.engines.elastix_parameters import (
    format_parameters,
    initial_transform_text,
    parse_parameters,
    transform_from_parameter_file,
    transform_matrix_from_parameter_file,
    write_parameter_file,
)
from OneClickRegistrationLib.errors import EngineError, EngineUnavailableError, InputError
from OneClickRegistrationLib.presets import preset_for
from OneClickRegistrationLib.transforms import to_matrix


def _image(size=(40, 48, 44), spacing=(2.5, 2.5, 2.5), origin=(-50.0, -60.0, -55.0)) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _request(fixed_modality="T1", moving_modality="T2", **kwargs) -> EngineRequest:
    base = dict(fixed=_image(), moving=_image(spacing=(2.25, 2.25, 7.5)),
                preset=preset_for(fixed_modality, moving_modality), initial_transform=sitk.Euler3DTransform())
    base.update(kwargs)
    return EngineRequest(**base)


def _params(request: EngineRequest) -> dict:
    """The parameter map as elastix reads it back from the file (numbers as floats)."""
    return parse_parameters(format_parameters(parameter_map(request)))


# --- parameter map --------------------------------------------------------------------------------


def test_rigid_mi_parameter_text():
    request = _request("T1", "T2")
    text = format_parameters(parameter_map(request), header="header")
    p = parse_parameters(text)
    assert p["Transform"] == ("EulerTransform",)
    assert p["Metric"] == ("AdvancedMattesMutualInformation",)
    assert p["NumberOfHistogramBins"] == (float(request.preset.histogram_bins),)
    assert p["Registration"] == ("MultiResolutionRegistration",)
    assert p["Optimizer"] == ("AdaptiveStochasticGradientDescent",)
    assert p["MaximumNumberOfIterations"] == tuple(float(n) for n in request.preset.iterations)
    assert p["NumberOfResolutions"] == (float(len(request.preset.shrink_factors)),)
    assert p["ImageSampler"] == ("RandomCoordinate",)
    assert p["AutomaticScalesEstimation"] == ("true",)
    assert p["AutomaticParameterEstimation"] == ("true",)
    assert p["ASGDParameterEstimationMethod"] == ("Original",)
    assert p["NumberOfSamplesForExactGradient"] == (20000.0,)
    assert p["WriteResultImage"] == ("false",)
    assert p["WriteITKCompositeTransform"] == ("true",)
    assert p["ITKTransformOutputFileNameExtension"] == ("tfm",)
    assert p["DefaultPixelValue"] == (request.preset.moving_fill_value,)
    assert p["Interpolator"] == ("LinearInterpolator",)
    assert p["FinalBSplineInterpolationOrder"] == (1.0,)
    assert "ErodeMask" not in p
    # Every line is one well-formed "(Name values)" entry (or the header comment).
    for line in text.splitlines():
        assert line.startswith("//") or re.fullmatch(r"\(\w+( (\"[^\"]*\"|-?[0-9.e+-]+))+\)", line), line


def test_affine_ncc_parameter_text():
    request = _request("CT", "CT", transform_kind="affine")
    p = _params(request)
    assert request.preset.similarity == "ncc"
    assert p["Transform"] == ("AffineTransform",)
    assert p["Metric"] == ("AdvancedNormalizedCorrelation",)
    assert "NumberOfHistogramBins" not in p


def test_ct_fill_value_and_bspline_interpolation():
    preset = replace(preset_for("T1", "CT"), interpolation="bspline")
    p = _params(_request("T1", "CT", preset=preset))
    assert p["DefaultPixelValue"] == (-1024.0,)
    assert p["Interpolator"] == ("BSplineInterpolator",)
    assert p["BSplineInterpolationOrder"] == (3.0,)
    assert p["FinalBSplineInterpolationOrder"] == (3.0,)


def test_masks_turn_off_mask_erosion():
    mask = sitk.Cast(_image() * 0 + 1, sitk.sitkUInt8)
    for kwargs in ({"fixed_mask": mask}, {"moving_mask": mask}):
        assert _params(_request(**kwargs))["ErodeMask"] == ("false",)


def test_mask_on_a_finer_grid_counts_fixed_voxels():
    # The mask covers half the fixed image (z < 0 of 44 slices) on a grid twice as fine: 42240 fixed
    # voxels, so the coarse level (shrink 2) draws 50% of 42240 / 8 = 2640 samples.
    fixed = _image()
    mask = sitk.Image([80, 96, 44], sitk.sitkUInt8) + 1
    mask.SetSpacing((1.25, 1.25, 1.25))
    mask.SetOrigin(fixed.GetOrigin())
    preset = replace(preset_for("T1", "T2"), sampling_fraction=0.5)
    p = _params(_request(fixed=fixed, preset=preset, fixed_mask=mask))
    assert p["NumberOfSpatialSamples"][0] == 2640.0
    assert _params(_request(fixed=fixed, preset=preset))["NumberOfSpatialSamples"][0] == 5280.0


def test_elastix_never_initializes_itself():
    # The pipeline always passes a start (the -t0 file); a second initialization would undo it.
    for initialization in ("geometry", "moments"):
        preset = replace(preset_for("T1", "T2"), initialization=initialization)
        p = _params(_request(preset=preset))
        assert p["AutomaticTransformInitialization"] == ("false",)
        assert "AutomaticTransformInitializationMethod" not in p


def test_a_request_without_initial_transform_is_refused():
    with pytest.raises(InputError, match="initial transform"):
        EngineRequest(fixed=_image(), moving=_image(), preset=preset_for("T1", "T2"),
                      initial_transform=None)


def test_pyramid_follows_physical_spacing_per_axis():
    # 1 mm T1 levels at 4/2/1 mm; a 0.8 x 0.8 x 5 mm CT is not shrunk along its thick slices.
    assert pyramid_schedule((1.0, 1.0, 1.0), (4.0, 2.0, 1.0)) == ((4, 4, 4), (2, 2, 2), (1, 1, 1))
    assert pyramid_schedule((0.8, 0.8, 5.0), (4.0, 2.0, 1.0)) == ((5, 5, 1), (2, 2, 1), (1, 1, 1))
    request = _request(fixed=_image(spacing=(1.0, 1.0, 1.0)), moving=_image(spacing=(0.8, 0.8, 5.0)))
    assert request.preset.shrink_factors == (4, 2, 1) and request.preset.smoothing_sigmas_mm == (2.0, 1.0, 0.0)
    p = _params(request)
    # The preset's sigmas are ITK's pyramid rule at 1 mm (half the level's voxel size), so the fast
    # recursive pyramid gives exactly them.
    assert p["FixedImagePyramid"] == ("FixedRecursiveImagePyramid",)
    assert p["FixedImagePyramidSchedule"] == (4, 4, 4, 2, 2, 2, 1, 1, 1)
    assert p["MovingImagePyramidSchedule"] == (5, 5, 1, 2, 2, 1, 1, 1, 1)
    assert "ImagePyramidSmoothingSchedule" not in p
    assert p["MaximumStepLength"] == (4.0, 2.0, 1.0)  # each level's voxel size


def test_images_finer_than_the_finest_level_are_block_averaged_to_it():
    # A 0.5 mm fixed image under the 1 mm finest level: elastix gets 2x2x2 block means, each at its
    # block's centre (origin moved by half a fine voxel towards the block), the 1 mm moving untouched.
    values = np.arange(40 * 48 * 44, dtype=np.float32).reshape(44, 48, 40)
    fixed = sitk.GetImageFromArray(values)
    fixed.SetSpacing((0.5, 0.5, 0.5))
    fixed.SetOrigin((-10.0, -12.0, -11.0))
    moving = _image(spacing=(1.0, 1.0, 1.0))
    shrunk = finest_level_request(_request(fixed=fixed, moving=moving))
    assert shrunk.fixed.GetSpacing() == (1.0, 1.0, 1.0) and shrunk.fixed.GetSize() == (20, 24, 22)
    assert np.allclose(shrunk.fixed.GetOrigin(), (-9.75, -11.75, -10.75))
    block = values[:2, :2, :2].mean()
    assert sitk.GetArrayViewFromImage(shrunk.fixed)[0, 0, 0] == pytest.approx(block)
    assert shrunk.moving is moving
    # Thick slices are shrunk only in plane; the levels elastix then runs keep their voxel sizes.
    ct = _image(size=(80, 96, 20), spacing=(0.5, 0.5, 2.5))
    shrunk_ct = finest_level_request(_request(fixed=ct, moving=moving))
    assert shrunk_ct.fixed.GetSpacing() == (1.0, 1.0, 2.5)
    assert _params(shrunk_ct)["MaximumStepLength"] == _params(_request(fixed=ct, moving=moving))["MaximumStepLength"]
    # A thin image keeps at least four voxels along each axis.
    thin = _image(size=(80, 96, 10), spacing=(0.25, 0.25, 0.25))
    assert finest_level_request(_request(fixed=thin, moving=moving)).fixed.GetSize() == (20, 24, 5)
    # Nothing to shrink: the request itself.
    whole = _request(fixed=_image(spacing=(1.0, 1.0, 1.0)), moving=moving)
    assert finest_level_request(whole) is whole


def test_other_sigmas_use_the_generic_pyramid():
    # At 2.5 mm the levels are 5/2.5/2.5 mm: ITK's rule would smooth 2.5/0/0 mm, not the preset's
    # 2/1/0, so the generic pyramid takes the sigmas as given (in mm).
    request = _request()
    p = _params(request)
    assert p["FixedImagePyramid"] == ("FixedGenericImagePyramid",)
    assert p["FixedImagePyramidRescaleSchedule"] == (2, 2, 2, 1, 1, 1, 1, 1, 1)
    assert p["MovingImagePyramidRescaleSchedule"] == (2, 2, 1, 1, 1, 1, 1, 1, 1)
    sigmas = request.preset.smoothing_sigmas_mm
    assert p["ImagePyramidSmoothingSchedule"] == tuple(float(s) for s in sigmas for _ in range(3))
    custom = replace(request.preset, smoothing_sigmas_mm=(3.0, 1.5, 0.5))
    one_mm = _request(fixed=_image(spacing=(1.0, 1.0, 1.0)), preset=custom)
    assert _params(one_mm)["ImagePyramidSmoothingSchedule"] == (3.0, 3.0, 3.0, 1.5, 1.5, 1.5, 0.5, 0.5, 0.5)


def test_spatial_samples_follow_fraction_within_limits():
    schedule = ((4, 4, 4), (2, 2, 2), (1, 1, 1))
    counts = spatial_samples((64, 64, 64), schedule, 0.5)
    assert counts[0] == round(0.5 * 64**3 / 64)  # 2048 exactly: inside the limits
    assert counts[1] == MAX_SPATIAL_SAMPLES and counts[2] == MAX_SPATIAL_SAMPLES
    assert spatial_samples((20, 20, 20), schedule, 0.01) == (MIN_SPATIAL_SAMPLES,) * 3
    # A mask: the fraction applies to the voxels inside it.
    assert spatial_samples((200, 200, 200), ((1, 1, 1),), 0.001, mask_voxels=3_000_000) == (3000,)
    # The 2.5 mm test image: levels shrink 2/1/1, so 10% of 84480 voxels is 1056 (raised to the
    # minimum) at the coarse level and 8448 (capped) at the others.
    assert _request().preset.sampling_fraction == 0.10
    finer = float(min(8448, MAX_SPATIAL_SAMPLES))
    assert _params(_request())["NumberOfSpatialSamples"] == (float(MIN_SPATIAL_SAMPLES), finer, finer)


def test_a_parameter_map_is_adapted_with_update_and_written_once_per_name(tmp_path):
    parameters = parameter_map(_request())
    parameters.update({"Metric": ("NoSuchMetric",), "Extra": (3,)})
    file = write_parameter_file(parameters, tmp_path / "p.txt", header="a test")
    text = file.read_text()
    p = parse_parameters(text)
    assert p["Metric"] == ("NoSuchMetric",) and p["Extra"] == (3.0,)
    assert text.count("(Metric ") == 1 and text.startswith("// a test\n")


def test_preset_with_inconsistent_levels_is_refused():
    preset = replace(preset_for("T1", "T2"), iterations=(10, 10))
    with pytest.raises(InputError, match="one smoothing sigma and one iteration count per pyramid level"):
        parameter_map(_request(preset=preset))


def test_parse_parameters_reads_elastix_syntax():
    text = ('// comment\n(Transform "EulerTransform") // trailing\n'
            '(TransformParameters 0.1 -2e-3 3)\n\n(Empty "")\n')
    assert parse_parameters(text) == {"Transform": ("EulerTransform",),
                                      "TransformParameters": (0.1, -0.002, 3.0), "Empty": ("",)}


# --- transforms: our reading against elastix's own transformix ---------------------------------


# What transformix needs besides the transform itself (as elastix writes it into its results).
_RESAMPLE_LINES = ('(ResampleInterpolator "FinalBSplineInterpolator")\n(FinalBSplineInterpolationOrder 1)\n'
                   '(Resampler "DefaultResampler")\n(DefaultPixelValue 0)\n(ResultImageFormat "mha")\n'
                   '(ResultImagePixelType "float")\n')


def _geometry_lines() -> str:
    return ('(FixedImageDimension 3)\n(MovingImageDimension 3)\n(FixedInternalImagePixelType "float")\n'
            '(MovingInternalImagePixelType "float")\n(Size 10 10 10)\n(Index 0 0 0)\n(Spacing 1 1 1)\n'
            '(Origin 0 0 0)\n(Direction 1 0 0 0 1 0 0 0 1)\n(UseDirectionCosines "true")\n' + _RESAMPLE_LINES)


def _euler_file(path: Path, *, angles, translation, center, zyx=False, initial="NoInitialTransform") -> Path:
    path.write_text(
        '(Transform "EulerTransform")\n(NumberOfParameters 6)\n'
        f'(TransformParameters {" ".join(repr(float(v)) for v in (*angles, *translation))})\n'
        f'(InitialTransformParametersFileName "{initial}")\n(HowToCombineTransforms "Compose")\n'
        f'(CenterOfRotationPoint {" ".join(repr(float(c)) for c in center)})\n'
        f'(ComputeZYX "{"true" if zyx else "false"}")\n' + _geometry_lines(), encoding="utf-8")
    return path


POINTS = np.array([[0.0, 0.0, 0.0], [60.0, -40.0, 25.0], [-80.0, 70.0, -30.0], [15.5, 90.0, 110.0]])


def _transformix(parameter_file: Path, work: Path) -> np.ndarray:
    """Where elastix's own transformix sends POINTS with ``parameter_file``."""
    exe = shutil.which("transformix")
    if exe is None:
        pytest.skip("transformix (Debian package elastix) is not on PATH; it is the reference for this check")
    points = work / "points.txt"
    rows = "".join(" ".join(f"{v:.10g}" for v in p) + "\n" for p in POINTS)
    points.write_text(f"point\n{len(POINTS)}\n{rows}")
    out = work / "transformix_out"
    out.mkdir(exist_ok=True)
    subprocess.run([exe, "-def", str(points), "-tp", str(parameter_file), "-out", str(out)],
                   check=True, capture_output=True)
    text = (out / "outputpoints.txt").read_text()
    found = re.findall(r"OutputPoint = \[ ([^\]]+) \]", text)
    return np.array([[float(v) for v in f.split()] for f in found])


def _ours(transform: sitk.Transform) -> np.ndarray:
    return np.array([transform.TransformPoint(tuple(p)) for p in POINTS])


@pytest.mark.engine
@pytest.mark.parametrize("zyx", [False, True])
def test_euler_file_conversion_matches_transformix(tmp_path, zyx):
    file = _euler_file(tmp_path / "TransformParameters.0.txt", angles=(0.2, -0.15, 0.3),
                       translation=(5.0, -7.0, 3.5), center=(10.0, -20.0, 30.0), zyx=zyx)
    ours = transform_from_parameter_file(file, rigid=True)
    assert isinstance(ours, sitk.Euler3DTransform)
    assert np.allclose(ours.GetCenter(), (10.0, -20.0, 30.0))
    assert np.abs(_ours(ours) - _transformix(file, tmp_path)).max() < 1e-4


@pytest.mark.engine
def test_initial_transform_file_and_composition_match_transformix(tmp_path):
    # A non-symmetric affine written by us for -t0, then an Euler result that names it as its
    # initial transform: transformix (elastix's code) must map points exactly as our reading does.
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.05, 0.10, -0.04, -0.08, 0.97, 0.12, 0.05, -0.02, 1.10))
    affine.SetTranslation((4.0, -3.0, 8.0))
    affine.SetCenter((-12.0, 25.0, 7.0))
    fixed = _image(size=(10, 10, 10), spacing=(3.0, 2.0, 4.0), origin=(-15.0, -10.0, -20.0))
    initial_file = tmp_path / "InitialTransform.txt"
    initial_file.write_text(initial_transform_text(affine, fixed) + _RESAMPLE_LINES)
    assert np.abs(_ours(affine) - _transformix(initial_file, tmp_path)).max() < 1e-4
    assert np.allclose(transform_matrix_from_parameter_file(initial_file), to_matrix(affine), atol=1e-9)

    euler_file = _euler_file(tmp_path / "TransformParameters.0.txt", angles=(-0.1, 0.25, 0.05),
                             translation=(-6.0, 2.0, 1.0), center=(3.0, 4.0, -5.0), initial=str(initial_file))
    total = transform_from_parameter_file(euler_file, rigid=False)
    reference = _transformix(euler_file, tmp_path)
    assert np.abs(_ours(total) - reference).max() < 1e-4
    # elastix applies the initial transform first: T(x) = T_euler(T_initial(x)).
    euler = sitk.Euler3DTransform((3.0, 4.0, -5.0), -0.1, 0.25, 0.05, (-6.0, 2.0, 1.0))
    composed = np.array([euler.TransformPoint(affine.TransformPoint(tuple(p))) for p in POINTS])
    assert np.abs(composed - reference).max() < 1e-4
    assert np.abs(np.array([affine.TransformPoint(euler.TransformPoint(tuple(p))) for p in POINTS])
                  - reference).max() > 1.0  # the other order is measurably different


def test_rigid_chain_flattens_to_one_euler(tmp_path):
    first = _euler_file(tmp_path / "first.txt", angles=(0.1, 0.0, -0.2), translation=(1, 2, 3),
                        center=(0, 0, 0))
    second = _euler_file(tmp_path / "second.txt", angles=(0.0, 0.3, 0.1), translation=(-4, 0, 2),
                         center=(5, 5, 5), initial=str(first))
    flat = transform_from_parameter_file(second, rigid=True)
    assert isinstance(flat, sitk.Euler3DTransform)
    a = sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, -0.2, (1, 2, 3))
    b = sitk.Euler3DTransform((5, 5, 5), 0.0, 0.3, 0.1, (-4, 0, 2))
    expected = np.array([b.TransformPoint(a.TransformPoint(tuple(p))) for p in POINTS])
    assert np.abs(_ours(flat) - expected).max() < 1e-9


def test_unsupported_or_broken_result_files_raise_engine_error(tmp_path):
    bspline = tmp_path / "b.txt"
    bspline.write_text('(Transform "BSplineTransform")\n(TransformParameters 1 2 3)\n')
    with pytest.raises(EngineError, match="expected a linear one"):
        transform_from_parameter_file(bspline, rigid=True)
    short = tmp_path / "s.txt"
    short.write_text('(Transform "EulerTransform")\n(TransformParameters 1 2)\n'
                     '(CenterOfRotationPoint 0 0 0)\n')
    with pytest.raises(EngineError, match="TransformParameters"):
        transform_from_parameter_file(short, rigid=True)
    dangling = _euler_file(tmp_path / "d.txt", angles=(0, 0, 0), translation=(0, 0, 0), center=(0, 0, 0),
                           initial=str(tmp_path / "missing.txt"))
    with pytest.raises(EngineError, match="missing"):
        transform_from_parameter_file(dangling, rigid=True)


def test_initial_transform_must_be_linear():
    field = sitk.DisplacementFieldTransform(sitk.Image([4, 4, 4], sitk.sitkVectorFloat64, 3))
    with pytest.raises(InputError, match="linear"):
        initial_transform_text(field, _image())


# --- log parsing ----------------------------------------------------------------------------------


def test_progress_parser_weights_levels_by_iterations():
    parser = ProgressParser((200, 100, 100))
    assert parser.feed("0\t-0.5\t0.0\t1.0\t0.1\t1.0") is None  # before any "Resolution:" line
    assert parser.feed("Resolution: 0")[0] == 0.0
    fraction, message = parser.feed("99\t-0.9\t0.0\t1.0\t0.1\t1.0")
    assert fraction == pytest.approx(100 / 400) and "level 1/3" in message and "100/200" in message
    assert parser.feed("Resolution: 2")[0] == pytest.approx(300 / 400)
    assert parser.feed("99\t-0.9\t0.0\t1.0\t0.1\t1.0")[0] == pytest.approx(1.0)
    assert parser.feed("Time spent in resolution 2 (ITK initialization and iterating): 0.1 s.") is None


def test_elastix_messages_pick_its_own_sentences():
    log = ["Installing all components.", "Error: ", "Foo(index 3) - This component is not installed!",
           "ERROR: error occurred while creating Metric 0.", "itk::ExceptionObject (0x1)",
           "Description: ITK ERROR: ElastixMain(0x2): The following component could not be created: Foo",
           "ERROR:", "One or more components could not be created.", "Errors occurred!"]
    said = elastix_messages(log)
    assert said[0] == "Foo(index 3) - This component is not installed!"
    assert "ITK ERROR: ElastixMain(0x2): The following component could not be created: Foo" in said
    assert "One or more components could not be created." in said
    assert "Errors occurred!" not in said and "Installing all components." not in said


# --- finding the program --------------------------------------------------------------------------


def _fake_program(folder: Path, body: str, name: str = "elastix") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / name
    program.write_text("#!/bin/sh\n" + body + "\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return program


def test_registry_returns_the_elastix_adapter():
    assert get_engine("elastix").name == "elastix"


def test_lookup_order(tmp_path, monkeypatch):
    # Fake programs stand in for installations we cannot have side by side here; they only print a
    # version, which is all the lookup reads.
    monkeypatch.delenv("ONECLICK_ELASTIX", raising=False)
    explicit = _fake_program(tmp_path / "explicit", 'echo "elastix version: 9.9.1"')
    from_env = _fake_program(tmp_path / "env", 'echo "elastix version: 9.9.2"')
    bundled = _fake_program(tmp_path / "Slicer" / "bin", 'echo "elastix version: 9.9.3"')
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "nothing-here"), os.environ.get("PATH", "")]))
    dirs = (str(tmp_path / "empty"), str(bundled.parent))
    engine = ElastixEngine(EngineSettings(executable=explicit, search_dirs=dirs))
    monkeypatch.setenv("ONECLICK_ELASTIX", str(from_env))
    assert engine.executable() == explicit
    assert "9.9.1" in engine.availability().detail
    assert ElastixEngine(EngineSettings(search_dirs=dirs)).executable() == from_env
    monkeypatch.delenv("ONECLICK_ELASTIX")
    bundled_engine = ElastixEngine(EngineSettings(search_dirs=dirs))
    assert bundled_engine.executable() == bundled
    availability = bundled_engine.availability()
    assert availability.available and availability.detail == f"elastix 9.9.3 at {bundled}"
    if shutil.which("elastix"):
        assert ElastixEngine(EngineSettings()).executable() == Path(shutil.which("elastix"))


def test_bundled_program_gets_its_library_folder(tmp_path, monkeypatch):
    # A SlicerElastix-like layout: bin/elastix beside lib/. The fake prints its library path.
    (tmp_path / "lib").mkdir()
    program = _fake_program(tmp_path / "bin", 'echo "elastix version: $LD_LIBRARY_PATH"')
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
    detail = ElastixEngine(EngineSettings(executable=program)).availability().detail
    assert detail.startswith(f"elastix {tmp_path / 'lib'}{os.pathsep}/somewhere at ")


def test_missing_program_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("ONECLICK_ELASTIX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    engine = ElastixEngine(EngineSettings(search_dirs=(str(tmp_path),)))
    availability = engine.availability()
    assert not availability.available and "elastix was not found" in availability.detail
    with pytest.raises(EngineUnavailableError, match="ONECLICK_ELASTIX"):
        engine.executable()
    monkeypatch.setenv("ONECLICK_ELASTIX", str(tmp_path / "no-such-elastix"))
    assert "not an executable file" in engine.availability().detail
    not_elastix = _fake_program(tmp_path / "x", "echo hello")
    assert "did not print an elastix version" in ElastixEngine(
        EngineSettings(executable=not_elastix)).availability().detail


@pytest.mark.engine
def test_installed_elastix_is_available():
    if shutil.which("elastix") is None:
        pytest.skip("elastix is not on PATH (Debian/Ubuntu: apt install elastix)")
    availability = ElastixEngine(EngineSettings()).availability()
    assert availability.available, availability.detail
    assert re.match(r"elastix \d+\.\d+", availability.detail)


def test_euler_angles_round_trip_through_flatten(tmp_path):
    # The flattened Euler keeps elastix's centre and reproduces its angles.
    file = _euler_file(tmp_path / "t.txt", angles=(math.radians(8), math.radians(-6), math.radians(10)),
                       translation=(6, -8, 5), center=(0.5, 21.0, 9.0))
    flat = transform_from_parameter_file(file, rigid=True)
    assert np.allclose(flat.GetParameters(), (math.radians(8), math.radians(-6), math.radians(10), 6, -8, 5))
