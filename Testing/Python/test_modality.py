"""Modality detection: names, DICOM-like metadata (incl. real pydicom headers), TR/TE/TI physics,
intensities (synthetic CT/MR and real images), user override and the combination rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from OneClickRegistrationLib import modality_intensity, synthetic
from OneClickRegistrationLib.errors import InputError
from OneClickRegistrationLib.modality import (
    Modality,
    ModalityEvidence,
    _name_text,
    detect_modality,
    metadata_from_file,
    metadata_from_image,
)
from OneClickRegistrationLib.modality_intensity import read_contrast

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

M = Modality


def _nibabel_file(name: str) -> Path:
    nibabel = pytest.importorskip("nibabel")
    return Path(nibabel.__file__).parent / "tests" / "data" / name


def _keyword_metadata(dataset) -> dict[str, str]:
    """A pydicom Dataset as keyword -> text, the way a caller without SimpleITK tags would pass it."""
    return {elem.keyword: str(elem.value) for elem in dataset
            if elem.keyword and elem.VR not in ("SQ", "OB", "OW", "OF", "UN")}


# ------------------------------------------------------------------------------------- names

@pytest.mark.parametrize(("name", "expected"), [
    ("T1_MPRAGE", M.T1),
    ("sub-01_T1w.nii.gz", M.T1),
    ("sub-01_T2w.nii.gz", M.T2),
    ("sub01T2w", M.T2),
    ("3D_FLAIR_SAG", M.FLAIR),
    ("AX T2 FLAIR", M.FLAIR),
    ("T2_FLAIR", M.FLAIR),
    ("tirm_tra_dark-fluid", M.FLAIR),
    ("Dark Fluid 5mm", M.FLAIR),
    ("BraTS2021_00000_t2f.nii.gz", M.FLAIR),
    ("BraTS2021_00000_t1c.nii.gz", M.T1),
    ("t1ce", M.T1),
    ("T1+C", M.T1),
    ("AX_T1_POST", M.T1),
    ("3DT1", M.T1),
    ("AxT1", M.T1),
    ("mp2rage_UNI", M.T1),
    ("Sag FSPGR BRAVO", M.T1),
    ("T1 FLAIR", M.T1),  # GE's T1 FLAIR is a T1-weighted inversion recovery
    ("T1FLAIR_AX", M.T1),
    ("Head CT 5mm", M.CT),
    ("ct_head", M.CT),
    ("brain-ct", M.CT),
    ("HeadCT", M.CT),
    ("CTHead", M.CT),
    ("CTA_circle_of_willis", M.CT),
    ("4DCT", M.CT),
    ("NCCT", M.CT),
    ("/data/CT_MR_study/sub-01_T1w.nii.gz", M.T1),  # folders are not evidence
    (Path("/data/scans/ct_head.nrrd"), M.CT),
])
def test_name_tokens(name, expected):
    evidence = detect_modality(name=name)
    assert evidence.modality is expected
    assert evidence.source == "name"
    assert evidence.confidence == pytest.approx(0.75)
    assert "name '" in evidence.detail and "contains" in evidence.detail


@pytest.mark.parametrize("name", [
    "direct", "project", "abstract", "CTO", "Octopus", "contact", "selection", "factor",
    "T10", "T12_map", "Patient_1", "series_12", "scan", "volume", "3D", "actual",
])
def test_words_that_merely_contain_the_letters_do_not_match(name):
    evidence = detect_modality(name=name)
    assert evidence.source == "default"
    assert evidence.modality is M.MR
    assert evidence.confidence <= 0.1


@pytest.mark.parametrize(("name", "token"), [
    ("T2*_GRE", "t2*"), ("T2star_axial", "t2*"), ("DWI_b1000", "dwi"), ("SWI", "swi"),
    ("PD_TSE", "pd"), ("ep2d_diff", "ep2"), ("STIR_cor", "stir"),
])
def test_mr_words_that_are_not_t1_t2_flair_give_generic_mr(name, token):
    evidence = detect_modality(name=name)
    assert (evidence.modality, evidence.source) == (M.MR, "name")
    assert 0.4 <= evidence.confidence <= 0.6
    assert f"'{token}'" in evidence.detail


def test_name_with_several_contrasts_is_generic_mr_with_low_confidence():
    evidence = detect_modality(name="T1_T2_ratio")
    assert (evidence.modality, evidence.source) == (M.MR, "name")
    assert evidence.confidence <= 0.4
    assert "T1/T2" in evidence.detail


def test_name_with_ct_and_mr_words_does_not_decide_and_intensities_do():
    assert detect_modality(name="T1_registered_to_CT").source == "default"
    evidence = detect_modality(_ct_like(), name="T1_registered_to_CT")
    assert (evidence.modality, evidence.source) == (M.CT, "intensity")
    assert "mentions both CT and MR" in evidence.detail


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_name_gives_valid_evidence(name):
    evidence = detect_modality(name=name)
    # A name alone either decides, saying which words did, or leaves the low-confidence default.
    if evidence.source == "name":
        # The detail quotes the name as read: stripped of surrounding blanks, folders and suffix.
        assert evidence.confidence >= 0.4 and f"name '{_name_text(name)}'" in evidence.detail
    else:
        assert (evidence.source, evidence.modality, evidence.confidence) == ("default", Modality.MR, 0.1)
    assert detect_modality(name=name) == evidence  # the same name always gives the same answer


# ----------------------------------------------------------------------------------- metadata

@pytest.mark.parametrize("metadata", [
    {"0008|0060": "CT"},
    {"0008|0060": "CT ", "0008|103e": "AX T1"},  # the Modality tag beats words in descriptions
    {"(0008,0060)": "CT"},
    {"Modality": "ct"},
    {"DICOM.Modality": "CT"},
    {"0008|0016": "1.2.840.10008.5.1.4.1.1.2"},  # CT Image Storage SOP class, no Modality
])
def test_metadata_ct(metadata):
    evidence = detect_modality(metadata=metadata)
    assert (evidence.modality, evidence.source) == (M.CT, "metadata")
    assert evidence.confidence >= 0.95


@pytest.mark.parametrize(("metadata", "expected", "words"), [
    ({"0008|0060": "MR", "0008|103e": "AX T2 FLAIR"}, M.FLAIR,
     "SeriesDescription 'AX T2 FLAIR' contains 'flair'"),
    ({"Modality": "MR", "SeriesDescription": "sag 3D MPRAGE"}, M.T1, "'mprage'"),
    ({"Modality": "MR", "ProtocolName": "t2_tse_tra"}, M.T2, "ProtocolName 't2_tse_tra'"),
    ({"0008|0060": "MR", "0018|0024": "*tfl3d1_16ns"}, M.T1, "SequenceName"),
    ({"DICOM.Modality": "MR", "DICOM.SeriesDescription": "Ax T1 SE"}, M.T1, "'t1'"),
    ({"0008|0060": "MR", "0008|103e": "MR HEAD", "0018|1030": "AX FLAIR"}, M.FLAIR, "ProtocolName"),
])
def test_metadata_descriptions(metadata, expected, words):
    evidence = detect_modality(metadata=metadata)
    assert (evidence.modality, evidence.source) == (expected, "metadata")
    assert evidence.confidence == pytest.approx(0.9)
    assert words in evidence.detail


def test_description_without_modality_tag_still_decides():
    evidence = detect_modality(metadata={"descrip": "T2w TSE"})
    assert (evidence.modality, evidence.source) == (M.T2, "metadata")
    assert evidence.confidence == pytest.approx(0.85)


def test_metadata_mr_without_contrast_is_generic_mr():
    evidence = detect_modality(metadata={"0008|0060": "MR", "0008|103e": "localizer"})
    assert (evidence.modality, evidence.source) == (M.MR, "metadata")
    assert evidence.confidence == pytest.approx(0.7)
    assert "no description, protocol or TR/TE" in evidence.detail


def test_other_dicom_modality_is_ignored_and_said():
    evidence = detect_modality(metadata={"0008|0060": "PT"}, name="brain_T1w")
    assert (evidence.modality, evidence.source) == (M.T1, "name")
    assert "'PT' is neither CT nor MR" in evidence.detail


def test_metadata_without_known_keys_is_no_evidence():
    evidence = detect_modality(metadata={"ITK_FileNotes": "x", "qform_code": "1"})
    assert evidence.source == "default"


# ------------------------------------------------------------------- real DICOM headers (pydicom)

def test_real_ct_dicom_header_read_by_simpleitk():
    metadata = metadata_from_file(get_testdata_file("CT_small.dcm"))
    assert metadata["0008|0060"] == "CT"
    evidence = detect_modality(metadata=metadata)
    assert (evidence.modality, evidence.source, evidence.confidence) == (M.CT, "metadata", 0.98)
    assert "DICOM Modality 'CT'" in evidence.detail


def test_real_mr_dicom_header_read_by_simpleitk_is_t2_by_its_tr_te():
    metadata = metadata_from_file(get_testdata_file("MR_small.dcm"))
    # The file's own header: a spin echo with TR 4000 ms and TE 240 ms, i.e. heavily T2-weighted.
    assert metadata["0008|0060"] == "MR"
    assert float(metadata["0018|0080"]) == 4000.0 and float(metadata["0018|0081"]) == 240.0
    evidence = detect_modality(metadata=metadata)
    assert (evidence.modality, evidence.source) == (M.T2, "metadata")
    assert evidence.confidence == pytest.approx(0.8)
    assert "TR 4000 ms, TE 240 ms" in evidence.detail


@pytest.mark.parametrize(("file", "expected"), [("CT_small.dcm", M.CT), ("MR_small.dcm", M.T2)])
def test_real_dicom_as_pydicom_keyword_metadata(file, expected):
    dataset = pydicom.dcmread(get_testdata_file(file), stop_before_pixels=True)
    metadata = _keyword_metadata(dataset)
    assert "Modality" in metadata
    evidence = detect_modality(metadata=metadata)
    assert (evidence.modality, evidence.source) == (expected, "metadata")


def test_real_dicom_image_metadata_and_pixels_agree():
    image = sitk.ReadImage(get_testdata_file("CT_small.dcm"))
    metadata = metadata_from_image(image)
    assert metadata["0008|0060"] == "CT"
    evidence = detect_modality(image, metadata=metadata, name="CT_small.dcm")
    assert (evidence.modality, evidence.source, evidence.confidence) == (M.CT, "metadata", 0.98)
    assert "conflict" not in evidence.detail
    # The pixels alone also carry the Hounsfield signature (air near -850 in this small body slice).
    by_pixels = detect_modality(image)
    assert (by_pixels.modality, by_pixels.source) == (M.CT, "intensity")


def test_metadata_from_file_reads_a_single_series_folder(tmp_path):
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "slice.dcm")
    assert metadata_from_file(tmp_path)["0008|0060"] == "MR"


@pytest.mark.parametrize("kind", ["missing", "not an image", "empty folder"])
def test_metadata_from_file_errors(tmp_path, kind):
    if kind == "missing":
        path = tmp_path / "nope.dcm"
    elif kind == "not an image":
        path = tmp_path / "notes.txt"
        path.write_text("hello")
    else:
        path = tmp_path
    with pytest.raises(InputError, match=str(tmp_path.name)):
        metadata_from_file(path)


def test_metadata_from_nifti_header():
    metadata = metadata_from_file(_nibabel_file("anatomical.nii"))
    assert metadata["descrip"] == "spm - 3D normalized"


# ------------------------------------------------------------------------------- TR/TE/TI rules

@pytest.mark.parametrize(("tr", "te", "ti", "sequence", "expected", "why"), [
    (9000, 120, 2500, "SE\\IR", M.FLAIR, "FLAIR"),
    (5000, 390, 1800, "SE\\IR", M.FLAIR, "FLAIR"),  # 3D FLAIR (SPACE/CUBE)
    (2300, 2.98, 900, "GR\\IR", M.T1, "MPRAGE"),
    (8.2, 3.2, 450, "GR\\IR", M.T1, "IR-SPGR"),
    (2200, 20, 850, "SE\\IR", M.T1, "T1 FLAIR"),
    (500, 15, None, "SE", M.T1, "short TR and short TE"),
    (20, 4, None, "GR", M.T1, "short TR and short TE"),
    (4000, 100, None, "SE", M.T2, "long TR and long TE"),
    (3000, 15, None, "SE", M.MR, "proton-density"),
    (650, 20, None, "GR", M.MR, "T2*"),
    (5000, 90, None, "EP", M.MR, "echo-planar"),
    (6000, 70, 170, "SE\\IR", M.MR, "STIR"),
    (5000, 3, 2500, "GR\\IR", M.MR, "neither"),  # MP2RAGE second inversion: long TI, short TE
    (1500, 50, None, "SE", M.MR, "intermediate"),
])
def test_physics_rules(tr, te, ti, sequence, expected, why):
    metadata = {"0008|0060": "MR", "0018|0080": str(tr), "0018|0081": str(te), "0018|0020": sequence}
    if ti is not None:
        metadata["0018|0082"] = str(ti)
    evidence = detect_modality(metadata=metadata)
    assert (evidence.modality, evidence.source) == (expected, "metadata")
    assert why in evidence.detail
    assert evidence.confidence == pytest.approx(0.8 if expected in (M.T1, M.T2, M.FLAIR) else 0.7)


def test_bids_sidecar_times_in_seconds():
    sidecar = {"Modality": "MR", "RepetitionTime": 2.3, "EchoTime": 0.00298, "InversionTime": 0.9,
               "ScanningSequence": ["GR", "IR"]}
    evidence = detect_modality(metadata=sidecar)
    assert evidence.modality is M.T1
    assert "TI 900 ms" in evidence.detail and "seconds" in evidence.detail


def test_ti_zero_means_no_inversion():
    metadata = {"Modality": "MR", "RepetitionTime": "450", "EchoTime": "12", "InversionTime": "0"}
    assert detect_modality(metadata=metadata).modality is M.T1


def test_description_beats_disagreeing_physics_with_lower_confidence():
    metadata = {"Modality": "MR", "SeriesDescription": "AX T1 SE", "RepetitionTime": "4000",
                "EchoTime": "100"}
    evidence = detect_modality(metadata=metadata)
    assert evidence.modality is M.T1
    assert evidence.confidence < 0.9
    assert "physics disagree" in evidence.detail and "T2" in evidence.detail


def test_descriptive_non_contrast_words_are_not_overridden_by_physics():
    # A diffusion series has long TR/TE (T2 by physics) but is not a T2 to register against.
    metadata = {"Modality": "MR", "SeriesDescription": "DWI b1000", "RepetitionTime": "5000",
                "EchoTime": "90"}
    assert detect_modality(metadata=metadata).modality is M.MR


# -------------------------------------------------------------------------------- intensities

def _head(size: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distances from the centre (voxels) and masks of brain and skull shell, for synthetic heads."""
    z, y, x = np.mgrid[:size, :size, :size].astype(float)
    r = np.sqrt((x - size / 2) ** 2 + (y - size / 2) ** 2 + ((z - size / 2) * 1.2) ** 2)
    brain = r < size * 0.30
    skull = (r >= size * 0.30) & (r < size * 0.36)
    scalp = (r >= size * 0.36) & (r < size * 0.40)
    return brain, skull, scalp


