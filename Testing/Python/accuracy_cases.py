"""Small pairs with known truth on the grids where registrations go wrong, for the accuracy tests.

Coarse heads (2-2.5 mm) keep each engine run to seconds; the grids are the clinical ones that broke:
a fine moving grid under a coarse fixed one, thick slices, an oblique grid and a flipped one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import SimpleITK as sitk

from OneClickRegistrationLib import synthetic

HEAD_MM = 2.5  # resolution of the synthetic head the images are sampled from


def _tilted_about_x(angle_deg: float) -> tuple[float, ...]:
    a = math.radians(angle_deg)
    return (1.0, 0.0, 0.0, 0.0, math.cos(a), -math.sin(a), 0.0, math.sin(a), math.cos(a))


@dataclass(frozen=True)
class GridCase:
    description: str
    fixed: str  # modality
    moving: str
    fixed_spacing: tuple[float, float, float]
    moving_spacing: tuple[float, float, float]
    moving_direction: tuple[float, ...] | None
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]


GRID_CASES: dict[str, GridCase] = {
    "fine_vs_coarse": GridCase("T2 with 1.25 mm in-plane voxels (even-sized) under a 2.5 mm T1",
                               "T1", "T2", (2.5, 2.5, 2.5), (1.25, 1.25, 2.5), None, (4.0, -3.0, 6.0),
                               (5.0, -4.0, 3.0)),
    "thick_slices": GridCase("CT with 7.5 mm slices against a 2.5 mm T1", "T1", "CT", (2.5, 2.5, 2.5),
                             (2.0, 2.0, 7.5), None, (-6.0, 4.0, -5.0), (-4.0, 6.0, 5.0)),
    "oblique": GridCase("FLAIR on a grid tilted 20 degrees about left-right, against a T2", "T2", "FLAIR",
                        (2.5, 2.5, 2.5), (2.25, 2.25, 5.0), _tilted_about_x(20.0), (5.0, 6.0, -4.0),
                        (3.0, 5.0, -6.0)),
    "flipped": GridCase("T1 stored with its first axis reversed, against a CT with 5 mm slices", "CT", "T1",
                        (2.0, 2.0, 5.0), (2.5, 2.5, 2.5), (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
                        (-5.0, -5.0, 7.0), (6.0, 3.0, -4.0)),
}


@cache
def grid_case(name: str) -> synthetic.SyntheticPair:
    """The pair of ``GRID_CASES[name]`` (built once per session)."""
    spec = GRID_CASES[name]
    subject = synthetic.make_subject(resolution_mm=HEAD_MM)
    center = subject.head_center
    truth = synthetic.rigid_transform(spec.rotation_deg, spec.translation_mm, center)
    fixed_grid = synthetic.Grid.centered(center, (200.0, 230.0, 200.0), spec.fixed_spacing)
    # The moving field of view is off the moved head by a few mm, so the headers do not give the answer away.
    moved_center = tuple(np.asarray(truth.TransformPoint(center)) + np.array([4.0, -3.0, 5.0]))
    moving_grid = synthetic.Grid.centered(moved_center, (200.0, 220.0, 180.0), spec.moving_spacing,
                                          spec.moving_direction)
    seed = sorted(GRID_CASES).index(name)
    fixed = synthetic.render(spec.fixed, fixed_grid, resolution_mm=HEAD_MM, seed=seed)
    moving = synthetic.render(spec.moving, moving_grid, image_to_reference=truth.GetInverse(),
                              resolution_mm=HEAD_MM, seed=seed + 1)
    return synthetic.SyntheticPair(fixed=fixed, moving=moving, truth=truth,
                                   brain_points=synthetic.brain_points(subject, count=1000, seed=seed),
                                   fixed_modality=synthetic.Modality(spec.fixed),
                                   moving_modality=synthetic.Modality(spec.moving))


def mean_error_mm(transform: sitk.Transform, pair: synthetic.SyntheticPair) -> float:
    """Mean distance (mm) between where ``transform`` and the truth send the pair's brain points."""
    return float(synthetic.target_registration_error(transform, pair.truth, pair.brain_points).mean())
