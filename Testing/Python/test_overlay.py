"""The QC sheet: size, anatomical orientation whatever the voxel order, and a visible 2 mm error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import overlay, synthetic

VIEWS = {"axial": 0, "coronal": 1, "sagittal": 2}
BEFORE, AFTER, CHECKER = 0, 1, 2
HALF = overlay.VIEW_PIXELS / 2


def _edge_mask(view: np.ndarray) -> np.ndarray:
    return np.all(view == np.asarray(overlay.EDGE_RGB, dtype=np.uint8), axis=-1)


def test_sheet_is_a_png_of_the_expected_size_with_the_views_unscaled(tmp_path: Path,
                                                                      t1_ct_pair: synthetic.SyntheticPair) -> None:
    registered = sitk.Resample(t1_ct_pair.moving, t1_ct_pair.fixed, t1_ct_pair.truth, sitk.sitkLinear, -1024.0)
    caption = overlay.Caption("T1", "CT", "elastix", "nmi", 1.0123456, 1.0876543, "good")
    path = overlay.write_overlay(t1_ct_pair.fixed, registered, tmp_path / "overlay.png", fill_value=-1024.0,
                                 transform=t1_ct_pair.truth, caption=caption)
    sheet = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    side = 3 * overlay.VIEW_PIXELS + 2 * overlay.GAP_PIXELS
    assert sheet.shape == (side + overlay.HEADER_PIXELS + overlay.FOOTER_PIXELS, side, 3)
    assert overlay.VIEW_PIXELS >= 512
    mosaic = overlay.qc_mosaic(t1_ct_pair.fixed, registered, fill_value=-1024.0,
                               before=overlay.affine_from_matrix(np.linalg.inv(overlay.to_matrix(t1_ct_pair.truth))))
    views = sheet[overlay.HEADER_PIXELS:overlay.HEADER_PIXELS + side]
    # the views are the mosaic pixel for pixel, apart from the letters drawn over them
    same = np.all(views == mosaic.rgb, axis=-1)
    assert same.mean() > 0.97
    # the caption is drawn: the header is not empty, and the edge colour appears in the views
    assert sheet[: overlay.HEADER_PIXELS].max() > 200
    assert _edge_mask(mosaic.view(VIEWS["axial"], AFTER)).sum() > 200
    assert caption.lines() == ("CT onto T1 with elastix", "NMI 1.0123 -> 1.0877    verdict: GOOD")


def _with_blobs(image: sitk.Image, center: np.ndarray, offsets_mm: list[tuple[float, float, float]]) -> sitk.Image:
    """A copy of ``image`` with black balls (6 mm radius) at ``center + offset`` (LPS)."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    zz, yy, xx = np.indices(array.shape)
    index = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3).astype(float)
    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    points = np.asarray(image.GetOrigin()) + (index * spacing) @ direction.T
    dark = float(array.min())  # black in the brain: a large change whatever the intensity window
    for offset in offsets_mm:
        inside = np.linalg.norm(points - (center + np.asarray(offset)), axis=1) < 6.0
        array.reshape(-1)[inside] = dark
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result


def _blob_position(with_blob: np.ndarray, without: np.ndarray, box: int = 15) -> np.ndarray:
    """(row, column) of the densest patch of changed pixels (the marker; a slightly different intensity
    window also flips scattered single pixels)."""
    changed = (np.abs(with_blob.astype(int) - without.astype(int)).max(axis=-1) > 60).astype(int)
    sums = np.pad(changed, ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)
    counts = sums[box:, box:] - sums[:-box, box:] - sums[box:, :-box] + sums[:-box, :-box]
    assert counts.max() > box * box // 2, "the marker does not show in this view"
    return np.asarray(np.unravel_index(np.argmax(counts), counts.shape), dtype=float) + box / 2