def _image(values: np.ndarray, spacing: float = 3.0) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((spacing,) * 3)
    return image


def _ct_like(*, padding: int | None = None, air: float = -1024.0) -> sitk.Image:
    rng = np.random.default_rng(0)
    brain, skull, scalp = _head()
    values = np.full(brain.shape, air) + rng.normal(0, 8, brain.shape)
    values[scalp] = -80 + rng.normal(0, 10, scalp.sum())  # fat-rich scalp
    values[skull] = 1000 + rng.normal(0, 60, skull.sum())
    values[brain] = 35 + rng.normal(0, 6, brain.sum())
    if padding is not None:  # scanner padding outside the reconstruction circle
        _, y, x = np.mgrid[:40, :40, :40]
        values[(x - 20) ** 2 + (y - 20) ** 2 > 19**2] = padding
    return _image(np.clip(values, -32768, 3071).astype(np.int16))


def _mr_like(*, scale: float = 1000.0, dtype=np.int16) -> sitk.Image:
    rng = np.random.default_rng(1)
    brain, skull, scalp = _head()
    values = np.abs(rng.normal(0, 0.01, brain.shape))  # Rician-like non-negative background
    values[scalp] = 0.75
    values[skull] = 0.05
    values[brain] = 0.6 + rng.normal(0, 0.05, brain.sum())
    return _image((np.clip(values, 0, None) * scale).astype(dtype))


