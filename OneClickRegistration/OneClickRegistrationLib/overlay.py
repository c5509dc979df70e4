"""The quality-control sheet (``overlay.png``): what a person looks at before trusting a registration.

Axial, coronal and sagittal planes through the fixed head's centre, in the radiological
convention whatever the files' voxel order (the planes are sampled in patient space, so an LAS
NIfTI and an LPS NRRD of one head give the same picture): patient's right on the left of the axial
and coronal views, anterior on the left of the sagittal view, superior and anterior up. Columns:
before (identity) and after (the registration), fixed in grey with the moving image's edges in
colour, then a checkerboard of fixed and registered moving. Modalities, engine, score before ->
after and the verdict are written on it.

Only the nine 2-D planes shown are resampled (intensity windows come from those planes too), so the
sheet costs a fraction of a second whatever the volume size. Drawing uses matplotlib's Agg backend;
without matplotlib the same mosaic is written without its text.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .images import atomic_path
from .transforms import affine_from_matrix, to_matrix

VIEW_PIXELS = 512  # side of each square view
GAP_PIXELS = 8
HEADER_PIXELS = 96
FOOTER_PIXELS = 36
CHECKER_SQUARES = 8
EDGE_RGB = (255, 200, 0)  # the moving image's edges; grey pixels never have this colour
EDGE_LEVELS = (0.2, 0.6)  # of the moving planes' intensity window: head outline, then denser tissue
COLUMNS = ("Before (identity)", "After (registered)", "After: checkerboard fixed / moving")
CONVENTION = ("Radiological convention: patient's right on the left of axial and coronal views, "
              "anterior on the left of sagittal views.")


@dataclass(frozen=True)
class Plane:
    """A view: its column and row directions in LPS patient space, and the letters at its edges."""

    name: str
    column_lps: tuple[float, float, float]  # direction of increasing column (left to right on screen)
    row_lps: tuple[float, float, float]  # direction of increasing row (top to bottom on screen)
    markers: tuple[str, str, str, str]  # left, right, top, bottom


PLANES = (
    Plane("Axial", (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), ("R", "L", "A", "P")),
    Plane("Coronal", (1.0, 0.0, 0.0), (0.0, 0.0, -1.0), ("R", "L", "S", "I")),
    Plane("Sagittal", (0.0, 1.0, 0.0), (0.0, 0.0, -1.0), ("A", "P", "S", "I")),
)


@dataclass(frozen=True)
class Caption:
    """What is written on the sheet."""

    fixed_modality: str = ""
    moving_modality: str = ""
    engine: str = ""
    metric: str = ""
    score_before: float | None = None
    score_after: float | None = None
    verdict: str = ""

    def lines(self) -> tuple[str, str]:
        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        first = f"{self.moving_modality or 'moving'} onto {self.fixed_modality or 'fixed'}"
        if self.engine == "none":  # judge_transform: a transform made elsewhere
            first += ", transform made elsewhere"
        elif self.engine:
            first += f" with {self.engine}"
        second = f"{self.metric.upper() or 'score'} {fmt(self.score_before)} -> {fmt(self.score_after)}"
        if self.verdict:
            second += f"    verdict: {self.verdict.upper()}"
        return first, second


def caption_for(result) -> Caption:
    """The caption of a :class:`~OneClickRegistrationLib.pipeline.RegistrationResult`."""
    return Caption(
        fixed_modality=result.fixed_modality.modality.value,
        moving_modality=result.moving_modality.modality.value,
        engine=result.engine,
        metric=result.metric,
        score_before=result.score_before.value,
        score_after=result.score_after.value,
        verdict=result.verdict.label,
    )


@dataclass(frozen=True)
class QcMosaic:
    """The sheet's pictures: ``rgb`` holds rows of views (one per plane) and columns of ``COLUMNS``."""

    rgb: np.ndarray  # uint8, (rows, columns, 3)
    pixel_mm: float  # size of a view pixel in millimetres
    center_lps: tuple[float, float, float]  # where the three planes cross

    def view(self, plane: int, column: int) -> np.ndarray:
        """One view (VIEW_PIXELS square) of the mosaic."""
        top, left = (VIEW_PIXELS + GAP_PIXELS) * plane, (VIEW_PIXELS + GAP_PIXELS) * column
        return self.rgb[top:top + VIEW_PIXELS, left:left + VIEW_PIXELS]


