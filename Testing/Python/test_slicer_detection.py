"""The panel's modality label: detection on a voxel sample, cached per node and change (real MRML)."""

from __future__ import annotations

import pytest

slicer = pytest.importorskip("slicer")

from OneClickRegistrationLib import synthetic  # noqa: E402
from OneClickRegistrationLib.modality import MAX_SAMPLES, detect_modality  # noqa: E402
from OneClickRegistrationSlicer import convert  # noqa: E402
from OneClickRegistrationSlicer.detection import DetectionCache, voxelSample  # noqa: E402

pytestmark = pytest.mark.slicer


@pytest.mark.parametrize("modality", ["CT", "T1"])
def test_the_sample_gives_the_whole_volume_answer(modality):
    pair = synthetic.make_pair("T1", modality, rotation_deg=(0.0, 0.0, 5.0), translation_mm=(2.0, 0.0, 0.0),
                               coarsen=1.5, source="analytic")
    scene = slicer.vtkMRMLScene()
    node = convert.addVolumeNodeFromImage(scene, pair.moving, "series 7")  # a name that says nothing
    sample = voxelSample(node, maxVoxels=20_000)
    assert sample.GetNumberOfPixels() <= 20_000 < pair.moving.GetNumberOfPixels()
    whole = detect_modality(pair.moving, name="series 7")
    sampled = DetectionCache().detect(node, {})
    assert (sampled.modality, sampled.source) == (whole.modality, whole.source)
    assert voxelSample(node).GetNumberOfPixels() <= MAX_SAMPLES


def test_the_answer_is_kept_until_the_node_or_its_voxels_change():
    pair = synthetic.make_pair("T1", "CT", coarsen=3.0, source="analytic")
    scene = slicer.vtkMRMLScene()
    node = convert.addVolumeNodeFromImage(scene, pair.moving, "head")
    cache = DetectionCache()
    first = cache.detect(node, {})
    assert cache.detect(node, {}) is first
    assert cache.detect(node, {"DICOM.Modality": "MR"}) is not first  # other metadata, new answer
    node.SetName("head T2")
    renamed = cache.detect(node, {})
    assert renamed is not first and cache.detect(node, {}) is renamed
    node.GetImageData().Modified()  # e.g. the voxels were edited
    assert cache.detect(node, {}) is not renamed
