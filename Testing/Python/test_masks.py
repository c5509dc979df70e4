"""Head masks on synthetic heads with a known head region, odd grids and degenerate images."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import metrics, synthetic
from OneClickRegistrationLib.errors import InputError
from OneClickRegistrationLib.masks import head_mask

COARSEN = 3.0  # 2.7-3 mm in-plane, thick slices for T2/FLAIR/CT: small and fast


def true_head(image: sitk.Image) -> np.ndarray:
    """Where the synthetic head (any tissue) covers at least half of a voxel of ``image``."""
    subject = synthetic.make_subject(resolution_mm=2.5)
    tissue = sum(subject.tissues[name] for name in synthetic.TISSUES)
    return sitk.GetArrayFromImage(sitk.Resample(tissue, image, sitk.Transform(), sitk.sitkLinear, 0.0)) > 0.5


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.count_nonzero(a & b)) / float(np.count_nonzero(a) + np.count_nonzero(b))


def render(modality: str, **grid_options) -> sitk.Image:
    subject = synthetic.make_subject(resolution_mm=2.5)
    grid = synthetic.typical_grid(modality, subject.head_center, coarsen=COARSEN, **grid_options)
    return synthetic.render(modality, grid, resolution_mm=2.5)


@pytest.mark.parametrize("modality", ["T1", "T2", "FLAIR", "CT"])
def test_mask_matches_the_synthetic_head(modality):
    image = render(modality)
    mask = head_mask(image, modality=modality)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == image.GetSize()
    assert mask.GetOrigin() == image.GetOrigin() and mask.GetSpacing() == image.GetSpacing()
    found = sitk.GetArrayFromImage(mask).astype(bool)
    truth = true_head(image)
    assert dice(found, truth) > 0.93
    assert not found[0, 0, 0] and not found[-1, -1, -1]  # corners are air
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1}


def test_mask_is_solid_inside_the_head():
    image = render("T2")  # CSF and ventricles bright, skull dark: holes to fill and gaps to close
    found = sitk.GetArrayFromImage(head_mask(image)).astype(bool)
    eroded = sitk.GetArrayFromImage(
        sitk.BinaryErode(sitk.Cast(sitk.GetImageFromArray(true_head(image).astype(np.uint8)), sitk.sitkUInt8),
                         [3, 3, 1]))
    inner = eroded.astype(bool)
    assert inner.any()
    assert found[inner].all()


def test_modality_is_guessed_from_hounsfield_units():
    image = render("CT")
    assert np.array_equal(sitk.GetArrayFromImage(head_mask(image)),
                          sitk.GetArrayFromImage(head_mask(image, modality="CT")))


def test_ct_not_in_hounsfield_units_still_works():
    image = render("CT")
    shifted = sitk.Cast(sitk.Add(sitk.Cast(image, sitk.sitkInt32), 1024), sitk.sitkUInt16)  # air at 0
    found = sitk.GetArrayFromImage(head_mask(shifted, modality="CT")).astype(bool)
    assert dice(found, true_head(image)) > 0.9


def test_disconnected_table_is_dropped():
    image = render("CT")
    array = sitk.GetArrayFromImage(image)
    y = array.shape[1] - 3  # a bright plate a few voxels from the edge, detached from the head
    array[:, y:y + 2, 5:-5] = 300
    with_table = sitk.GetImageFromArray(array)
    with_table.CopyInformation(image)
    found = sitk.GetArrayFromImage(head_mask(with_table)).astype(bool)
    assert not found[:, y:y + 2, 5:-5].any()
    assert dice(found, true_head(image)) > 0.93


def test_oblique_direction_gives_the_same_voxels():
    image = render("T1")
    oblique = sitk.Image(image)
    rotation = sitk.VersorTransform((0.2, -0.4, 0.3), 0.5).GetMatrix()
    oblique.SetDirection(rotation)
    straight_mask = sitk.GetArrayFromImage(head_mask(image))
    oblique_mask = head_mask(oblique)
    assert oblique_mask.GetDirection() == oblique.GetDirection()
    assert np.array_equal(sitk.GetArrayViewFromImage(oblique_mask), straight_mask)


def test_anisotropic_thick_slices():
    image = render("FLAIR")  # 2.7 x 2.7 x 15 mm after coarsening
    assert max(image.GetSpacing()) / min(image.GetSpacing()) > 4
    found = sitk.GetArrayFromImage(head_mask(image)).astype(bool)
    assert dice(found, true_head(image)) > 0.9


def test_nan_voxels_are_background():
    image = sitk.Cast(render("T1"), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[:, :, :3] = np.nan
    with_nan = sitk.GetImageFromArray(array)
    with_nan.CopyInformation(image)
    found = sitk.GetArrayFromImage(head_mask(with_nan)).astype(bool)
    assert not found[:, :, :3].any()
    assert found.sum() > 0.2 * found.size


@pytest.mark.parametrize("fill", [0.0, -1024.0, 7.5, np.nan])
def test_image_without_structure_gives_an_empty_mask(fill):
    image = sitk.GetImageFromArray(np.full((5, 6, 7), fill, np.float32))
    mask = head_mask(image)
    assert mask.GetPixelID() == sitk.sitkUInt8 and mask.GetSize() == (7, 6, 5)
    assert not sitk.GetArrayViewFromImage(mask).any()


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 2), (2, 3, 1), (3, 3, 3), (1, 40, 40)])
def test_tiny_images_do_not_crash(shape):
    rng = np.random.default_rng(sum(shape))
    for dtype in (np.uint8, np.int16, np.float64):
        image = sitk.GetImageFromArray((rng.random(shape) * 100).astype(dtype))
        image.SetSpacing((0.5, 2.0, 7.0))
        mask = head_mask(image, modality="T1")
        assert mask.GetSize() == image.GetSize()
        assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1}


def test_masked_score_is_not_dominated_by_air():
    pair = synthetic.make_pair("T1", "T1", rotation_deg=(0, 0, 8), translation_mm=(12, -6, 4),
                               coarsen=COARSEN)
    masks = {"fixed_mask": head_mask(pair.fixed), "moving_mask": head_mask(pair.moving)}

    def gain(**options) -> float:
        aligned = metrics.score(pair.fixed, pair.moving, transform=pair.truth, **options).value
        misaligned = metrics.score(pair.fixed, pair.moving, **options).value
        return aligned - misaligned

    # Air matches air in any alignment; without it, misalignment costs much more of the score.
    assert gain(**masks) > 1.5 * gain()


@pytest.mark.parametrize(("image", "words"), [
    (sitk.Image([8, 8], sitk.sitkFloat32), "3D"),
    (sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 2), "scalar"),
    (sitk.Image([4, 4, 4], sitk.sitkComplexFloat32), "real scalar"),
    ("head.nii", "SimpleITK image"),
], ids=["2d", "vector", "complex", "path"])
def test_wrong_inputs_raise_input_error(image, words):
    with pytest.raises(InputError, match=words):
        head_mask(image)  # type: ignore[arg-type]


def test_unknown_modality_is_an_input_error():
    with pytest.raises(InputError, match="Unknown modality"):
        head_mask(sitk.Image([4, 4, 4], sitk.sitkUInt8), modality="PET")


def test_head_overlap_is_the_fixed_head_inside_a_slab_and_none_for_a_whole_head():
    from OneClickRegistrationLib.masks import OVERLAP_MARGIN_MM, head_overlap

    subject = synthetic.make_subject(resolution_mm=2.5)
    center = subject.head_center
    fixed = synthetic.render("CT", synthetic.typical_grid("CT", center, coarsen=COARSEN), resolution_mm=2.5)
    fixed_head = head_mask(fixed, modality="CT")
    whole = synthetic.render("T1", synthetic.typical_grid("T1", center, coarsen=COARSEN), resolution_mm=2.5)
    assert head_overlap(fixed_head, whole, sitk.Euler3DTransform()).mask is None
    slab_grid = synthetic.Grid.centered(center, (200.0, 240.0, 60.0), (3.0, 3.0, 3.0))
    slab = synthetic.render("T1", slab_grid, resolution_mm=2.5)
    mask = head_overlap(fixed_head, slab, sitk.Euler3DTransform()).mask
    assert mask is not None and metrics.same_grid(mask, fixed)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    head = sitk.GetArrayViewFromImage(fixed_head) > 0
    assert not np.any(inside & ~head)  # never outside the head
    z = np.asarray([fixed.TransformIndexToPhysicalPoint((0, 0, int(k)))[2] for k in range(fixed.GetSize()[2])])
    rows = np.any(inside, axis=(1, 2))
    # only slices within the slab, less the margin kept for the optimizer's moves
    assert np.all(np.abs(z[rows] - center[2]) <= 30.0 - OVERLAP_MARGIN_MM + fixed.GetSpacing()[2])
    assert rows.sum() >= 2
    # the same slab moved out of the head leaves nothing better to offer than the whole image
    away = sitk.TranslationTransform(3, (0.0, 0.0, 400.0))
    assert head_overlap(fixed_head, slab, away).mask is None


@pytest.mark.parametrize("factors", [(2, 2, 2), (3, 3, 1), (4, 4, 4), (6, 6, 6), (5, 3, 2)])
@pytest.mark.parametrize("share", [0.5, 0.25])
def test_shrunk_mask_keeps_the_blocks_with_at_least_the_share_inside(factors, share):
    from OneClickRegistrationLib.masks import shrink_mask

    fx, fy, fz = factors
    rng = np.random.default_rng(sum(factors))
    nz, ny, nx = 5, 4, 3  # whole blocks, plus a ragged edge that BinShrink leaves out
    block_voxels = fx * fy * fz
    # every count from empty to full, the exact ties (share * voxels) included
    counts = rng.permutation(np.resize(np.arange(block_voxels + 1), nz * ny * nx)).reshape(nz, ny, nx)
    values = np.zeros((nz * fz + (fz > 1), ny * fy + (fy > 1), nx * fx + (fx > 1)), np.uint8)
    for (z, y, x), count in np.ndenumerate(counts):
        block = np.zeros(block_voxels, np.uint8)
        block[rng.permutation(block_voxels)[:count]] = 1
        values[z * fz:(z + 1) * fz, y * fy:(y + 1) * fy, x * fx:(x + 1) * fx] = block.reshape(fz, fy, fx)
    mask = sitk.GetImageFromArray(values)
    mask.SetSpacing((0.5, 0.7, 1.5))
    mask.SetOrigin((3.0, -2.0, 7.0))
    mask.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    shrunk = shrink_mask(mask, factors, share=share)
    reference = sitk.BinShrink(sitk.Cast(mask, sitk.sitkFloat32), factors)
    assert shrunk.GetPixelID() == sitk.sitkUInt8
    assert shrunk.GetSize() == reference.GetSize() and shrunk.GetSpacing() == reference.GetSpacing()
    assert shrunk.GetOrigin() == reference.GetOrigin() and shrunk.GetDirection() == reference.GetDirection()
    assert np.array_equal(sitk.GetArrayFromImage(shrunk), (counts >= share * block_voxels).astype(np.uint8))


def test_of_equal_components_the_first_in_raster_order_is_kept():
    from OneClickRegistrationLib.masks import _largest_label

    values = np.zeros((20, 10, 10), np.uint8)
    values[12:16, 2:6, 2:6] = 1  # the same size, later in raster order (z is numpy's first axis)
    values[2:6, 4:8, 4:8] = 1
    values[8, 0, 0] = 1  # a speck
    kept = sitk.GetArrayFromImage(_largest_label(sitk.ConnectedComponent(sitk.GetImageFromArray(values), False)))
    assert kept.sum() == 64 and kept[2:6, 4:8, 4:8].all()


@pytest.mark.parametrize("shift_mm", [0.0, 8.0, 30.0, 90.0])
def test_head_overlap_is_the_voxel_count_rule_whatever_the_shift(shift_mm):
    from OneClickRegistrationLib.masks import OVERLAP_MARGIN_MM, WHOLE_OVERLAP_SHARE, head_overlap

    subject = synthetic.make_subject(resolution_mm=2.5)
    center = subject.head_center
    fixed = synthetic.render("T1", synthetic.typical_grid("T1", center, coarsen=COARSEN), resolution_mm=2.5)
    fixed_head = head_mask(fixed, modality="T1")
    moving = synthetic.render("CT", synthetic.typical_grid("CT", center, coarsen=COARSEN), resolution_mm=2.5)
    transform = sitk.Euler3DTransform(center, 0.05, -0.03, 0.1, (shift_mm, -0.5 * shift_mm, 0.3 * shift_mm))
    # The rule voxel by voxel: the moving grid less the margin, mapped onto the fixed grid.
    size = moving.GetSize()
    border = [min(round(OVERLAP_MARGIN_MM / s), (n - 1) // 2) for n, s in zip(size, moving.GetSpacing())]
    inner = np.zeros(size[::-1], np.uint8)
    inner[border[2]:size[2] - border[2], border[1]:size[1] - border[1], border[0]:size[0] - border[0]] = 1
    domain = sitk.GetImageFromArray(inner)
    domain.CopyInformation(moving)
    mapped = sitk.GetArrayFromImage(sitk.Resample(domain, fixed, transform, sitk.sitkNearestNeighbor, 0)) > 0
    head = sitk.GetArrayFromImage(fixed_head) > 0
    inside = head & mapped
    found = head_overlap(fixed_head, moving, transform).mask
    if inside.sum() == 0 or inside.sum() >= WHOLE_OVERLAP_SHARE * head.sum():
        assert found is None
    else:
        assert found is not None and np.array_equal(sitk.GetArrayFromImage(found) > 0, inside)
