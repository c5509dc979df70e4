"""Small pairs with known truth on the grids where registrations go wrong, for the accuracy tests.

Coarse heads (2-2.5 mm) keep each engine run to seconds; the grids are the clinical ones that broke:
a fine moving grid under a coarse fixed one, thick slices, an oblique grid and a flipped one.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from OneClickRegistrationLib import synthetic

HEAD_MM = 2.5  # resolution of the synthetic head the images are sampled from


def _tilted_about_x(angle_deg: float) -> tuple[float, ...]:
    a = math.radians(angle_deg)
    return (1.0, 0.0, 0.0, 0.0, math.cos(a), -math.sin(a), 0.0, math.sin(a), math.cos(a))


# name -> (fixed modality, moving modality, fixed spacing, moving spacing, moving direction, rotation, translation)
CASES: dict[str, tuple] = {
    # moving voxels half the fixed ones in-plane, even-sized in-plane (the half-voxel trap)
    "fine_vs_coarse": ("T1", "T2", (2.5, 2.5, 2.5), (1.25, 1.25, 2.5), None, (4.0, -3.0, 6.0), (5.0, -4.0, 3.0)),
    # CT with 7.5 mm slices against an MR volume
    "thick_slices": ("T1", "CT", (2.5, 2.5, 2.5), (2.0, 2.0, 7.5), None, (-6.0, 4.0, -5.0), (-4.0, 6.0, 5.0)),
    # moving grid tilted 20 degrees about the left-right axis
    "oblique": ("T2", "FLAIR", (2.5, 2.5, 2.5), (2.25, 2.25, 5.0), _tilted_about_x(20.0), (5.0, 6.0, -4.0),
                (3.0, 5.0, -6.0)),
    # moving grid stored with its first axis reversed (radiological order)
    "flipped": ("CT", "T1", (2.0, 2.0, 5.0), (2.5, 2.5, 2.5), (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
                (-5.0, -5.0, 7.0), (6.0, 3.0, -4.0)),
}


@cache
def case(name: str) -> synthetic.SyntheticPair:
    fixed_mod, moving_mod, fixed_spacing, moving_spacing, direction, rotation, translation = CASES[name]
    subject = synthetic.make_subject(resolution_mm=HEAD_MM)
    center = subject.head_center
    truth = synthetic.rigid_transform(rotation, translation, center)
    fixed_grid = synthetic.Grid.centered(center, (200.0, 230.0, 200.0), fixed_spacing)
    # The moving field of view is off the moved head by a few mm, so the headers do not give the answer away.
    moved_center = tuple(np.asarray(truth.TransformPoint(center)) + np.array([4.0, -3.0, 5.0]))
    moving_grid = synthetic.Grid.centered(moved_center, (200.0, 220.0, 180.0), moving_spacing, direction)
    seed = sorted(CASES).index(name)
    fixed = synthetic.render(fixed_mod, fixed_grid, resolution_mm=HEAD_MM, seed=seed)
    moving = synthetic.render(moving_mod, moving_grid, image_to_reference=truth.GetInverse(),
                              resolution_mm=HEAD_MM, seed=seed + 1)
    return synthetic.SyntheticPair(fixed=fixed, moving=moving, truth=truth,
                                   brain_points=synthetic.brain_points(subject, count=1000, seed=seed),
                                   fixed_modality=synthetic.Modality(fixed_mod),
                                   moving_modality=synthetic.Modality(moving_mod))


def mean_error_mm(transform, pair: synthetic.SyntheticPair) -> float:
    return float(synthetic.target_registration_error(transform, pair.truth, pair.brain_points).mean())