@pytest.mark.parametrize(("image", "minimum_confidence"), [
    (lambda: _ct_like(), 0.9),
    (lambda: _ct_like(padding=-3024), 0.9),
    (lambda: _ct_like(padding=-2048, air=-1000.0), 0.9),
    (lambda: sitk.Cast(_ct_like(), sitk.sitkFloat32), 0.9),
])
def test_ct_hounsfield_signature(image, minimum_confidence):
    evidence = detect_modality(image())
    assert (evidence.modality, evidence.source) == (M.CT, "intensity")
    assert evidence.confidence >= minimum_confidence
    assert "Hounsfield signature" in evidence.detail


def test_ct_inside_the_head_without_air_is_weak_ct():
    # A CT cropped inside the scalp: brain, skull and fatty scalp tissue fill the box, no air.
    rng = np.random.default_rng(2)
    brain, skull, _ = _head()
    values = -90 + rng.normal(0, 10, brain.shape)
    values[skull] = 900 + rng.normal(0, 60, skull.sum())
    values[brain] = 35 + rng.normal(0, 6, brain.sum())
    inside = values[6:34, 6:34, 6:34].astype(np.int16)
    assert (inside <= -700).mean() == 0
    evidence = detect_modality(_image(inside))
    assert (evidence.modality, evidence.source) == (M.CT, "intensity")
    assert evidence.confidence == pytest.approx(0.5)


