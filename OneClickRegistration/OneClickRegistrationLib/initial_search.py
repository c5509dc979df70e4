"""A cheap global start: a coarse search over rotations and translations before any engine runs.

The engines refine locally: from a start more than ~25 degrees or a few centimetres off they land in a
local optimum. This search puts the start inside their capture range for rotations up to 90 degrees,
images whose headers do not overlap at all, and swapped axes:

1. both images are block-averaged to about :data:`SEARCH_SPACING_MM` (cheap, no resampling); up to
   :data:`MAX_POINTS` voxels of the coarse fixed head are the sample points;
2. every orientation on a grid of :data:`ROTATION_STEP_DEG` steps (320 rotations, including a head
   turned or lying face down), and 30-degree steps up to 90 degrees about each axis (343), turning
   about the fixed head's centre and bringing it onto the start's image of it, are scored with the
   preset's metric on the points that fall inside the moving image; a finer grid refines the best few;
3. the best few are refined by a pattern search over the six rigid parameters with halving steps,
   which also finds translations the start got wrong (a partial field of view moves the head's centre).

Scores come from trilinear interpolation of the coarse moving image at the transformed points, all
candidates of a round at once (numpy), so the whole search takes a fraction of a second. Candidates
whose overlap is much smaller than the best candidate's are not chosen: a metric computed on a sliver
can look better than one computed on the whole head.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .masks import shrink_mask
from .side_by_side import side_by_side

SEARCH_SPACING_MM = 6.0
MAX_POINTS = 1500
ROTATION_STEP_DEG = 45.0
NEAR_ROTATION_DEG = 90.0
NEAR_ROTATION_STEP_DEG = 30.0
REFINED_STARTS = 4
FINE_STARTS = 3
FINE_ROTATION_DEG = 30.0
FINE_ROTATION_STEP_DEG = 15.0
# Pattern search: first steps, and how many halvings (final steps: 3.75 degrees, 1.5 mm).
FIRST_STEP_DEG = 15.0
FIRST_STEP_MM = 12.0
HALVINGS = 3
BINS = 24
SHIFT_SCAN_MM = 48.0
SHIFT_STEP_MM = 4.0
PARTIAL_EXTENT_MM = 120.0  # an image thinner than this along an axis does not hold a whole head
# A candidate is eligible only when its overlap reaches this share of the best overlap found.
MIN_OVERLAP_SHARE = 0.7
# Rounds of at least this many candidates are split over two threads (below, threads cost more than they save).
SIDE_BY_SIDE_MIN_CANDIDATES = 64
_SEED = 20261129


@dataclass(frozen=True)
class SearchResult:
    """The best start found, its coarse score and that of the start it was asked to improve."""

    transform: sitk.Euler3DTransform
    value: float
    start_value: float | None
    candidates: int
    # Other refined starts, best first, each far enough from the better ones to lead elsewhere: what
    # recovery tries when the first result is not good.
    alternatives: tuple[tuple[sitk.Euler3DTransform, float], ...] = ()


@dataclass(frozen=True)
class _Problem:
    points: np.ndarray  # (N, 3) physical fixed points
    fixed_values: np.ndarray  # (N,)
    fixed_bins: np.ndarray  # (N,) int
    moving: np.ndarray  # coarse moving array, (z, y, x)
    to_index: np.ndarray  # 3x3: physical offset -> continuous moving index (x, y, z)
    moving_origin: np.ndarray
    moving_low: float
    moving_high: float
    metric: str


def block_factors(image: sitk.Image, spacing_mm: float) -> list[int]:
    """Per axis, how many voxels a block of about ``spacing_mm`` spans (never leaving fewer than 4)."""
    return [max(1, min(n // 4, int(spacing_mm // s))) for n, s in zip(image.GetSize(), image.GetSpacing())]


def block_average(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` averaged over blocks of about ``spacing_mm`` (per axis, never fewer than 4 voxels)."""
    factors = block_factors(image, spacing_mm)
    source = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
    if all(f == 1 for f in factors):
        return source
    return sitk.BinShrink(source, factors)


