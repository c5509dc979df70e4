"""The panel's "detected: ..." label: modality detection on a voxel sample, cached per node and change.

The intensity rules read a strided sample of at most about a million voxels anyway, so only that
sample is copied (from a view of the node's array), never the whole volume; the answer is kept until
the node or its voxels change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk
from vtk.util import numpy_support

from OneClickRegistrationLib.modality import MAX_SAMPLES, ModalityEvidence, detect_modality


def voxelSample(volumeNode: Any, maxVoxels: int = MAX_SAMPLES) -> sitk.Image:
    """A strided sample of the node's voxels (a view is strided, only the sample is copied)."""
    imageData = volumeNode.GetImageData()
    nx, ny, nz = imageData.GetDimensions()
    scalars = imageData.GetPointData().GetScalars()
    view = numpy_support.vtk_to_numpy(scalars).reshape(nz, ny, nx, -1)[..., 0]
    step = max(1, math.ceil((nx * ny * nz / maxVoxels) ** (1.0 / 3.0)))
    sample = sitk.GetImageFromArray(np.ascontiguousarray(view[::step, ::step, ::step]))
    sample.SetSpacing(tuple(float(s) * step for s in volumeNode.GetSpacing()))
    return sample


class DetectionCache:
    """``detect(node, metadata)``: the node's modality evidence, recomputed only when the node changed."""

    def __init__(self) -> None:
        self._answers: dict[str, tuple[tuple[Any, ...], ModalityEvidence]] = {}

    def detect(self, volumeNode: Any, metadata: Mapping[str, str]) -> ModalityEvidence:
        imageData = volumeNode.GetImageData()
        key = (volumeNode.GetMTime(), imageData.GetMTime(), volumeNode.GetName(), tuple(sorted(metadata.items())))
        cached = self._answers.get(volumeNode.GetID())
        if cached is not None and cached[0] == key:
            return cached[1]
        evidence = detect_modality(voxelSample(volumeNode), name=volumeNode.GetName(), metadata=metadata)
        self._answers[volumeNode.GetID()] = (key, evidence)
        return evidence

    def clear(self) -> None:
        self._answers.clear()