@pytest.mark.parametrize("image", [
    lambda: _mr_like(),
    lambda: _mr_like(scale=255.0, dtype=np.uint8),
    lambda: _mr_like(scale=1.0, dtype=np.float32),
    lambda: _mr_like(scale=30000.0, dtype=np.uint16),
])
def test_mr_like_intensities_are_generic_mr_with_low_confidence(image):
    # One uniform tissue inside the head: no three brain classes, so no contrast.
    evidence = detect_modality(image())
    assert (evidence.modality, evidence.source) == (M.MR, "intensity")
    assert evidence.confidence <= 0.5
    assert "contrast not recognised" in evidence.detail


def test_z_scored_mr_with_negative_values_is_not_ct():
    values = sitk.GetArrayFromImage(_mr_like(scale=1.0, dtype=np.float32)).astype(np.float64)
    z = (values - values.mean()) / values.std()
    evidence = detect_modality(_image(z.astype(np.float32)))
    assert evidence.modality is M.MR
    assert evidence.confidence <= 0.3


def test_real_t1_from_nibabel_is_recognised_as_t1():
    # anatomical.nii: a real SPM-normalized T1 cropped inside the brain (no scalp, no outline),
    # with interpolation undershoot down to -610.
    image = sitk.ReadImage(str(_nibabel_file("anatomical.nii")))
    assert sitk.GetArrayViewFromImage(image).min() < 0
    evidence = detect_modality(image, metadata=metadata_from_image(image), name="anatomical.nii")
    assert (evidence.modality, evidence.source) == (M.T1, "intensity")
    assert evidence.confidence >= 0.6
    assert "white matter > grey matter > CSF" in evidence.detail