@pytest.mark.parametrize("orientation", ["LPS", "LAS", "RAS"])
def test_orientation_is_anatomical_whatever_the_voxel_order(orientation: str,
                                                             t1_t2_pair: synthetic.SyntheticPair) -> None:
    lps = sitk.DICOMOrient(sitk.Cast(t1_t2_pair.fixed, sitk.sitkFloat32), "LPS")
    center = overlay.head_center(lps)
    # One marker in each displayed plane: left-anterior (axial), left-superior (coronal),
    # anterior-superior (sagittal). LPS: +x is left, -y anterior, +z superior.
    marked = _with_blobs(lps, center, [(30.0, -30.0, 0.0), (30.0, 0.0, 30.0), (0.0, -30.0, 30.0)])
    plain, shown = sitk.DICOMOrient(lps, orientation), sitk.DICOMOrient(marked, orientation)
    expected_direction = {"LPS": (1, 1, 1), "LAS": (1, -1, 1), "RAS": (-1, -1, 1)}[orientation]
    assert np.diag(np.reshape(shown.GetDirection(), (3, 3))).tolist() == list(expected_direction)
    # the moving side (edges) is the same in both pictures: only the fixed grey differs
    without = overlay.qc_mosaic(plain, plain)
    with_blobs = overlay.qc_mosaic(shown, plain)
    rows_columns = {name: _blob_position(with_blobs.view(row, BEFORE), without.view(row, BEFORE))
                    for name, row in VIEWS.items()}
    # radiological: the patient's left on the right of axial and coronal views; anterior and superior up;
    # anterior on the left of the sagittal view
    row, column = rows_columns["axial"]
    assert column > HALF + 30 and row < HALF - 30
    row, column = rows_columns["coronal"]
    assert column > HALF + 30 and row < HALF - 30
    row, column = rows_columns["sagittal"]
    assert column < HALF - 30 and row < HALF - 30
    # 30 mm from the centre lands 30 mm / pixel size (64 px) from the head's centre in the view; the
    # locator finds a 15 px patch of a 12 mm ball, so within 8 px (4 mm)
    head_column = HALF - 0.5 + (center[0] - _box_center(lps)[0]) / with_blobs.pixel_mm
    assert abs(rows_columns["axial"][1] - head_column - 30.0 / with_blobs.pixel_mm) < 8.0


def _box_center(image: sitk.Image) -> np.ndarray:
    corners = overlay._corners_lps(image)
    return (corners.min(axis=0) + corners.max(axis=0)) / 2


def _best_shift(reference: np.ndarray, moved: np.ndarray, axis: int, search: int = 12) -> int:
    overlaps = {s: int(np.sum(reference & np.roll(moved, -s, axis=axis))) for s in range(-search, search + 1)}
    return max(overlaps, key=overlaps.__getitem__)


@pytest.mark.parametrize(("axis_lps", "view", "image_axis"), [(0, "axial", 1), (2, "coronal", 0)])
def test_a_2_mm_error_is_visible_in_the_after_view(axis_lps: int, view: str, image_axis: int,
                                                   t1_ct_pair: synthetic.SyntheticPair) -> None:
    shift = [0.0, 0.0, 0.0]
    shift[axis_lps] = 2.0
    wrong = sitk.CompositeTransform([t1_ct_pair.truth, sitk.TranslationTransform(3, shift)])
    truth_sheet = overlay.qc_mosaic(t1_ct_pair.fixed, t1_ct_pair.moving, after=t1_ct_pair.truth, fill_value=-1024.0)
    again = overlay.qc_mosaic(t1_ct_pair.fixed, t1_ct_pair.moving, after=t1_ct_pair.truth, fill_value=-1024.0)
    wrong_sheet = overlay.qc_mosaic(t1_ct_pair.fixed, t1_ct_pair.moving, after=wrong, fill_value=-1024.0)
    truth_edges = _edge_mask(truth_sheet.view(VIEWS[view], AFTER))
    wrong_edges = _edge_mask(wrong_sheet.view(VIEWS[view], AFTER))
    assert _best_shift(truth_edges, _edge_mask(again.view(VIEWS[view], AFTER)), image_axis) == 0
    measured = _best_shift(truth_edges, wrong_edges, image_axis)
    expected = 2.0 / truth_sheet.pixel_mm  # about 4 pixels on these views
    assert expected > 3.0
    assert abs(abs(measured) - expected) <= 1.0, (measured, expected)
    # and most of the edge pixels moved: the picture is visibly different from the truth's
    assert np.sum(truth_edges & wrong_edges) < 0.5 * truth_edges.sum()


def test_every_registration_output_has_the_sheet_with_its_caption(tmp_path: Path,
                                                                  t1_t2_pair: synthetic.SyntheticPair) -> None:
    from OneClickRegistrationLib import judge_transform, outputs

    result = judge_transform(t1_t2_pair.fixed, t1_t2_pair.moving, t1_t2_pair.truth,
                             fixed_modality="T1", moving_modality="T2")
    written = outputs.write_outputs(result, t1_t2_pair.fixed, tmp_path / "out")
    sheet = sitk.ReadImage(str(written["overlay"]))
    side = 3 * overlay.VIEW_PIXELS + 2 * overlay.GAP_PIXELS
    assert sheet.GetSize() == (side, side + overlay.HEADER_PIXELS + overlay.FOOTER_PIXELS)
    first, second = overlay.caption_for(result).lines()
    assert first == "T2 onto T1, transform made elsewhere"
    assert second.startswith(result.metric.upper()) and second.endswith(f"verdict: {result.verdict.label.upper()}")
