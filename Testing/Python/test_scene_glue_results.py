"""Registration results in the scene (real MRML from ``slicer-core``, real pipeline results).

Results come from the core itself: ``judge_transform`` with the ground-truth transform of a synthetic
pair (exact, fast) or a real ``register`` run. Failures are real too: an engine whose program exits
with an error, a cancel request, a result the glue cannot use.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
pipeline = pytest.importorskip("OneClickRegistrationLib.pipeline")

import OneClickRegistrationSceneGlue as glue  # noqa: E402
from OneClickRegistrationLib import synthetic  # noqa: E402
from OneClickRegistrationLib.engines import configure_engine, engine_settings  # noqa: E402
from OneClickRegistrationLib.engines.base import EngineSettings  # noqa: E402
from OneClickRegistrationLib.errors import CancelledError, EngineError, InputError  # noqa: E402

pytestmark = pytest.mark.slicer

F3 = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def pair() -> synthetic.SyntheticPair:
    return synthetic.make_pair("T1", "T2", rotation_deg=(3.0, -4.0, 10.0), translation_mm=(8.0, -5.0, 3.0),
                               coarsen=3.0, source="analytic", seed=2)


@pytest.fixture(scope="module")
def truth_result(pair):
    return pipeline.judge_transform(pair.fixed, pair.moving, pair.truth, fixed_name="T1", moving_name="T2")


@pytest.fixture
def scene_with_pair(pair):
    scene = slicer.vtkMRMLScene()
    fixed = glue.addVolumeNodeFromImage(scene, pair.fixed, "T1 fixed")
    moving = glue.addVolumeNodeFromImage(scene, pair.moving, "T2 moving")
    return scene, fixed, moving


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return glue.arrayFromVtkMatrix(matrix)


def voxels(node) -> np.ndarray:
    return sitk.GetArrayFromImage(glue.imageFromVolumeNode(node))


def state(scene, moving):
    nodes = frozenset(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    layers = tuple((c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), c.GetForegroundOpacity())
                   for c in glue._nodesByClass(scene, "vtkMRMLSliceCompositeNode"))
    return nodes, moving.GetTransformNodeID(), layers, ijk_to_ras(moving).tobytes(), voxels(moving).tobytes()


def test_result_places_moving_under_a_linear_transform_and_inputs_stay_untouched(scene_with_pair, pair,
                                                                                 truth_result):
    scene, fixed, moving = scene_with_pair
    fixed_before, moving_before = (ijk_to_ras(fixed), voxels(fixed)), (ijk_to_ras(moving), voxels(moving))
    applied = glue.applyResult(scene, fixed, moving, truth_result)
    node = moving.GetParentTransformNode()
    assert node is applied.transform_node and node.IsA("vtkMRMLLinearTransformNode")
    # Not hardened, nothing else changed.
    np.testing.assert_array_equal(ijk_to_ras(moving), moving_before[0])
    np.testing.assert_array_equal(voxels(moving), moving_before[1])
    np.testing.assert_array_equal(ijk_to_ras(fixed), fixed_before[0])
    np.testing.assert_array_equal(voxels(fixed), fixed_before[1])
    assert fixed.GetTransformNodeID() is None
    # World (fixed) points map to the moving volume's frame exactly as the ground truth says.
    to_moving = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, node, to_moving)
    for lps in pair.brain_points[:50]:
        ras = F3 @ lps
        moved = F3 @ np.array(to_moving.TransformPoint(*ras))
        np.testing.assert_allclose(moved, pair.truth.TransformPoint(lps), atol=1e-6)
    assert node.GetAttribute("OneClickRegistration.Verdict") == truth_result.verdict.label


def test_hardening_the_moving_volume_lines_it_up_with_the_fixed_volume(scene_with_pair, pair, truth_result):
    scene, fixed, moving = scene_with_pair
    glue.applyResult(scene, fixed, moving, truth_result)
    slicer.vtkSlicerTransformLogic.hardenTransform(moving)
    assert moving.GetParentTransformNode() is None
    hardened = glue.imageFromVolumeNode(moving)
    # Sampling the hardened volume on the fixed grid must equal resampling the original moving image
    # through the ground truth: the same data at the same physical points.
    on_fixed_grid = sitk.GetArrayFromImage(sitk.Resample(hardened, pair.fixed, sitk.Transform(),
                                                         sitk.sitkLinear, -1.0, sitk.sitkFloat32))
    expected = sitk.GetArrayFromImage(sitk.Resample(pair.moving, pair.fixed, pair.truth, sitk.sitkLinear,
                                                    -1.0, sitk.sitkFloat32))
    inside = (on_fixed_grid != -1.0) & (expected != -1.0)
    assert inside.mean() > 0.5
    assert (on_fixed_grid == -1.0).sum() == pytest.approx((expected == -1.0).sum(), rel=0.02)
    np.testing.assert_allclose(on_fixed_grid[inside], expected[inside], atol=0.5)  # int16-scale voxels
    # And the hardened voxel corners sit where the truth sends the fixed points.
    m = ijk_to_ras(moving)
    original = pair.moving
    size = original.GetSize()
    for ijk in [(0, 0, 0), tuple(s - 1 for s in size), tuple(s // 2 for s in size)]:
        world_lps = F3 @ (m @ np.array([*ijk, 1.0]))[:3]
        np.testing.assert_allclose(pair.truth.TransformPoint(world_lps),
                                   original.TransformIndexToPhysicalPoint(ijk), atol=1e-6)


def test_results_table_gets_one_row_per_registration(scene_with_pair, truth_result):
    scene, fixed, moving = scene_with_pair
    first = glue.applyResult(scene, fixed, moving, truth_result)
    second = glue.applyResult(scene, fixed, moving, truth_result)
    table = first.table_node
    assert second.table_node is table and glue.resultsTableNode(scene, create=False) is table
    assert table.GetNumberOfRows() == 2 and (first.table_row, second.table_row) == (0, 1)
    vtk_table = table.GetTable()
    row = {vtk_table.GetColumn(c).GetName(): vtk_table.GetValue(1, c).ToString()
           for c in range(vtk_table.GetNumberOfColumns())}
    assert row["Fixed"] == "T1 fixed" and row["Moving"] == "T2 moving"
    assert (row["Fixed modality"], row["Moving modality"]) == ("T1", "T2")
    assert row["Preset"] == truth_result.preset.name and row["Engine"] == truth_result.engine
    assert row["Verdict"] == truth_result.verdict.label
    assert vtk_table.GetColumnByName("Score after").GetValue(1) == truth_result.score_after.value
    assert vtk_table.GetColumnByName("Score before").GetValue(1) == truth_result.score_before.value
    assert vtk_table.GetColumnByName("Time (s)").GetValue(1) == truth_result.elapsed_s
    assert row["Transform"] == second.transform_node.GetName()
    # The second transform replaced the first as the moving volume's parent.
    assert moving.GetTransformNodeID() == second.transform_node.GetID()


def test_slice_views_show_fixed_under_the_registered_volume(scene_with_pair, pair, truth_result):
    scene, fixed, moving = scene_with_pair
    assert glue.showInSliceViews(scene, fixed, moving) == 0  # a bare scene has no views: nothing to do
    composites = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    applied = glue.applyResult(scene, fixed, moving, truth_result, createResampledVolume=True)
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == fixed.GetID()
        assert composite.GetForegroundVolumeID() == applied.resampled_node.GetID()
        assert composite.GetForegroundOpacity() == 0.5


def test_resampled_volume_has_the_fixed_geometry_and_the_registered_voxels(scene_with_pair, truth_result):
    scene, fixed, moving = scene_with_pair
    applied = glue.applyResult(scene, fixed, moving, truth_result, createResampledVolume=True)
    resampled = applied.resampled_node
    np.testing.assert_allclose(ijk_to_ras(resampled), ijk_to_ras(fixed), atol=1e-12)
    np.testing.assert_array_equal(voxels(resampled), sitk.GetArrayFromImage(truth_result.registered))
    assert resampled.GetTransformNodeID() is None


def test_a_result_the_glue_cannot_use_leaves_the_scene_as_it_was(scene_with_pair, truth_result):
    scene, fixed, moving = scene_with_pair
    initial = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "manual start")
    moving.SetAndObserveTransformNodeID(initial.GetID())
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    composite.SetBackgroundVolumeID(moving.GetID())
    composite.SetForegroundOpacity(0.2)
    before = state(scene, moving)
    # Fails after the transform node was added and assigned: the resampled image is missing.
    broken = dataclasses.replace(truth_result, registered=None)
    with pytest.raises(AttributeError):
        glue.applyResult(scene, fixed, moving, broken, createResampledVolume=True)
    assert state(scene, moving) == before
    # A non-linear transform is refused before anything is added.
    field = sitk.DisplacementFieldTransform(sitk.Image(4, 4, 4, sitk.sitkVectorFloat64))
    with pytest.raises(InputError, match="linear"):
        glue.applyResult(scene, fixed, moving, dataclasses.replace(truth_result, transform=field))
    assert state(scene, moving) == before


@pytest.fixture
def broken_elastix(tmp_path):
    # An installed but broken elastix: it answers --version, then every registration exits with an
    # error. The failure goes through the real adapter and process runner; only the program is fake.
    program = tmp_path / "elastix"
    program.write_text('#!/bin/sh\n'
                       'if [ "$1" = "--version" ]; then echo "elastix version: 5.0.1"; exit 0; fi\n'
                       'echo "itk::ExceptionObject: broken install" >&2\nexit 3\n', encoding="utf-8")
    program.chmod(0o755)
    saved = engine_settings("elastix")
    configure_engine("elastix", EngineSettings(executable=str(program)))
    yield
    configure_engine("elastix", saved)


def test_engine_failure_leaves_the_scene_unchanged(scene_with_pair, broken_elastix):
    scene, fixed, moving = scene_with_pair
    scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    before = state(scene, moving)
    with pytest.raises(EngineError):
        glue.registerNodes(fixed, moving, engine="elastix", recover=False)
    assert state(scene, moving) == before


def test_cancel_leaves_the_scene_unchanged(scene_with_pair):
    scene, fixed, moving = scene_with_pair
    before = state(scene, moving)
    with pytest.raises(CancelledError):
        glue.registerNodes(fixed, moving, cancel=lambda: True)
    assert state(scene, moving) == before


@pytest.mark.engine
def test_register_nodes_aligns_a_synthetic_pair_in_millimetres(scene_with_pair, pair):
    _, fixed, moving = scene_with_pair
    progress: list[float] = []
    applied = glue.registerNodes(fixed, moving, engine="simpleitk",
                                 progress=lambda fraction, message: progress.append(fraction))
    # The transform as the scene holds it, read back from the nodes, against the ground truth.
    in_scene = glue.transformBetweenVolumes(fixed, moving.GetParentTransformNode())
    error = synthetic.target_registration_error(in_scene, pair.truth, pair.brain_points)
    print(f"TRE through the scene: mean {error.mean():.2f} mm, max {error.max():.2f} mm; "
          f"verdict {applied.result.verdict.label}; {applied.result.elapsed_s:.1f} s")
    assert error.mean() < 1.5 and error.max() < 3.0
    assert applied.result.verdict.label == "good"
    assert progress and progress == sorted(progress)
    assert applied.table_node.GetNumberOfRows() == 1


def test_summary_says_the_verdict_in_plain_words_and_escapes_text(truth_result):
    html_text = glue.resultSummaryHtml(truth_result)
    word = glue.VERDICT_WORDS[truth_result.verdict.label][0]
    assert word in html_text
    assert f"{truth_result.score_after.value:.4f}" in html_text
    assert truth_result.preset.name in html_text
    tricky = dataclasses.replace(truth_result, verdict=dataclasses.replace(
        truth_result.verdict, label="failed", reasons=("overlap < 30% & <b>no</b> head",)))
    text = glue.resultSummaryHtml(tricky, judged=True)
    assert "Failed" in text and "do not use this result" in text
    assert "&lt;b&gt;no&lt;/b&gt;" in text and "<b>no</b>" not in text
    assert "Engine:" not in text  # a judged transform has no engine run


def test_fixed_volume_under_a_transform_keeps_the_pair_aligned_in_world_coordinates(scene_with_pair, pair,
                                                                                    truth_result):
    scene, fixed, moving = scene_with_pair
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "patient position")
    shift = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.1, -0.2, 0.3, (10.0, -20.0, 5.0))
    parent.SetMatrixTransformToParent(glue.vtkMatrixFromArray(glue.rasMatrixFromTransform(shift)))
    fixed.SetAndObserveTransformNodeID(parent.GetID())
    applied = glue.applyResult(scene, fixed, moving, truth_result)
    assert applied.transform_node.GetTransformNodeID() == parent.GetID()
    # A fixed voxel and the moving point the truth pairs it with land on the same world point.
    fixed_to_world, moving_to_world = vtk.vtkGeneralTransform(), vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, fixed_to_world)
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(applied.transform_node, None, moving_to_world)
    for lps in pair.brain_points[:20]:
        fixed_world = fixed_to_world.TransformPoint(*(F3 @ lps))
        moving_world = moving_to_world.TransformPoint(*(F3 @ np.array(pair.truth.TransformPoint(lps))))
        np.testing.assert_allclose(moving_world, fixed_world, atol=1e-6)
