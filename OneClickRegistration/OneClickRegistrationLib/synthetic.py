"""Synthetic heads with known ground truth, for the demo, the tests and the benchmarks.

Nothing public ships a paired T1/T2/FLAIR/CT head, so contrasts are synthesized from tissue maps:

* ``source="mni152"``: grey- and white-matter probability maps of the MNI152 2009a template that
  the ``nilearn`` package ships (read straight from its data folder, nilearn is not imported);
* ``source="analytic"``: an asymmetric ellipsoid phantom, always available (fresh installs).

CSF fills the brain hull where there is no tissue; CSF, skull and scalp shells are added around the
brain from a distance map. Each modality gives every tissue its own intensity (CT in Hounsfield
units), then the image is sampled on a modality-typical grid with slice-thickness averaging, a smooth
bias field (MR) and noise.

Ground truth: ``make_pair`` returns a transform ``truth`` in the ITK fixed->moving convention: the
fixed-image point ``p`` shows the same anatomy as the moving-image point ``truth(p)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from .modality import Modality, parse_modality

Source = Literal["auto", "mni152", "analytic"]
TISSUES = ("gm", "wm", "csf", "skull", "scalp")

# Relative MR intensities and CT Hounsfield units per tissue; air is 0 (MR) and -1000 HU (CT).
# Ordering follows textbook contrast: T1 WM>GM>CSF, fat-bright scalp; T2 CSF brightest; FLAIR
# suppresses CSF; CT bone bright, brain near 30-40 HU.
CONTRAST: dict[Modality, dict[str, float]] = {
    Modality.T1: {"gm": 0.50, "wm": 0.80, "csf": 0.15, "skull": 0.08, "scalp": 0.75, "air": 0.0},
    Modality.T2: {"gm": 0.55, "wm": 0.35, "csf": 1.00, "skull": 0.05, "scalp": 0.45, "air": 0.0},
    Modality.FLAIR: {"gm": 0.60, "wm": 0.42, "csf": 0.08, "skull": 0.05, "scalp": 0.40, "air": 0.0},
    Modality.MR: {"gm": 0.50, "wm": 0.80, "csf": 0.15, "skull": 0.08, "scalp": 0.75, "air": 0.0},
    Modality.CT: {"gm": 40.0, "wm": 28.0, "csf": 8.0, "skull": 1200.0, "scalp": 30.0, "air": -1000.0},
}
MR_SCALE = 1000.0  # MR images are stored as int16 with this full scale

# Modality-typical acquisitions: voxel spacing (x, y, z) in mm and field of view in mm.
TYPICAL_SPACING: dict[Modality, tuple[float, float, float]] = {
    Modality.T1: (1.0, 1.0, 1.0),
    Modality.MR: (1.0, 1.0, 1.0),
    Modality.T2: (0.9, 0.9, 3.0),
    Modality.FLAIR: (0.9, 0.9, 5.0),
    Modality.CT: (0.8, 0.8, 5.0),
}
TYPICAL_FOV_MM: dict[Modality, tuple[float, float, float]] = {
    Modality.T1: (200.0, 240.0, 220.0),
    Modality.MR: (200.0, 240.0, 220.0),
    Modality.T2: (220.0, 230.0, 180.0),
    Modality.FLAIR: (220.0, 230.0, 170.0),
    Modality.CT: (250.0, 250.0, 190.0),
}

_SHELLS_MM = {"csf": 2.0, "skull": 8.0, "scalp": 14.0}  # outer radius of each shell around the brain
_PAD_MM = 22.0


@dataclass(frozen=True)
class Grid:
    """A voxel grid in LPS physical space."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @staticmethod
    def centered(
        center: tuple[float, float, float],
        fov_mm: tuple[float, float, float],
        spacing: tuple[float, float, float],
        direction: tuple[float, ...] | None = None,
    ) -> Grid:
        """A grid of the given field of view whose centre lies at ``center``."""
        d = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
        size = tuple(max(4, round(f / s)) for f, s in zip(fov_mm, spacing))
        half = d @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2.0)
        origin = np.asarray(center, dtype=float) - half
        return Grid(
            size=size,
            spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
            origin=tuple(float(o) for o in origin),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in d.ravel()),
        )

    def image(self, pixel_id: int = sitk.sitkFloat32) -> sitk.Image:
        image = sitk.Image([int(s) for s in self.size], pixel_id)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class Subject:
    """Tissue probability maps of one synthetic head, in its reference (LPS) space."""

    tissues: dict[str, sitk.Image]
    brain: sitk.Image  # uint8 brain mask (grey + white matter)
    head_center: tuple[float, float, float]
    source: str