def test_real_mr_dicom_pixels_are_not_ct():
    evidence = detect_modality(sitk.ReadImage(get_testdata_file("MR_small.dcm")))
    assert (evidence.modality, evidence.source) == (M.MR, "intensity")


@pytest.mark.parametrize("image", [
    lambda: sitk.Compose([_ct_like(), _ct_like()]),  # vector image
    lambda: sitk.Image([8, 8, 8], sitk.sitkInt16),  # constant
    lambda: _image(np.full((4, 4, 4), np.nan, np.float32)),  # no finite value
])
def test_uninformative_images_give_no_intensity_evidence(image):
    evidence = detect_modality(image())
    assert (evidence.modality, evidence.source) == (M.MR, "default")
    assert "image gave no usable evidence" in evidence.detail


# ---------------------------------------------------------------------------- combination rules

def test_metadata_ct_wins_over_name_t1_with_conflict_and_lower_confidence():
    evidence = detect_modality(metadata={"0008|0060": "CT"}, name="T1_MPRAGE")
    assert (evidence.modality, evidence.source) == (M.CT, "metadata")
    assert evidence.confidence < 0.98
    assert "conflict" in evidence.detail and "T1_MPRAGE" in evidence.detail


def test_metadata_ct_with_non_hounsfield_pixels_is_reported():
    # A CT whose rescale was lost looks non-negative; the tag still wins but the mismatch is said.
    evidence = detect_modality(_mr_like(), metadata={"0008|0060": "CT"})
    assert evidence.modality is M.CT
    assert evidence.confidence < 0.98
    assert "conflict" in evidence.detail and "Hounsfield" in evidence.detail