def _problem(fixed: sitk.Image, fixed_head: sitk.Image, moving: sitk.Image, metric: str,
             spacing_mm: float) -> _Problem | None:
    coarse = block_average(fixed, spacing_mm)
    # Blocks at least half inside the head (a mean of 0.5 or more), counted without a float copy. The
    # image is kept while its array view is read: a view of a temporary image reads freed memory.
    coarse_head = shrink_mask(fixed_head, block_factors(fixed_head, spacing_mm))
    head = sitk.GetArrayViewFromImage(coarse_head) > 0
    zyx = np.argwhere(head)
    if len(zyx) < 50:
        return None
    rng = np.random.default_rng(_SEED)
    if len(zyx) > MAX_POINTS:
        zyx = zyx[np.sort(rng.choice(len(zyx), MAX_POINTS, replace=False))]
    values = sitk.GetArrayViewFromImage(coarse)[zyx[:, 0], zyx[:, 1], zyx[:, 2]].astype(np.float64)
    direction = np.asarray(coarse.GetDirection()).reshape(3, 3)
    points = np.asarray(coarse.GetOrigin()) + (zyx[:, ::-1] * np.asarray(coarse.GetSpacing())) @ direction.T
    moving_coarse = block_average(moving, spacing_mm)
    array = sitk.GetArrayFromImage(moving_coarse).astype(np.float32)
    m_direction = np.asarray(moving_coarse.GetDirection()).reshape(3, 3)
    to_index = np.linalg.inv(m_direction * np.asarray(moving_coarse.GetSpacing()))
    low, high = (float(v) for v in np.quantile(array[:: max(1, array.size // 100_000)], (0.005, 0.995)))
    f_low, f_high = (float(v) for v in np.quantile(values, (0.005, 0.995)))
    return _Problem(points=points, fixed_values=values, fixed_bins=_bin(values, f_low, f_high), moving=array,
                    to_index=to_index, moving_origin=np.asarray(moving_coarse.GetOrigin()),
                    moving_low=low, moving_high=max(high, low + 1e-6),
                    metric=metric)


def _thinnest_axis(image: sitk.Image) -> np.ndarray:
    extents = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    return np.asarray(image.GetDirection()).reshape(3, 3)[:, int(np.argmin(extents))]


def thinnest_extent_mm(image: sitk.Image) -> float:
    """The image's extent (mm) along its shortest grid axis."""
    return float(np.min(np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())))


def _bin(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (values - low) / max(high - low, 1e-12) * BINS
    return np.clip(scaled.astype(np.int64), 0, BINS - 1)


def _matrices(params: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation matrices and offsets (x -> R x + b) of Euler parameters (K, 6), ITK's Z*X*Y order."""
    ax, ay, az = params[:, 0], params[:, 1], params[:, 2]
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    one, zero = np.ones_like(ax), np.zeros_like(ax)
    rx = np.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], axis=-1).reshape(-1, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], axis=-1).reshape(-1, 3, 3)
    rz = np.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], axis=-1).reshape(-1, 3, 3)
    rotation = rz @ rx @ ry
    offset = center + params[:, 3:] - rotation @ center
    return rotation, offset


