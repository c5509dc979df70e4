"""Registration outcomes in the scene (real MRML from ``slicer-core``, real outputs read back from files).

Outcomes come from the core itself: ``judge_transform`` with the ground-truth transform of a synthetic
pair, written by the command line's own output writer and read back as the panel reads them. Failures
are real too: a result the scene cannot use, and (see ``test_slicer_child_job.py``) failing children.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
pipeline = pytest.importorskip("OneClickRegistrationLib.pipeline")

from OneClickRegistrationLib import synthetic  # noqa: E402
from OneClickRegistrationLib.errors import EngineError, InputError  # noqa: E402
from OneClickRegistrationLib.outputs import write_outputs  # noqa: E402
from OneClickRegistrationSlicer import convert as glue  # noqa: E402
from OneClickRegistrationSlicer.outcome import readRegistrationOutputs  # noqa: E402
from OneClickRegistrationSlicer.results_table import resultsTableNode  # noqa: E402
from OneClickRegistrationSlicer.scene import SceneChanges, _nodesByClass, applyOutcome  # noqa: E402
from OneClickRegistrationSlicer.summary import resultSummaryHtml  # noqa: E402

pytestmark = pytest.mark.slicer

F3 = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def pair() -> synthetic.SyntheticPair:
    return synthetic.make_pair("T1", "T2", rotation_deg=(3.0, -4.0, 10.0), translation_mm=(8.0, -5.0, 3.0),
                               coarsen=3.0, source="analytic", seed=2)


@pytest.fixture(scope="module")
def truth_result(pair, tmp_path_factory):
    """The ground truth judged by the core, written as the command line writes it and read back."""
    judged = pipeline.judge_transform(pair.fixed, pair.moving, pair.truth, fixed_name="T1", moving_name="T2")
    outdir = tmp_path_factory.mktemp("outputs")
    write_outputs(judged, pair.fixed, outdir)
    return readRegistrationOutputs(outdir)


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
                   for c in _nodesByClass(scene, "vtkMRMLSliceCompositeNode"))
    return nodes, moving.GetTransformNodeID(), layers, ijk_to_ras(moving).tobytes(), voxels(moving).tobytes()


def test_result_places_moving_under_a_linear_transform_and_inputs_stay_untouched(scene_with_pair, pair,
                                                                                 truth_result):
    scene, fixed, moving = scene_with_pair
    fixed_before, moving_before = (ijk_to_ras(fixed), voxels(fixed)), (ijk_to_ras(moving), voxels(moving))
    applied = applyOutcome(scene, fixed, moving, truth_result)
    node = moving.GetParentTransformNode()
    assert node is applied.transformNode and node.IsA("vtkMRMLLinearTransformNode")
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
    assert node.GetAttribute("OneClickRegistration.Verdict") == truth_result.verdict


def test_hardening_the_moving_volume_lines_it_up_with_the_fixed_volume(scene_with_pair, pair, truth_result):
    scene, fixed, moving = scene_with_pair
    applyOutcome(scene, fixed, moving, truth_result)
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
    first = applyOutcome(scene, fixed, moving, truth_result)
    second = applyOutcome(scene, fixed, moving, truth_result)
    table = first.tableNode
    assert second.tableNode is table and resultsTableNode(scene, create=False) is table
    assert table.GetNumberOfRows() == 2 and (first.tableRow, second.tableRow) == (0, 1)
    vtk_table = table.GetTable()
    row = {vtk_table.GetColumn(c).GetName(): vtk_table.GetValue(1, c).ToString()
           for c in range(vtk_table.GetNumberOfColumns())}
    assert row["Fixed"] == "T1 fixed" and row["Moving"] == "T2 moving"
    assert (row["Fixed modality"], row["Moving modality"]) == ("T1", "T2")
    assert row["Preset"] == truth_result.preset and row["Engine"] == truth_result.engine
    assert row["Verdict"] == truth_result.verdict
    assert vtk_table.GetColumnByName("Score after").GetValue(1) == truth_result.scoreAfter
    assert vtk_table.GetColumnByName("Score before").GetValue(1) == truth_result.scoreBefore
    assert vtk_table.GetColumnByName("Time (s)").GetValue(1) == truth_result.elapsedS
    assert row["Transform"] == second.transformNode.GetName()
    # The second transform replaced the first as the moving volume's parent.
    assert moving.GetTransformNodeID() == second.transformNode.GetID()


def test_slice_views_show_fixed_under_the_registered_volume(scene_with_pair, pair, truth_result):
    scene, fixed, moving = scene_with_pair
    changes = SceneChanges(scene)
    changes.showInSliceViews(fixed, moving)  # a bare scene has no views: nothing to do or undo
    assert changes.undoSteps == []
    composites = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    applied = applyOutcome(scene, fixed, moving, truth_result, createResampledVolume=True)
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == fixed.GetID()
        assert composite.GetForegroundVolumeID() == applied.resampledNode.GetID()
        assert composite.GetForegroundOpacity() == 0.5


def test_resampled_volume_has_the_fixed_geometry_and_the_registered_voxels(scene_with_pair, truth_result):
    scene, fixed, moving = scene_with_pair
    applied = applyOutcome(scene, fixed, moving, truth_result, createResampledVolume=True)
    resampled = applied.resampledNode
    np.testing.assert_allclose(ijk_to_ras(resampled), ijk_to_ras(fixed), atol=1e-12)
    np.testing.assert_array_equal(voxels(resampled), sitk.GetArrayFromImage(truth_result.registeredImage()))
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
    broken = dataclasses.replace(truth_result, registeredFile=None)
    with pytest.raises(EngineError, match="no resampled volume"):
        applyOutcome(scene, fixed, moving, broken, createResampledVolume=True)
    assert state(scene, moving) == before
    # A non-linear transform is refused before anything is added.
    field = sitk.DisplacementFieldTransform(sitk.Image(4, 4, 4, sitk.sitkVectorFloat64))
    with pytest.raises(InputError, match="linear"):
        applyOutcome(scene, fixed, moving, dataclasses.replace(truth_result, transform=field))
    assert state(scene, moving) == before


def test_summary_says_the_verdict_in_plain_words_and_escapes_text(truth_result):
    html_text = resultSummaryHtml(truth_result)
    assert {"good": "Good", "questionable": "Questionable", "failed": "Failed"}[truth_result.verdict] in html_text
    assert f"{truth_result.scoreAfter:.4f}" in html_text
    assert truth_result.presetDescription in html_text
    tricky = dataclasses.replace(truth_result, verdict="failed", reasons=("overlap < 30% & <b>no</b> head",))
    text = resultSummaryHtml(tricky, judged=True)
    assert "Failed" in text and "do not use this result" in text
    assert "&lt;b&gt;no&lt;/b&gt;" in text and "<b>no</b>" not in text
    assert "Engine:" not in text  # a judged transform has no engine run
    # Every fixed word goes through the translation function.
    marked = resultSummaryHtml(truth_result, translate=lambda text: f"[{text}]")
    assert "[Preset: " in marked and "[higher is better]" in marked and "[Good]" in marked


def test_fixed_volume_under_a_transform_keeps_the_pair_aligned_in_world_coordinates(scene_with_pair, pair,
                                                                                    truth_result):
    scene, fixed, moving = scene_with_pair
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "patient position")
    shift = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.1, -0.2, 0.3, (10.0, -20.0, 5.0))
    parent.SetMatrixTransformToParent(glue.vtkMatrixFromArray(glue.rasMatrixFromTransform(shift)))
    fixed.SetAndObserveTransformNodeID(parent.GetID())
    applied = applyOutcome(scene, fixed, moving, truth_result)
    assert applied.transformNode.GetTransformNodeID() == parent.GetID()
    # A fixed voxel and the moving point the truth pairs it with land on the same world point.
    fixed_to_world, moving_to_world = vtk.vtkGeneralTransform(), vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, fixed_to_world)
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(applied.transformNode, None, moving_to_world)
    for lps in pair.brain_points[:20]:
        fixed_world = fixed_to_world.TransformPoint(*(F3 @ lps))
        moving_world = moving_to_world.TransformPoint(*(F3 @ np.array(pair.truth.TransformPoint(lps))))
        np.testing.assert_allclose(moving_world, fixed_world, atol=1e-6)


def test_a_failure_puts_back_a_chosen_output_transform_and_an_existing_table(scene_with_pair, truth_result):
    scene, fixed, moving = scene_with_pair
    applyOutcome(scene, fixed, moving, truth_result)  # the scene now has a results table with one row
    table = resultsTableNode(scene, create=False)
    chosen = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "chosen")
    shift = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, 0.2, (1.0, 2.0, 3.0))
    chosen.SetMatrixTransformFromParent(glue.vtkMatrixFromArray(glue.rasMatrixFromTransform(shift)))
    chosen.SetAttribute("OneClickRegistration.Verdict", "from before")
    matrix_before = glue.arrayFromVtkMatrix(chosen.GetMatrixTransformFromParent())
    before = state(scene, moving)
    changes = SceneChanges(scene)
    changes.setMatrixFromParent(chosen, np.eye(4))
    changes.setAttribute(chosen, "OneClickRegistration.Verdict", "good")
    changes.setAttribute(chosen, "OneClickRegistration.Engine", "elastix")
    changes.setParentTransform(moving, chosen.GetID())
    changes.appendRow(table, {"Fixed": "x"})
    assert table.GetNumberOfRows() == 2
    changes.undo()
    assert table.GetNumberOfRows() == 1
    np.testing.assert_array_equal(glue.arrayFromVtkMatrix(chosen.GetMatrixTransformFromParent()), matrix_before)
    assert chosen.GetAttribute("OneClickRegistration.Verdict") == "from before"
    assert chosen.GetAttribute("OneClickRegistration.Engine") is None
    assert state(scene, moving) == before
    # The same through applyOutcome: it fails after changing the chosen transform (no resampled volume).
    broken = dataclasses.replace(truth_result, registeredFile=None)
    with pytest.raises(EngineError):
        applyOutcome(scene, fixed, moving, broken, outputTransformNode=chosen, createResampledVolume=True)
    np.testing.assert_array_equal(glue.arrayFromVtkMatrix(chosen.GetMatrixTransformFromParent()), matrix_before)
    assert state(scene, moving) == before and table.GetNumberOfRows() == 1