def test_metadata_mr_takes_the_contrast_from_the_name():
    evidence = detect_modality(_mr_like(), metadata={"0008|0060": "MR"}, name="sub-02_FLAIR.nii.gz")
    assert (evidence.modality, evidence.source) == (M.FLAIR, "name")
    assert "DICOM Modality 'MR'" in evidence.detail
    assert evidence.confidence == pytest.approx(0.75)


def test_metadata_mr_beats_name_ct():
    evidence = detect_modality(metadata={"0008|0060": "MR"}, name="ct_head")
    assert (evidence.modality, evidence.source) == (M.MR, "metadata")
    assert evidence.confidence < 0.7
    assert "conflict" in evidence.detail


def test_metadata_contrast_beats_name_contrast():
    evidence = detect_modality(metadata={"Modality": "MR", "SeriesDescription": "AX T2"},
                               name="T1_MPRAGE")
    assert evidence.modality is M.T2
    assert evidence.confidence < 0.9
    assert "conflict" in evidence.detail


def test_name_beats_intensities_with_conflict():
    evidence = detect_modality(_ct_like(), name="AX_T1_POST")
    assert (evidence.modality, evidence.source) == (M.T1, "name")
    assert evidence.confidence < 0.75
    assert "conflict" in evidence.detail and "Hounsfield" in evidence.detail


def test_consistent_sources_keep_full_confidence():
    evidence = detect_modality(_ct_like(), name="Head CT 5mm", metadata={"Modality": "CT"})
    assert evidence.confidence == pytest.approx(0.98)
    assert "conflict" not in evidence.detail


def test_no_evidence_is_default_generic_mr():
    evidence = detect_modality()
    assert (evidence.modality, evidence.source, evidence.confidence) == (M.MR, "default", 0.1)


# ------------------------------------------------------------------------------ user choice

@pytest.mark.parametrize(("choice", "expected"), [
    ("flair", M.FLAIR), (" T2 ", M.T2), (M.CT, M.CT), ("mr", M.MR),
])
def test_user_choice_wins_with_full_confidence(choice, expected):
    evidence = detect_modality(_ct_like(), name="ct_head", metadata={"Modality": "CT"},
                               user_choice=choice)
    assert (evidence.modality, evidence.source, evidence.confidence) == (expected, "user", 1.0)
    if expected is not M.CT:
        assert "suggests CT" in evidence.detail  # the user is told what the data say


@pytest.mark.parametrize("choice", ["auto", "", "AUTO"])
def test_auto_user_choice_detects(choice):
    assert detect_modality(name="sub-01_T2w", user_choice=choice).source == "name"


@pytest.mark.parametrize("choice", ["PET", "T3", "t1w", "dwi"])
def test_invalid_user_choice_lists_the_choices(choice):
    with pytest.raises(InputError) as caught:
        detect_modality(name="T1", user_choice=choice)
    message = str(caught.value)
    assert repr(choice) in message
    for modality in Modality:
        assert modality.value in message
    assert isinstance(caught.value, ValueError)


def test_image_must_be_a_simpleitk_image():
    with pytest.raises(InputError, match="ndarray"):
        detect_modality(np.zeros((4, 4, 4)))


# ------------------------------------------------------------------------------ evidence object

def test_evidence_to_dict_is_json_ready():
    evidence = detect_modality(metadata={"0008|0060": "MR", "0008|103e": "AX T2 FLAIR"})
    data = evidence.to_dict()
    assert data == {"modality": "FLAIR", "source": "metadata", "confidence": 0.9,
                    "detail": evidence.detail}
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(("source", "confidence"), [("guess", 0.5), ("name", 1.5), ("name", -0.1)])
def test_evidence_validates_its_fields(source, confidence):
    with pytest.raises(ValueError):
        ModalityEvidence(M.T1, source, confidence, "x")