def _scores(problem: _Problem, params: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Metric value and overlap share (of the sample points) for each candidate (K, 6).

    Candidates are independent: a large round is scored in two halves side by side.
    """
    if len(params) < SIDE_BY_SIDE_MIN_CANDIDATES:
        return _scores_of(problem, params, center)
    half = len(params) // 2
    (first, first_overlap), (second, second_overlap) = side_by_side(
        lambda: _scores_of(problem, params[:half], center), lambda: _scores_of(problem, params[half:], center))
    return np.concatenate([first, second]), np.concatenate([first_overlap, second_overlap])


def _scores_of(problem: _Problem, params: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rotation, offset = _matrices(params, center)
    # Physical -> continuous moving index folded into one affine map per candidate.
    linear = np.einsum("ij,kjl->kil", problem.to_index, rotation).astype(np.float32)
    shift = ((offset - problem.moving_origin) @ problem.to_index.T).astype(np.float32)
    index = np.einsum("kij,nj->kni", linear, problem.points.astype(np.float32)) + shift[:, None, :]
    nz, ny, nx = problem.moving.shape
    upper = np.array([nx - 1, ny - 1, nz - 1], dtype=np.float32)
    inside = np.all((index >= 0) & (index <= upper), axis=-1)
    base = np.clip(np.floor(index), 0, upper - 1)
    frac = np.clip(index - base, 0.0, 1.0)
    base = base.astype(np.int64)
    flat = (base[..., 2] * ny + base[..., 1]) * nx + base[..., 0]
    volume = problem.moving.ravel()
    fx, fy, fz = frac[..., 0], frac[..., 1], frac[..., 2]
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    plane, row = ny * nx, nx
    values = (gz * (gy * (gx * volume[flat] + fx * volume[flat + 1])
                    + fy * (gx * volume[flat + row] + fx * volume[flat + row + 1]))
              + fz * (gy * (gx * volume[flat + plane] + fx * volume[flat + plane + 1])
                      + fy * (gx * volume[flat + plane + row] + fx * volume[flat + plane + row + 1])))
    counts = inside.sum(axis=1)
    overlap = counts / float(len(problem.points))
    if problem.metric == "ncc":
        result = _ncc(problem.fixed_values, values.astype(np.float64), inside, counts)
    else:
        result = _nmi(problem, values, inside, counts)
    result[counts < 50] = -np.inf
    return result, overlap


def _ncc(fixed: np.ndarray, moving: np.ndarray, inside: np.ndarray, counts: np.ndarray) -> np.ndarray:
    w = inside.astype(np.float64)
    n = np.maximum(counts, 1)
    mf = (w * fixed).sum(axis=1) / n
    mm = (w * moving).sum(axis=1) / n
    df = (fixed[None, :] - mf[:, None]) * w
    dm = (moving - mm[:, None]) * w
    denominator = np.sqrt((df * df).sum(axis=1) * (dm * dm).sum(axis=1))
    return np.where(denominator > 0, (df * dm).sum(axis=1) / np.maximum(denominator, 1e-300), -np.inf)


def _nmi(problem: _Problem, moving: np.ndarray, inside: np.ndarray, counts: np.ndarray) -> np.ndarray:
    k = moving.shape[0]
    moving_bins = _bin(moving, problem.moving_low, problem.moving_high)
    cells = (np.arange(k)[:, None] * BINS + problem.fixed_bins[None, :]) * BINS + moving_bins
    joint = np.bincount(cells.ravel(), weights=inside.ravel().astype(np.float64), minlength=k * BINS * BINS)
    joint = joint.reshape(k, BINS, BINS) / np.maximum(counts, 1)[:, None, None]

    def entropy(p: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axes)

    h_joint = entropy(joint, (1, 2))
    h_sum = entropy(joint.sum(axis=2), (1,)) + entropy(joint.sum(axis=1), (1,))
    return np.where(h_joint > 0, h_sum / np.maximum(h_joint, 1e-12), -np.inf)


def _pick(values: np.ndarray, overlap: np.ndarray, best_overlap: float) -> np.ndarray:
    """Scores with candidates of too small an overlap ruled out."""
    return np.where(overlap >= MIN_OVERLAP_SHARE * best_overlap, values, -np.inf)


def _rotation_grid(limit_deg: float, step_deg: float) -> np.ndarray:
    steps = round(limit_deg / step_deg)
    angles = np.radians(np.arange(-steps, steps + 1) * step_deg)
    return np.asarray(list(itertools.product(angles, repeat=3)))


def _all_orientations() -> np.ndarray:
    """Euler angles covering every orientation at ``ROTATION_STEP_DEG``: ITK's Z*X*Y order reaches all
    of them with the x angle in [-90, 90] and the other two all the way round."""
    half = round(90.0 / ROTATION_STEP_DEG)
    round_trip = round(360.0 / ROTATION_STEP_DEG)
    x = np.radians(np.arange(-half, half + 1) * ROTATION_STEP_DEG)
    yz = np.radians((np.arange(round_trip) - round_trip // 2 + 1) * ROTATION_STEP_DEG)
    return np.asarray(list(itertools.product(x, yz, yz)))


def search_start(
    fixed: sitk.Image,
    fixed_head: sitk.Image,
    moving: sitk.Image,
    moving_head: sitk.Image,
    start: sitk.Transform,
    *,
    metric: str,
    spacing_mm: float = SEARCH_SPACING_MM,
) -> SearchResult | None:
    """The best rigid start near any rotation of ``start`` (fixed -> moving), or None without a head.

    ``metric`` is the preset's score metric ("ncc"; anything else uses normalized mutual information).
    When the moving image covers only part of the head (a slab) and the fixed image all of it, the
    search samples the slab and maps it into the fixed image (the inverse problem): every candidate
    then overlaps fully, and the metric compares like with like. Values compare only with ``start_value``.
    """
    moving_partial = thinnest_extent_mm(moving) < min(PARTIAL_EXTENT_MM, thinnest_extent_mm(fixed))
    if not moving_partial:
        return _search(fixed, fixed_head, moving, start, metric, spacing_mm)
    inverse = _inverse(start)
    # The slab's centre is not the head's: the start is off along the slab's normal, by up to half a head.
    normal = _affine(inverse)[:3, :3] @ _thinnest_axis(moving)
    found = _search(moving, moving_head, fixed, inverse, metric, spacing_mm, scan_axis=normal)
    if found is None:
        return None
    return SearchResult(transform=_inverse(found.transform), value=found.value, start_value=found.start_value,
                        candidates=found.candidates,
                        alternatives=tuple((_inverse(t), v) for t, v in found.alternatives))


def _inverse(transform: sitk.Transform) -> sitk.Euler3DTransform:
    matrix = np.linalg.inv(_affine(transform))
    inverse = sitk.Euler3DTransform()
    inverse.SetMatrix(tuple(float(v) for v in _nearest_rotation(matrix[:3, :3]).ravel()))
    inverse.SetTranslation(tuple(float(t) for t in matrix[:3, 3]))
    return inverse


def _search(fixed: sitk.Image, fixed_head: sitk.Image, moving: sitk.Image, start: sitk.Transform, metric: str,
            spacing_mm: float, *, scan_axis: np.ndarray | None = None) -> SearchResult | None:
    problem = _problem(fixed, fixed_head, moving, metric, spacing_mm)
    if problem is None:
        return None
    center = problem.points.mean(axis=0)
    # The start as parameters about the head centre: the search keeps where it sends the centre.
    start_matrix = _affine(start)
    start_rotation = start_matrix[:3, :3]
    shift = start_matrix[:3, :3] @ center + start_matrix[:3, 3] - center
    start_params = np.concatenate([_euler_angles(start_rotation), shift])
    count = 0
    if scan_axis is not None:
        offsets = np.arange(-SHIFT_SCAN_MM, SHIFT_SCAN_MM + 1e-9, SHIFT_STEP_MM)
        trials = np.tile(start_params, (len(offsets), 1))
        trials[:, 3:] += np.outer(offsets, scan_axis)
        trial_values, _ = _scores(problem, trials, center)
        count += len(trials)
        if np.isfinite(trial_values).any():
            start_params = trials[int(np.argmax(trial_values))]
            shift = start_params[3:]
    # Every orientation coarsely, and the likelier ones (within 90 degrees about each axis) finer.
    grid = np.vstack([_rotation_grid(NEAR_ROTATION_DEG, NEAR_ROTATION_STEP_DEG), _all_orientations()])
    rotated = np.hstack([_compose_rotations(grid, start_rotation), np.tile(shift, (len(grid), 1))])
    candidates = np.vstack([start_params, rotated])
    values, overlap = _scores(problem, candidates, center)
    count += len(candidates)
    best_overlap = float(overlap.max())
    eligible = _pick(values, overlap, best_overlap)
    # A finer rotation grid around the best few: the 30-degree grid only brackets the answer.
    fine = _rotation_grid(FINE_ROTATION_DEG, FINE_ROTATION_STEP_DEG)
    around = []
    for i in np.argsort(-eligible)[:FINE_STARTS]:
        if np.isfinite(eligible[i]):
            angles = _compose_rotations(fine, _matrices(candidates[i][None, :], np.zeros(3))[0][0])
            around.append(np.hstack([angles, np.tile(candidates[i][3:], (len(fine), 1))]))
    if around:
        extra = np.vstack(around)
        extra_values, extra_overlap = _scores(problem, extra, center)
        count += len(extra)
        best_overlap = max(best_overlap, float(extra_overlap.max()))
        candidates = np.vstack([candidates, extra])
        eligible = _pick(np.concatenate([values, extra_values]), np.concatenate([overlap, extra_overlap]),
                         best_overlap)
    order = np.argsort(-eligible)[:REFINED_STARTS]
    starts = [candidates[i] for i in order if np.isfinite(eligible[i])]
    if not starts:
        return None
    refined = []
    for params in starts:
        found, value, evaluated, best_overlap = _pattern_search(problem, params, center, best_overlap)
        count += evaluated
        refined.append((value, found))
    refined.sort(key=lambda item: -item[0])
    distinct: list[tuple[float, np.ndarray]] = []
    for value, params in refined:
        if all(not _close(params, kept) for _, kept in distinct):
            distinct.append((value, params))
    start_value = float(values[0]) if np.isfinite(values[0]) else None
    (value, params), others = distinct[0], distinct[1:]
    return SearchResult(transform=_euler(params, center), value=float(value), start_value=start_value,
                        candidates=count,
                        alternatives=tuple((_euler(p, center), float(v)) for v, p in others))


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Two starts an engine would refine to the same result (within 10 degrees and 10 mm)."""
    return bool(np.all(np.abs(a[:3] - b[:3]) < math.radians(10.0)) and np.linalg.norm(a[3:] - b[3:]) < 10.0)


def _euler(params: np.ndarray, center: np.ndarray) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(float(c) for c in center))
    rotation, _ = _matrices(params[None, :], center)
    transform.SetMatrix(tuple(float(v) for v in rotation[0].ravel()))
    transform.SetTranslation(tuple(float(t) for t in params[3:]))
    return transform