def _corners_lps(image: sitk.Image) -> np.ndarray:
    size = np.asarray(image.GetSize()) - 0.5
    corners = [(-0.5 + size[0] * i, -0.5 + size[1] * j, -0.5 + size[2] * k)
               for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    return np.array([image.TransformContinuousIndexToPhysicalPoint(c) for c in corners])


def head_center(image: sitk.Image, samples_per_axis: int = 48) -> np.ndarray:
    """The centroid of the brighter-than-average voxels of a strided sample (a few thousand voxels)."""
    array = sitk.GetArrayViewFromImage(image)
    steps = [max(1, n // samples_per_axis) for n in array.shape]
    sample = np.asarray(array[::steps[0], ::steps[1], ::steps[2]], dtype=np.float64)
    finite = np.isfinite(sample)
    inside = finite & (sample > sample[finite].mean()) if finite.any() else finite
    if not inside.any():
        return _corners_lps(image).mean(axis=0)
    zyx = np.argwhere(inside).mean(axis=0) * steps
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx[::-1])))


def _plane_grid(plane: Plane, center: np.ndarray, box_center: np.ndarray, side_mm: float) -> sitk.Image:
    """A one-slice 3-D reference image lying in ``plane`` through ``center``, square around the box."""
    column, row = np.asarray(plane.column_lps), np.asarray(plane.row_lps)
    normal = np.cross(column, row)
    pixel = side_mm / VIEW_PIXELS
    # In-plane: centred on the image's bounding box; across: through the head's centre.
    middle = box_center + normal * float(np.dot(center - box_center, normal))
    origin = middle - (column + row) * pixel * (VIEW_PIXELS - 1) / 2
    grid = sitk.Image(VIEW_PIXELS, VIEW_PIXELS, 1, sitk.sitkFloat32)
    grid.SetSpacing((pixel, pixel, pixel))
    grid.SetOrigin(tuple(float(v) for v in origin))
    grid.SetDirection(tuple(float(v) for v in np.column_stack([column, row, normal]).ravel()))
    return grid