# ------------------------------------------------------------ contrast from the tissue classes
# Seeds here are not the benchmark's tuning seeds (bench_modality.py tunes on 0..).

def _synthetic_head(modality, *, seed, coarsen=2.0, **options):
    subject = synthetic.make_subject(resolution_mm=2.0)
    grid = synthetic.typical_grid(modality, subject.head_center, coarsen=coarsen)
    return synthetic.render_head(modality, grid, resolution_mm=2.0, seed=seed, **options)


@pytest.mark.parametrize("modality", ["T1", "T2", "FLAIR"])
@pytest.mark.parametrize(("options", "seed"), [
    ({}, 9001),
    ({"noise": 0.05, "bias": 0.3}, 9002),
    ({"skull_stripped": True}, 9003),
    ({"lesions": 6}, 9004),
])
def test_contrast_is_recognised_from_the_tissue_classes(modality, options, seed):
    values = synthetic.varied_contrast(modality, seed=seed)
    image = _synthetic_head(modality, seed=seed, tissue_values=values, **options)
    evidence = detect_modality(image, name="scan_003.nii.gz")
    assert evidence.source == "intensity"
    assert "white matter" in evidence.detail and "median" in evidence.detail
    if modality == "FLAIR" and options.get("skull_stripped"):
        # 10 mm slices of a stripped brain keep little white matter: the safe answer is allowed,
        # a wrong contrast is not.
        assert evidence.modality in (M.FLAIR, M.MR)
        return
    assert evidence.modality.value == modality
    assert evidence.confidence >= 0.6


def _isotropic_head(modality, *, seed, coarsen, **options):
    # The T1-like isotropic grid: where FLAIR used to fall back to a generic MR, as the mixtures of
    # dark CSF and bright cortex along the sulci took white matter's grey level.
    subject = synthetic.make_subject(resolution_mm=2.0)
    grid = synthetic.typical_grid("T1", subject.head_center, coarsen=coarsen)
    values = synthetic.varied_contrast(modality, seed=seed)
    return synthetic.render_head(modality, grid, tissue_values=values, resolution_mm=2.0, seed=seed, **options)


@pytest.mark.parametrize(("coarsen", "options", "seed"), [
    (1.5, {"noise": 0.05, "bias": 0.1}, 9101),
    (2.0, {"noise": 0.01, "bias": 0.3}, 9103),  # a 2 mm grid: read on a 3 mm copy like the others
    (2.0, {"noise": 0.03, "bias": 0.1, "lesions": 5}, 9104),
])
def test_flair_on_isotropic_grids_is_recognised(coarsen, options, seed):
    evidence = detect_modality(_isotropic_head("FLAIR", seed=seed, coarsen=coarsen, **options),
                               name="scan_003.nii.gz")
    assert (evidence.modality, evidence.source) == (M.FLAIR, "intensity"), evidence.detail
    assert evidence.confidence >= 0.6
    assert "grey matter > white matter > CSF" in evidence.detail


@pytest.mark.parametrize(("coarsen", "options", "seed"), [
    # White matter at 0.88 of grey matter (the top of the range): at 3 mm the two peaks merge.
    (1.5, {"noise": 0.03, "bias": 0.3}, 9102),
    # Skull-stripped with 5 % noise: the averaged Rician background is as bright as the
    # head-mask threshold, so the mask takes in the background.
    (2.0, {"noise": 0.05, "bias": 0.3, "skull_stripped": True}, 9105),
])
def test_hard_flair_may_fall_back_to_generic_mr_but_never_to_another_contrast(coarsen, options, seed):
    evidence = detect_modality(_isotropic_head("FLAIR", seed=seed, coarsen=coarsen, **options),
                               name="scan_003.nii.gz")
    assert evidence.modality in (M.FLAIR, M.MR), evidence.detail
    assert evidence.modality == M.MR or evidence.confidence >= 0.6


@pytest.mark.parametrize("modality", ["T1", "T2", "FLAIR"])
@pytest.mark.parametrize(("coarsen", "seed"), [(1.5, 9111), (2.0, 9112), (2.0, 9113)])
def test_isotropic_heads_never_get_a_wrong_contrast(modality, coarsen, seed):
    image = _isotropic_head(modality, seed=seed, coarsen=coarsen, noise=0.05, bias=0.3)
    evidence = detect_modality(image, name="scan_003.nii.gz")
    assert evidence.modality in (M(modality), M.MR), evidence.detail
    assert evidence.modality == M.MR or evidence.confidence >= 0.6