def _pattern_search(problem: _Problem, params: np.ndarray, center: np.ndarray,
                    best_overlap: float) -> tuple[np.ndarray, float, int, float]:
    """Greedy +/- steps on each rigid parameter, halving the steps when no move helps."""
    current = np.asarray(params, dtype=float)
    values, _ = _scores(problem, current[None, :], center)
    value = float(values[0])
    evaluated = 1
    steps = np.array([math.radians(FIRST_STEP_DEG)] * 3 + [FIRST_STEP_MM] * 3)
    for _ in range(HALVINGS + 1):
        for _ in range(8):
            moves = np.vstack([current + sign * step for step in np.diag(steps) for sign in (1.0, -1.0)])
            trial, trial_overlap = _scores(problem, moves, center)
            evaluated += len(moves)
            best_overlap = max(best_overlap, float(trial_overlap.max()))
            trial = _pick(trial, trial_overlap, best_overlap)
            index = int(np.argmax(trial))
            if not trial[index] > value:
                break
            current, value = moves[index], float(trial[index])
        steps = steps / 2.0
    return current, value, evaluated, best_overlap


def _affine(transform: sitk.Transform) -> np.ndarray:
    """4x4 matrix of a linear transform (x -> A x + b) from how it maps the unit points."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    linear = np.stack([np.asarray(transform.TransformPoint(tuple(e))) - origin for e in np.eye(3)], axis=1)
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = linear, origin
    return matrix


def _nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(matrix)
    if np.linalg.det(u @ vt) < 0:
        return u @ np.diag([1.0, 1.0, -1.0]) @ vt
    return u @ vt


def _euler_angles(rotation: np.ndarray) -> np.ndarray:
    """ITK Euler3D (Z*X*Y) angles of a rotation matrix (the nearest rotation when it is not one)."""
    r = _nearest_rotation(rotation)
    ax = math.asin(float(np.clip(r[2, 1], -1.0, 1.0)))
    if abs(math.cos(ax)) > 1e-9:
        ay = math.atan2(-r[2, 0], r[2, 2])
        az = math.atan2(-r[0, 1], r[1, 1])
    else:
        ay = 0.0
        az = math.atan2(r[1, 0], r[0, 0])
    return np.array([ax, ay, az])


def _compose_rotations(grid: np.ndarray, start_rotation: np.ndarray) -> np.ndarray:
    """Euler angles of ``start_rotation`` followed by each grid rotation about the head centre."""
    zeros = np.zeros((len(grid), 3))
    rotations, _ = _matrices(np.concatenate([grid, zeros], axis=1), np.zeros(3))
    return np.asarray([_euler_angles(start_rotation @ r) for r in rotations])