def _sample(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """``image`` seen through ``transform`` (grid point -> image point) on the plane; NaN outside it."""
    plane = sitk.Resample(image, grid, transform, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(plane)[0].astype(np.float64)


def _window(planes: list[np.ndarray], ignore: float | None) -> tuple[float, float]:
    """Intensity window from the shown planes only (every 4th pixel each way is plenty)."""
    values = np.concatenate([p[::4, ::4][np.isfinite(p[::4, ::4])] for p in planes])
    if ignore is not None:
        values = values[values != ignore]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1.0, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def _scaled(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return np.clip((np.nan_to_num(plane, nan=lo) - lo) / (hi - lo), 0.0, 1.0)


def _edges(scaled: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Boundaries of the moving plane's iso-intensity regions, about two pixels wide."""
    edges = np.zeros(scaled.shape, dtype=bool)
    for level in EDGE_LEVELS:
        inside = (scaled > level) & valid
        changed = np.zeros_like(inside)
        changed[1:, :] |= inside[1:, :] != inside[:-1, :]
        changed[:, 1:] |= inside[:, 1:] != inside[:, :-1]
        edges |= changed & valid
    grown = edges.copy()
    grown[:-1, :] |= edges[1:, :]
    grown[:, :-1] |= edges[:, 1:]
    return grown


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=-1)


def qc_mosaic(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    before: sitk.Transform | None = None,
    after: sitk.Transform | None = None,
    fill_value: float | None = None,
) -> QcMosaic:
    """The views, with ``moving`` seen through ``before`` and ``after`` (fixed -> moving; None: identity)."""
    identity = sitk.Transform(3, sitk.sitkIdentity)
    corners = _corners_lps(fixed)
    box_center = (corners.min(axis=0) + corners.max(axis=0)) / 2
    side_mm = float((corners.max(axis=0) - corners.min(axis=0)).max())
    center = head_center(fixed)
    grids = [_plane_grid(plane, center, box_center, side_mm) for plane in PLANES]
    fixed_planes = [_sample(fixed, grid, identity) for grid in grids]
    moving_planes = [[_sample(moving, grid, t or identity) for grid in grids] for t in (before, after)]
    fixed_window = _window(fixed_planes, None)
    moving_window = _window([p for column in moving_planes for p in column], fill_value)
    size = 3 * VIEW_PIXELS + 2 * GAP_PIXELS
    mosaic = np.zeros((size, size, 3), dtype=np.uint8)
    yy, xx = np.indices((VIEW_PIXELS, VIEW_PIXELS))
    square = VIEW_PIXELS // CHECKER_SQUARES
    checker = ((yy // square + xx // square) % 2).astype(bool)
    for row, fixed_plane in enumerate(fixed_planes):
        base = _grey(_scaled(fixed_plane, fixed_window))
        views = []
        for column in moving_planes:
            plane = column[row]
            valid = np.isfinite(plane) if fill_value is None else np.isfinite(plane) & (plane != fill_value)
            view = base.copy()
            view[_edges(_scaled(plane, moving_window), valid)] = np.asarray(EDGE_RGB) / 255.0
            views.append(view)
        registered = _scaled(moving_planes[1][row], moving_window)
        views.append(np.where(checker[..., None], base, _grey(registered)))
        top = row * (VIEW_PIXELS + GAP_PIXELS)
        for column, view in enumerate(views):
            left = column * (VIEW_PIXELS + GAP_PIXELS)
            mosaic[top:top + VIEW_PIXELS, left:left + VIEW_PIXELS] = np.round(view * 255).astype(np.uint8)
    return QcMosaic(mosaic, side_mm / VIEW_PIXELS, tuple(float(v) for v in center))


def render_png(mosaic: QcMosaic, caption: Caption) -> bytes:
    """The sheet as PNG bytes: the mosaic pixel for pixel, with titles, markers and caption around it.

    matplotlib draws only the text, on a transparent canvas; it is laid over the mosaic here, which
    costs a fraction of what drawing the pictures through matplotlib would.
    """
    height, width = mosaic.rgb.shape[:2]
    total = height + HEADER_PIXELS + FOOTER_PIXELS
    sheet = np.zeros((total, width, 3), dtype=np.uint8)
    sheet[HEADER_PIXELS:HEADER_PIXELS + height] = mosaic.rgb
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from PIL import Image
    except ImportError:  # the views alone, still a useful picture
        return _plain_png(sheet)
    figure = Figure(figsize=(width / 100, total / 100), dpi=100)
    figure.patch.set_alpha(0.0)
    canvas = FigureCanvasAgg(figure)

    def text(x: float, y_from_top: float, words: str, **style: object) -> None:
        figure.text(x / width, 1 - y_from_top / total, words, color=style.pop("color", "white"), **style)

    first, second = caption.lines()
    text(12, 30, first, fontsize=17, weight="bold", va="center")
    verdict_colour = {"good": "#7fdc7f", "questionable": "#ffc04d", "failed": "#ff6b6b"}
    text(12, 58, second, fontsize=15, va="center", color=verdict_colour.get(caption.verdict.lower(), "white"))
    for column, title in enumerate(COLUMNS):
        text(column * (VIEW_PIXELS + GAP_PIXELS) + VIEW_PIXELS / 2, HEADER_PIXELS - 14, title,
             fontsize=12, ha="center", va="center")
    half = VIEW_PIXELS / 2
    marker = {"fontsize": 14, "weight": "bold", "color": "#66ccff"}
    for row, plane in enumerate(PLANES):
        top = HEADER_PIXELS + row * (VIEW_PIXELS + GAP_PIXELS)
        for column in range(len(COLUMNS)):
            left = column * (VIEW_PIXELS + GAP_PIXELS)
            west, east, north, south = plane.markers
            text(left + 6, top + half, west, ha="left", va="center", **marker)
            text(left + VIEW_PIXELS - 6, top + half, east, ha="right", va="center", **marker)
            text(left + half, top + 6, north, ha="center", va="top", **marker)
            text(left + half, top + VIEW_PIXELS - 6, south, ha="center", va="bottom", **marker)
            if column == 0:
                text(left + 6, top + 8, plane.name, ha="left", va="top", fontsize=12, color="#dddddd")
    text(12, total - FOOTER_PIXELS / 2, CONVENTION + "  Edges of the moving image in yellow.", fontsize=11,
         va="center", color="#bbbbbb")
    canvas.draw()
    layer = np.asarray(canvas.buffer_rgba())
    inked = layer[..., 3] > 0  # blend only where there is text: a few percent of the pixels
    alpha = layer[inked, 3:4].astype(np.float32) / 255.0
    sheet[inked] = np.round(layer[inked, :3] * alpha + sheet[inked] * (1.0 - alpha)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _plain_png(rgb: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sheet.png"
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
        return path.read_bytes()


def write_overlay(
    fixed: sitk.Image,
    registered: sitk.Image,
    path: str | os.PathLike[str],
    *,
    fill_value: float | None = None,
    transform: sitk.Transform | None = None,
    caption: Caption | None = None,
) -> Path:
    """Write the QC sheet as PNG (atomically).

    ``registered`` is the moving image resampled on the fixed grid; with ``transform`` (fixed ->
    moving) the "before" views show it moved back to where the moving image was.
    """
    before = None
    if transform is not None:
        before = affine_from_matrix(np.linalg.inv(to_matrix(transform)))
    mosaic = qc_mosaic(fixed, registered, before=before, after=None, fill_value=fill_value)
    png = render_png(mosaic, caption or Caption())
    with atomic_path(path) as partial, open(partial, "wb") as handle:
        handle.write(png)
    return Path(path)