@dataclass(frozen=True)
class SyntheticPair:
    """A fixed and a moving image of the same head with the ground-truth transform between them."""

    fixed: sitk.Image
    moving: sitk.Image
    truth: sitk.Transform  # ITK fixed->moving
    brain_points: np.ndarray = field(repr=False)  # (N, 3) LPS points of the brain in fixed space
    fixed_modality: Modality = Modality.T1
    moving_modality: Modality = Modality.T1


def _mni_folder() -> Path | None:
    spec = find_spec("nilearn")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "datasets" / "data"
    return folder if (folder / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").is_file() else None


def mni_available() -> bool:
    """True when the MNI152 tissue maps shipped by nilearn are on disk."""
    return _mni_folder() is not None


def _reference_grid(bounds_min: np.ndarray, bounds_max: np.ndarray, resolution: float) -> Grid:
    lo = bounds_min - _PAD_MM
    hi = bounds_max + _PAD_MM
    size = tuple(math.ceil((h - low) / resolution) + 1 for low, h in zip(lo, hi))
    return Grid(size=size, spacing=(resolution,) * 3, origin=tuple(float(v) for v in lo))  # type: ignore[arg-type]


def _image_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    size = image.GetSize()
    corners = [
        image.TransformContinuousIndexToPhysicalPoint(
            [c[0] * (size[0] - 1), c[1] * (size[1] - 1), c[2] * (size[2] - 1)]
        )
        for c in np.ndindex(2, 2, 2)
    ]
    pts = np.asarray(corners)
    return pts.min(axis=0), pts.max(axis=0)


def _resample_to(image: sitk.Image, grid: Grid) -> sitk.Image:
    return sitk.Resample(image, grid.image(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _mni_brain(resolution: float) -> tuple[sitk.Image, sitk.Image]:
    folder = _mni_folder()
    assert folder is not None
    gm = sitk.ReadImage(str(folder / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
    wm = sitk.ReadImage(str(folder / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
    grid = _reference_grid(*_image_bounds(gm), resolution)
    # nilearn's "converted" maps store probabilities as 0..255; bring them back to 0..1.
    peak = max(float(sitk.GetArrayViewFromImage(gm).max()), float(sitk.GetArrayViewFromImage(wm).max()))
    scale = 1.0 / peak
    return _resample_to(gm * scale, grid), _resample_to(wm * scale, grid)


def _analytic_brain(resolution: float) -> tuple[sitk.Image, sitk.Image]:
    """An asymmetric ellipsoid brain: no rotation or mirror maps it onto itself."""
    grid = _reference_grid(np.array([-70.0, -95.0, -60.0]), np.array([70.0, 80.0, 80.0]), resolution)
    ref = grid.image()
    idx = np.indices(grid.size[::-1], dtype=np.float32)  # z, y, x
    x = grid.origin[0] + idx[2] * resolution
    y = grid.origin[1] + idx[1] * resolution
    z = grid.origin[2] + idx[0] * resolution

    def ellipsoid(cx: float, cy: float, cz: float, ax: float, ay: float, az: float) -> np.ndarray:
        r = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2
        return np.clip((1.0 - r) * 8.0, 0.0, 1.0)  # soft edge, a few voxels wide

    cerebrum = ellipsoid(0, -10, 15, 66, 85, 62)
    cerebellum = ellipsoid(0, -55, -30, 48, 30, 22)  # posterior-inferior: breaks front/back symmetry
    brain = np.maximum(cerebrum, cerebellum)
    wm = ellipsoid(0, -8, 18, 48, 66, 44) + 0.8 * cerebellum * ellipsoid(0, -55, -30, 30, 18, 12)
    ventricles = np.maximum(ellipsoid(-9, -4, 20, 7, 28, 11), ellipsoid(11, 2, 18, 6, 22, 9))  # asymmetric
    # Gyri: a deterministic ripple of the grey/white border so the image has texture at every scale.
    ripple = 0.5 + 0.5 * np.sin(x / 6.0) * np.sin(y / 7.0) * np.sin(z / 5.0 + x / 11.0)
    wm = np.clip(wm * (0.75 + 0.25 * ripple), 0.0, 1.0) * (1.0 - ventricles) * brain
    gm = np.clip(brain - wm - ventricles, 0.0, 1.0) * (0.8 + 0.2 * ripple)
    gm_img = sitk.GetImageFromArray(gm.astype(np.float32))
    wm_img = sitk.GetImageFromArray(wm.astype(np.float32))
    for image in (gm_img, wm_img):
        image.CopyInformation(ref)
    return gm_img, wm_img


@lru_cache(maxsize=4)
def make_subject(*, resolution_mm: float = 1.0, source: Source = "auto") -> Subject:
    """Build (and cache) the tissue maps of a synthetic head at ``resolution_mm``."""
    chosen = source
    if source == "auto":
        chosen = "mni152" if mni_available() else "analytic"
    if chosen == "mni152":
        if not mni_available():
            raise RuntimeError("source='mni152' needs the nilearn package (pip install nilearn)")
        gm, wm = _mni_brain(resolution_mm)
    else:
        gm, wm = _analytic_brain(resolution_mm)
    tissue = sitk.Add(gm, wm)
    hull = sitk.BinaryThreshold(sitk.SmoothingRecursiveGaussian(tissue, 1.0), 0.3, 1e9, 1, 0)
    radius = max(1, round(4.0 / resolution_mm))
    hull = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(hull, [radius] * 3))
    hull_f = sitk.Cast(hull, sitk.sitkFloat32)
    csf_inside = sitk.Clamp(sitk.Subtract(hull_f, tissue), sitk.sitkFloat32, 0.0, 1.0)
    distance = sitk.SignedMaurerDistanceMap(
        hull, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    d = sitk.GetArrayFromImage(distance)
    shells: dict[str, np.ndarray] = {}
    inner = 0.0
    for name, outer in _SHELLS_MM.items():
        shells[name] = ((d > inner) & (d <= outer)).astype(np.float32)
        inner = outer
    tissues = {"gm": gm, "wm": wm}
    csf = sitk.GetArrayFromImage(csf_inside) + shells["csf"]
    for name, array in (("csf", csf), ("skull", shells["skull"]), ("scalp", shells["scalp"])):
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.CopyInformation(gm)
        tissues[name] = image
    brain = sitk.BinaryThreshold(tissue, 0.5, 1e9, 1, 0)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(hull)
    center = stats.GetCentroid(1)
    return Subject(tissues=tissues, brain=brain, head_center=tuple(center), source=chosen)  # type: ignore[arg-type]


def _contrast_image(subject: Subject, modality: Modality) -> sitk.Image:
    table = CONTRAST[modality]
    arrays = {name: sitk.GetArrayViewFromImage(img) for name, img in subject.tissues.items()}
    occupied = np.zeros_like(arrays["gm"])
    value = np.zeros_like(arrays["gm"])
    for name in TISSUES:
        value += table[name] * arrays[name]
        occupied += arrays[name]
    value += table["air"] * np.clip(1.0 - occupied, 0.0, 1.0)
    image = sitk.GetImageFromArray(value.astype(np.float32))
    image.CopyInformation(subject.tissues["gm"])
    return image


@lru_cache(maxsize=16)
def _cached_contrast(resolution_mm: float, source: Source, modality: Modality) -> sitk.Image:
    return _contrast_image(make_subject(resolution_mm=resolution_mm, source=source), modality)


def _bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field, exp of a random low-order polynomial, about +/- ``strength``."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    terms = (xx, yy, zz, xx * yy, yy * zz, xx * zz, xx * xx, yy * yy, zz * zz)
    coeffs = rng.uniform(-1.0, 1.0, size=len(terms)) * strength / 3.0
    log_field = sum(c * t for c, t in zip(coeffs, terms))
    return np.exp(log_field).astype(np.float32)


def render(
    modality: str | Modality,
    grid: Grid,
    *,
    image_to_reference: sitk.Transform | None = None,
    resolution_mm: float = 1.0,
    source: Source = "auto",
    noise: float = 0.02,
    bias: float = 0.15,
    seed: int = 0,
) -> sitk.Image:
    """Image the synthetic head in ``modality`` on ``grid``.

    ``image_to_reference`` maps points of the new image to the head's reference space (None: the
    identity). Slices thicker than the head's resolution are averaged over their thickness, as a
    scanner does. ``noise`` is relative to the MR full scale (CT: times 300 HU).
    """
    mod = parse_modality(modality)
    contrast = _cached_contrast(float(resolution_mm), source, mod)
    return _image_on_grid(contrast, mod, grid, image_to_reference=image_to_reference,
                          resolution_mm=resolution_mm, air=CONTRAST[mod]["air"], noise=noise, bias=bias,
                          seed=seed)


def _image_on_grid(
    contrast: sitk.Image,
    mod: Modality,
    grid: Grid,
    *,
    image_to_reference: sitk.Transform | None,
    resolution_mm: float,
    air: float,
    noise: float,
    bias: float,
    seed: int,
) -> sitk.Image:
    """Sample a noise-free contrast image on ``grid`` as a scanner would: thick-slice averaging,
    then CT noise and Hounsfield int16, or MR bias field, Rician noise and int16."""
    rng = np.random.default_rng(seed)
    # Supersample each axis whose spacing is coarser than the head model, then average blocks.
    factors = [max(1, min(5, round(s / resolution_mm))) for s in grid.spacing]
    fine_spacing = tuple(s / f for s, f in zip(grid.spacing, factors))
    d = np.asarray(grid.direction).reshape(3, 3)
    first_voxel_corner = np.asarray(grid.origin) - d @ (np.asarray(grid.spacing) / 2.0)
    fine_origin = first_voxel_corner + d @ (np.asarray(fine_spacing) / 2.0)
    fine = Grid(
        size=tuple(n * f for n, f in zip(grid.size, factors)),  # type: ignore[arg-type]
        spacing=fine_spacing,
        origin=tuple(fine_origin),
        direction=grid.direction,
    )  # type: ignore[arg-type]
    transform = image_to_reference if image_to_reference is not None else sitk.Transform()
    sampled = sitk.Resample(contrast, fine.image(), transform, sitk.sitkLinear, air, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(sampled)
    fz, fy, fx = factors[2], factors[1], factors[0]
    nz, ny, nx = grid.size[2], grid.size[1], grid.size[0]
    array = array.reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5))
    if mod is Modality.CT:
        array = array + rng.normal(0.0, noise * 300.0, array.shape).astype(np.float32)
        array = np.clip(np.rint(array), -1024, 3071).astype(np.int16)
    else:
        array = array * _bias_field(array.shape, bias, rng)
        sigma = noise
        # Magnitude images: Rician noise, so the background is positive noise, not zero.
        array = np.hypot(array + rng.normal(0.0, sigma, array.shape), rng.normal(0.0, sigma, array.shape))
        array = np.clip(np.rint(array * MR_SCALE), 0, 32767).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def rigid_transform(
    rotation_deg: tuple[float, float, float],
    translation_mm: tuple[float, float, float],
    center: tuple[float, float, float],
) -> sitk.Euler3DTransform:
    """A rigid transform rotating by ``rotation_deg`` (about x, y, z) around ``center``, then translating."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(c) for c in center])
    transform.SetRotation(*(math.radians(a) for a in rotation_deg))
    transform.SetTranslation([float(t) for t in translation_mm])
    return transform


def typical_grid(
    modality: str | Modality,
    center: tuple[float, float, float],
    *,
    coarsen: float = 1.0,
    direction: tuple[float, ...] | None = None,
    fov_mm: tuple[float, float, float] | None = None,
) -> Grid:
    """A modality-typical grid centred on ``center``; ``coarsen`` > 1 scales the spacing (tests)."""
    mod = parse_modality(modality)
    spacing = tuple(s * coarsen for s in TYPICAL_SPACING[mod])
    return Grid.centered(center, fov_mm or TYPICAL_FOV_MM[mod], spacing, direction)  # type: ignore[arg-type]


def brain_points(subject: Subject, *, count: int = 2000, seed: int = 0) -> np.ndarray:
    """``count`` random LPS points inside the brain of ``subject`` (its reference space)."""
    mask = sitk.GetArrayViewFromImage(subject.brain)
    zyx = np.argwhere(mask > 0)
    rng = np.random.default_rng(seed)
    chosen = zyx[rng.choice(len(zyx), size=min(count, len(zyx)), replace=False)]
    ref = subject.brain
    return np.asarray([ref.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]) for k, j, i in chosen])


def make_pair(
    fixed_modality: str | Modality,
    moving_modality: str | Modality,
    *,
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    coarsen: float = 1.0,
    resolution_mm: float | None = None,
    fixed_fov_mm: tuple[float, float, float] | None = None,
    moving_fov_mm: tuple[float, float, float] | None = None,
    moving_fov_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    moving_direction: tuple[float, ...] | None = None,
    noise: float = 0.02,
    seed: int = 0,
    source: Source = "auto",
) -> SyntheticPair:
    """A fixed/moving pair of one head with a known rigid misalignment.

    The moving head is the fixed head moved by ``truth`` (rotation about the head centre, then
    translation). The moving field of view is centred on the moved head plus ``moving_fov_shift_mm``,
    so the image headers do not give the answer away when a shift is asked for.
    """
    fixed_mod, moving_mod = parse_modality(fixed_modality), parse_modality(moving_modality)
    res = resolution_mm if resolution_mm is not None else max(1.0, min(2.5, coarsen))
    subject = make_subject(resolution_mm=res, source=source)
    center = subject.head_center
    truth = rigid_transform(rotation_deg, translation_mm, center)
    fixed_grid = typical_grid(fixed_mod, center, coarsen=coarsen, fov_mm=fixed_fov_mm)
    moved_center = tuple(np.asarray(truth.TransformPoint(center)) + np.asarray(moving_fov_shift_mm))
    moving_grid = typical_grid(
        moving_mod,
        moved_center,
        coarsen=coarsen,  # type: ignore[arg-type]
        direction=moving_direction,
        fov_mm=moving_fov_mm,
    )
    fixed = render(fixed_mod, fixed_grid, resolution_mm=res, source=source, noise=noise, seed=seed)
    moving = render(
        moving_mod,
        moving_grid,
        image_to_reference=truth.GetInverse(),
        resolution_mm=res,
        source=source,
        noise=noise,
        seed=seed + 1,
    )
    return SyntheticPair(
        fixed=fixed,
        moving=moving,
        truth=truth,
        brain_points=brain_points(subject, count=2000, seed=seed),
        fixed_modality=fixed_mod,
        moving_modality=moving_mod,
    )


def target_registration_error(
    estimated: sitk.Transform, truth: sitk.Transform, points: np.ndarray
) -> np.ndarray:
    """Per-point distance (mm) between where ``estimated`` and ``truth`` send each fixed point."""
    return np.asarray(
        [
            np.linalg.norm(np.subtract(estimated.TransformPoint(tuple(p)), truth.TransformPoint(tuple(p))))
            for p in np.asarray(points, dtype=float)
        ]
    )


# --------------------------------------------------------------------------------------------
# Variety for modality recognition: other tissue intensities, lesions, skull-stripped heads and
# MR images of objects that are not heads.

ObjectKind = Literal["bottle", "torso", "blobs", "knee"]
OBJECT_KINDS: tuple[str, ...] = ("bottle", "torso", "blobs", "knee")


def varied_contrast(modality: str | Modality, *, seed: int) -> dict[str, float]:
    """Tissue intensities of ``modality`` drawn from ranges seen across scanners and sequences.

    The ranges are relative to a reference tissue of each contrast (T1: white matter, T2: CSF,
    FLAIR: grey matter) and keep each contrast's textbook order of the brain tissues; scalp and
    skull vary widely (fat suppression, bone marrow). CT varies within Hounsfield ranges.
    """
    mod = parse_modality(modality)
    rng = np.random.default_rng(seed)
    u = rng.uniform
    if mod is Modality.CT:
        gm = u(34.0, 46.0)
        return {"gm": gm, "wm": gm - u(5.0, 12.0), "csf": u(0.0, 15.0), "skull": u(700.0, 1600.0),
                "scalp": u(-90.0, 40.0), "air": -1000.0}
    skull, air = u(0.02, 0.12), 0.0
    if mod is Modality.T2:
        csf = u(0.7, 1.0)
        gm = csf * u(0.4, 0.7)
        return {"gm": gm, "wm": gm * u(0.6, 0.85), "csf": csf, "skull": skull,
                "scalp": u(0.25, 0.7), "air": air}
    if mod is Modality.FLAIR:
        gm = u(0.5, 0.9)
        return {"gm": gm, "wm": gm * u(0.65, 0.88), "csf": gm * u(0.05, 0.3), "skull": skull,
                "scalp": u(0.3, 0.9), "air": air}
    wm = u(0.6, 0.9)  # T1 (and a generic MR drawn as T1)
    return {"gm": wm * u(0.55, 0.82), "wm": wm, "csf": wm * u(0.08, 0.35), "skull": skull,
            "scalp": u(0.4, 1.0), "air": air}


def _lesion_value(mod: Modality, table: dict[str, float], rng: np.random.Generator) -> float:
    # White-matter lesions: dark on T1 (between CSF and grey matter), bright on T2, FLAIR and CT-dark.
    if mod is Modality.CT:
        return table["wm"] - rng.uniform(5.0, 15.0)
    if mod in (Modality.T1, Modality.MR):
        return table["csf"] + rng.uniform(0.2, 0.8) * (table["gm"] - table["csf"])
    if mod is Modality.T2:
        return table["gm"] + rng.uniform(0.3, 0.9) * (table["csf"] - table["gm"])
    return table["gm"] * rng.uniform(1.1, 1.5)


def render_head(
    modality: str | Modality,
    grid: Grid,
    *,
    tissue_values: dict[str, float] | None = None,
    skull_stripped: bool = False,
    lesions: int = 0,
    image_to_reference: sitk.Transform | None = None,
    resolution_mm: float = 1.0,
    source: Source = "auto",
    noise: float = 0.02,
    bias: float = 0.15,
    seed: int = 0,
) -> sitk.Image:
    """Like :func:`render`, with other tissue intensities (``tissue_values``, e.g. from
    :func:`varied_contrast`), the skull and scalp removed (``skull_stripped``) and ``lesions``
    white-matter lesions of 3-8 mm radius at random places."""
    mod = parse_modality(modality)
    table = dict(CONTRAST[mod] if tissue_values is None else tissue_values)
    subject = make_subject(resolution_mm=float(resolution_mm), source=source)
    arrays = {name: sitk.GetArrayFromImage(img) for name, img in subject.tissues.items()}
    if skull_stripped:
        arrays["skull"][:] = 0.0
        arrays["scalp"][:] = 0.0
    occupied = np.zeros_like(arrays["gm"])
    value = np.zeros_like(arrays["gm"])
    for name in TISSUES:
        value += table[name] * arrays[name]
        occupied += arrays[name]
    value += table["air"] * np.clip(1.0 - occupied, 0.0, 1.0)
    rng = np.random.default_rng(seed + 7919)
    white = np.argwhere(arrays["wm"] > 0.9)
    spacing = subject.tissues["gm"].GetSpacing()[::-1]
    for _ in range(lesions if len(white) else 0):
        center = white[rng.integers(len(white))]
        radius = rng.uniform(3.0, 8.0)
        lo = [max(0, int(c - radius / s) - 1) for c, s in zip(center, spacing)]
        hi = [min(n, int(c + radius / s) + 2) for c, s, n in zip(center, spacing, value.shape)]
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = (((zz - center[0]) * spacing[0]) ** 2 + ((yy - center[1]) * spacing[1]) ** 2
                  + ((xx - center[2]) * spacing[2]) ** 2) <= radius**2
        block = value[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        block[inside] = _lesion_value(mod, table, rng)
    contrast = sitk.GetImageFromArray(value.astype(np.float32))
    contrast.CopyInformation(subject.tissues["gm"])
    return _image_on_grid(contrast, mod, grid, image_to_reference=image_to_reference,
                          resolution_mm=resolution_mm, air=table["air"], noise=noise, bias=bias,
                          seed=seed)


def render_object(
    kind: ObjectKind,
    grid: Grid,
    *,
    noise: float = 0.02,
    bias: float = 0.15,
    seed: int = 0,
) -> sitk.Image:
    """An MR image of something that is not a head, centred in ``grid``.

    ``bottle``: a uniform water phantom with a few rods of other intensities; ``torso``: an
    elliptic body section with a bright fat rim, muscle and organs; ``blobs``: random overlapping
    ellipsoids of random intensities; ``knee``: bright marrow bones in darker muscle and fat.
    """
    if kind not in OBJECT_KINDS:
        raise ValueError(f"kind must be one of {OBJECT_KINDS}; received {kind!r}")
    rng = np.random.default_rng(seed)
    size = grid.size[::-1]
    spacing = np.asarray(grid.spacing[::-1])
    zz, yy, xx = (((np.arange(n) - (n - 1) / 2.0) * s).reshape([-1 if i == a else 1 for i in range(3)])
                  for a, (n, s) in enumerate(zip(size, spacing)))
    value = np.zeros(size, np.float32)

    def ellipsoid(c: tuple[float, float, float], r: tuple[float, float, float]) -> np.ndarray:
        return (((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2) <= 1.0

    def cylinder(cy: float, cx: float, ry: float, rx: float, half_z: float) -> np.ndarray:
        return ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1.0) & (np.abs(zz) <= half_z)

    if kind == "bottle":
        value[cylinder(0, 0, 80, 80, 90)] = rng.uniform(0.4, 0.9)
        for _ in range(4):
            angle = rng.uniform(0, 2 * np.pi)
            value[cylinder(45 * np.sin(angle), 45 * np.cos(angle), 10, 10, 80)] = rng.uniform(0.05, 1.0)
    elif kind == "torso":
        fat, muscle = rng.uniform(0.7, 1.0), rng.uniform(0.2, 0.4)
        value[cylinder(0, 0, 110, 160, 200)] = fat
        value[cylinder(0, 0, 95, 145, 200)] = muscle
        for _ in range(5):
            c = (rng.uniform(-60, 60), rng.uniform(-50, 50), rng.uniform(-90, 90))
            value[ellipsoid(c, tuple(rng.uniform(20, 50, 3)))] = rng.uniform(0.3, 0.8)
    elif kind == "knee":
        value[cylinder(0, 0, 60, 60, 120)] = rng.uniform(0.6, 0.9)  # subcutaneous fat
        value[cylinder(0, 0, 52, 52, 120)] = rng.uniform(0.2, 0.35)  # muscle
        for cx in (-20.0, 22.0):
            value[cylinder(0, cx, 18, 18, 100)] = rng.uniform(0.05, 0.1)  # cortical bone
            value[cylinder(0, cx, 14, 14, 100)] = rng.uniform(0.7, 1.0)  # fatty marrow
    else:
        for _ in range(12):
            c = tuple(rng.uniform(-60, 60, 3))
            value[ellipsoid(c, tuple(rng.uniform(15, 60, 3)))] = rng.uniform(0.05, 1.0)
    contrast = sitk.GetImageFromArray(value)
    contrast.SetSpacing(grid.spacing)
    contrast.SetOrigin(grid.origin)
    contrast.SetDirection(grid.direction)
    return _image_on_grid(contrast, Modality.MR, grid, image_to_reference=None,
                          resolution_mm=min(grid.spacing), air=0.0, noise=noise, bias=bias, seed=seed)


# ---------------------------------------------------------------------------------------------------
# Case kinds: the hard situations a one-click registration meets in the clinic, each with known truth.

CASE_KINDS = (
    "standard",  # typical clinical grids, rotations to 25 degrees, translations to 30 mm
    "ct_slab",  # CT fixed, MR moving cropped to a 60 mm slab through the brain
    "large_rotation",  # one rotation of 45-90 degrees (head lying on its side, swapped axes)
    "no_overlap",  # the two image domains do not overlap at all in their headers
    "sagittal",  # moving image acquired in sagittal slices
    "oblique",  # moving image acquired on a tilted (oblique) grid
    "flipped",  # moving grid with one or two axes reversed (radiological/neurological storage)
    "fine_coarse",  # moving voxels half the fixed ones in-plane (0.5 mm vs 1 mm)
    "skull_stripped",  # moving image is brain only, fixed image the whole head
    "aligned",  # the pair is already aligned (identity truth), different modalities and grids
    "self",  # an image against itself
)
_CASE_MODALITIES = (Modality.T1, Modality.T2, Modality.FLAIR, Modality.CT)
_MR_MODALITIES = (Modality.T1, Modality.T2, Modality.FLAIR)
# Sagittal acquisition: image axes run posterior, inferior and left (columns are the axes in LPS).
_SAGITTAL = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
_FLIPS = ((-1.0, 1.0, 1.0), (1.0, -1.0, 1.0), (-1.0, -1.0, 1.0), (1.0, 1.0, -1.0))
SLAB_MM = 60.0


@dataclass(frozen=True)
class SyntheticCase:
    """One generated case: its kind, seed, a one-line description and the pair with its truth."""

    kind: str
    seed: int
    description: str
    pair: SyntheticPair


def _random_rotation(rng: np.random.Generator, limit_deg: float) -> tuple[float, float, float]:
    return tuple(float(a) for a in np.round(rng.uniform(-limit_deg, limit_deg, 3), 2))  # type: ignore[return-value]


def _random_translation(rng: np.random.Generator, low_mm: float, high_mm: float) -> tuple[float, float, float]:
    direction = rng.normal(size=3)
    vector = direction / np.linalg.norm(direction) * rng.uniform(low_mm, high_mm)
    return tuple(float(t) for t in np.round(vector, 2))  # type: ignore[return-value]


def _direction_rotated_about_x(angle_deg: float) -> tuple[float, ...]:
    a = math.radians(angle_deg)
    matrix = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    return tuple(float(v) for v in matrix.ravel())


def _brain_only(image: sitk.Image, grid: Grid, image_to_reference: sitk.Transform, resolution_mm: float,
                source: Source) -> sitk.Image:
    """``image`` with everything outside the (slightly dilated) brain set to 0, as skull stripping leaves it."""
    subject = make_subject(resolution_mm=resolution_mm, source=source)
    radius = max(1, round(2.0 / resolution_mm))
    brain = sitk.Cast(sitk.BinaryDilate(subject.brain, [radius] * 3), sitk.sitkFloat32)
    on_grid = sitk.Resample(brain, grid.image(), image_to_reference, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    keep = sitk.GetArrayViewFromImage(on_grid) >= 0.5
    array = np.where(keep, sitk.GetArrayViewFromImage(image), 0).astype(sitk.GetArrayViewFromImage(image).dtype)
    stripped = sitk.GetImageFromArray(array)
    stripped.CopyInformation(image)
    return stripped


def _pair_on_grids(
    fixed_mod: Modality,
    moving_mod: Modality,
    truth: sitk.Euler3DTransform,
    fixed_grid: Grid,
    moving_grid: Grid,
    *,
    resolution_mm: float,
    source: Source,
    seed: int,
    moving_brain_only: bool = False,
) -> SyntheticPair:
    subject = make_subject(resolution_mm=resolution_mm, source=source)
    fixed = render(fixed_mod, fixed_grid, resolution_mm=resolution_mm, source=source, seed=seed)
    inverse = truth.GetInverse()
    moving = render(moving_mod, moving_grid, image_to_reference=inverse, resolution_mm=resolution_mm,
                    source=source, seed=seed + 1)
    if moving_brain_only:
        moving = _brain_only(moving, moving_grid, inverse, resolution_mm, source)
    return SyntheticPair(fixed=fixed, moving=moving, truth=truth,
                         brain_points=brain_points(subject, count=2000, seed=seed),
                         fixed_modality=fixed_mod, moving_modality=moving_mod)


def make_case(kind: str, seed: int, *, source: Source = "auto", resolution_mm: float = 1.0) -> SyntheticCase:
    """A case of ``kind`` (one of :data:`CASE_KINDS`), drawn reproducibly from ``seed``.

    Modalities, misalignment and grids are random within the kind's limits; the moving field of view is
    centred near the moved head (never exactly, so the headers do not give the answer away) except for
    ``no_overlap``, where the moved head lies 250-350 mm away, and ``aligned``/``self``.
    """
    if kind not in CASE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CASE_KINDS)}; received {kind!r}.")
    rng = np.random.default_rng([seed, CASE_KINDS.index(kind)])
    subject = make_subject(resolution_mm=resolution_mm, source=source)
    center = subject.head_center

    def pick(options: tuple[Modality, ...]) -> Modality:
        return options[int(rng.integers(len(options)))]

    fixed_mod, moving_mod = pick(_CASE_MODALITIES), pick(_CASE_MODALITIES)
    rotation = _random_rotation(rng, 25.0)
    translation = _random_translation(rng, 5.0, 30.0)
    fov_shift = tuple(float(v) for v in np.round(rng.uniform(-10.0, 10.0, 3), 2))
    moving_spacing = TYPICAL_SPACING[moving_mod]
    moving_fov = TYPICAL_FOV_MM[moving_mod]
    moving_direction: tuple[float, ...] | None = None
    brain_only = False
    detail = ""
    if kind == "ct_slab":
        fixed_mod, moving_mod = Modality.CT, pick(_MR_MODALITIES)
        rotation = _random_rotation(rng, 15.0)
        moving_spacing = TYPICAL_SPACING[moving_mod]
        moving_fov = (*TYPICAL_FOV_MM[moving_mod][:2], SLAB_MM)
        fov_shift = (fov_shift[0], fov_shift[1], float(np.round(rng.uniform(-25.0, 30.0), 2)))
        detail = f", moving slab {SLAB_MM:g} mm thick, {fov_shift[2]:+.0f} mm from the head centre"
    elif kind == "large_rotation":
        axis = int(rng.integers(3))
        angles = list(_random_rotation(rng, 15.0))
        angles[axis] = float(np.round(rng.choice([-1.0, 1.0]) * rng.uniform(45.0, 90.0), 2))
        rotation = tuple(angles)  # type: ignore[assignment]
    elif kind == "no_overlap":
        translation = _random_translation(rng, 250.0, 350.0)
    elif kind == "sagittal":
        moving_direction = _SAGITTAL
        s = TYPICAL_SPACING[moving_mod]
        f = TYPICAL_FOV_MM[moving_mod]
        # In-plane axes run posterior and inferior, slices left to right.
        moving_spacing, moving_fov = (s[0], s[1], s[2]), (f[1], f[2], f[0])
    elif kind == "oblique":
        tilt = float(np.round(rng.choice([-1.0, 1.0]) * rng.uniform(12.0, 30.0), 2))
        moving_direction = _direction_rotated_about_x(tilt)
        detail = f", grid tilted {tilt:+.0f} deg"
    elif kind == "flipped":
        flip = _FLIPS[int(rng.integers(len(_FLIPS)))]
        moving_direction = tuple(float(v) for v in np.diag(flip).ravel())
        detail = f", grid axes {'/'.join(f'{v:+.0f}' for v in flip)}"
    elif kind == "fine_coarse":
        fixed_mod, moving_mod = pick((Modality.T1, Modality.FLAIR, Modality.CT)), pick(_MR_MODALITIES)
        in_plane = float(rng.choice([0.45, 0.5]))
        moving_spacing = (in_plane, in_plane, float(rng.choice([1.0, 3.0])))
        moving_fov = (180.0, 220.0, 170.0)
    elif kind == "skull_stripped":
        moving_mod = pick(_MR_MODALITIES)
        brain_only = True
    elif kind in ("aligned", "self"):
        rotation, translation, fov_shift = (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
        if kind == "self":
            moving_mod = fixed_mod
    truth = rigid_transform(rotation, translation, center)
    fixed_grid = typical_grid(fixed_mod, center)
    moved_center = tuple(np.asarray(truth.TransformPoint(center)) + np.asarray(fov_shift))
    moving_grid = Grid.centered(moved_center, moving_fov, moving_spacing, moving_direction)  # type: ignore[arg-type]
    if kind == "self":
        pair = _pair_on_grids(fixed_mod, fixed_mod, truth, fixed_grid, fixed_grid,
                              resolution_mm=resolution_mm, source=source, seed=seed)
        pair = SyntheticPair(fixed=pair.fixed, moving=pair.fixed, truth=truth, brain_points=pair.brain_points,
                             fixed_modality=fixed_mod, moving_modality=fixed_mod)
    else:
        pair = _pair_on_grids(fixed_mod, moving_mod, truth, fixed_grid, moving_grid,
                              resolution_mm=resolution_mm, source=source, seed=seed, moving_brain_only=brain_only)
    spacing_text = "x".join(f"{s:g}" for s in pair.moving.GetSpacing())
    description = (
        f"{kind}: {pair.moving_modality.value}->{pair.fixed_modality.value}, rotation "
        f"{'/'.join(f'{a:+.0f}' for a in rotation)} deg, translation {np.linalg.norm(translation):.0f} mm, "
        f"moving voxels {spacing_text} mm{detail}"
    )
    return SyntheticCase(kind=kind, seed=seed, description=description, pair=pair)