def test_contrast_is_read_on_a_copy_of_about_3_mm_whatever_the_grid():
    for spacing in [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (0.9, 0.9, 5.0), (1.8, 1.8, 6.0)]:
        image = sitk.Image([64, 64, 16], sitk.sitkFloat32)
        image.SetSpacing(spacing)
        copy = modality_intensity._working_copy(image)
        # Fine axes come to 2.4-3 mm (whole blocks, or resampled where no whole block fits);
        # axes already that coarse are left alone.
        assert all(2.4 <= s <= 3.0 if t < 2.4 else s == t for s, t in zip(copy.GetSpacing(), spacing))


def test_border_voxels_are_left_out_of_the_shapes():
    # A bright cube in a dark field: its faces are where the intensity changes fastest.
    values = np.zeros((20, 20, 20), np.float32)
    values[5:15, 5:15, 5:15] = 1.0
    region = np.ones(values.shape, bool)
    steady = modality_intensity._steady(values, region, (3.0, 3.0, 3.0))
    assert not steady[5, 10, 10] and not steady[14, 10, 10]  # on the faces
    assert steady[10, 10, 10] and steady[0, 0, 0]  # inside the cube and far from it


def test_contrast_reading_names_the_classes_and_their_medians():
    reading = read_contrast(_synthetic_head("T2", seed=9010))
    assert reading is not None and reading.modality == "T2"
    roles = [c.role for c in reading.classes]
    assert roles == ["white matter", "grey matter", "CSF"]  # darkest first
    medians = [c.median for c in reading.classes]
    assert medians == sorted(medians)
    assert abs(sum(c.share for c in reading.classes) - 1.0) < 1e-6


@pytest.mark.parametrize("kind", synthetic.OBJECT_KINDS)
def test_mr_of_something_that_is_not_a_head_is_generic_mr(kind):
    grid = synthetic.Grid.centered((0.0, 0.0, 0.0), (360.0, 280.0, 240.0), (2.0, 2.0, 4.0))
    image = synthetic.render_object(kind, grid, seed=9020)
    evidence = detect_modality(image, name="scan_003.nii.gz")
    assert (evidence.modality, evidence.source) == (M.MR, "intensity")
    assert evidence.confidence < 0.6


def test_ct_head_stays_ct_whatever_its_tissue_values():
    image = _synthetic_head("CT", seed=9030, tissue_values=synthetic.varied_contrast("CT", seed=9030))
    evidence = detect_modality(image, name="scan_003.nii.gz")
    assert (evidence.modality, evidence.source) == (M.CT, "intensity")


def test_metadata_saying_only_mr_takes_the_contrast_from_the_tissue_classes():
    evidence = detect_modality(_synthetic_head("T1", seed=9040), metadata={"0008|0060": "MR"})
    assert (evidence.modality, evidence.source) == (M.T1, "intensity")
    assert evidence.detail.startswith("DICOM Modality 'MR'")


def test_a_named_contrast_beats_the_tissue_classes_and_the_conflict_is_said():
    evidence = detect_modality(_synthetic_head("T1", seed=9050), name="patient_T2w.nii.gz")
    assert (evidence.modality, evidence.source) == (M.T2, "name")
    assert "suggests T1" in evidence.detail
    assert evidence.confidence < 0.75


def test_non_contrast_mr_metadata_is_not_overridden_by_the_tissue_classes():
    # Proton-density physics says "an MR, not T1/T2/FLAIR": the pixels do not turn it into one.
    metadata = {"Modality": "MR", "RepetitionTime": "3000", "EchoTime": "15"}
    evidence = detect_modality(_synthetic_head("T1", seed=9060), metadata=metadata)
    assert (evidence.modality, evidence.source) == (M.MR, "metadata")


def test_contrast_reading_leaves_the_image_untouched():
    image = _synthetic_head("FLAIR", seed=9070)
    before = sitk.GetArrayFromImage(image).copy()
    read_contrast(image)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), before)
