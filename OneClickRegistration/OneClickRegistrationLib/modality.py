"""Modality names and detection: is a volume a T1, T2, FLAIR, CT, or an MR of unknown contrast?

:func:`detect_modality` weighs the evidence in a fixed order and returns a
:class:`ModalityEvidence`: the modality, the source that decided, a confidence in 0..1 and a
sentence naming the tag, word or statistic that decided. A later source never overrides an
earlier one; when it disagrees, the disagreement is written into ``detail`` and the confidence is
multiplied by 0.7 (only sources with confidence >= 0.4 count as disagreeing).

1. User choice (source ``user``, confidence 1.0). ``None``, ``""`` and ``"auto"`` mean "detect
   it"; anything other than T1/T2/FLAIR/CT/MR (any case) raises :class:`InputError`.

2. Metadata (source ``metadata``). Keys may be SimpleITK DICOM tags (``"0008|0060"``, also
   ``"(0008,0060)"``), DICOM keywords (``"Modality"``, ``"SeriesDescription"``), Slicer-style
   ``"DICOM.<key>"`` attributes, BIDS sidecar keys, NIfTI ``descrip`` or NRRD ``content``.

   - Modality (0008,0060) ``CT`` -> CT, 0.98. Another non-MR modality (PT, US, ...) -> metadata
     ignored, said in ``detail``. Without a Modality tag, the SOP class UID (CT/MR image storage)
     or MR-only tags (EchoTime, InversionTime, ScanningSequence, ...) stand in for it.
   - For an MR, the words of SeriesDescription (0008,103E), ProtocolName (0018,1030),
     SequenceName (0018,0024), PulseSequenceName (0018,9005), NIfTI/NRRD descriptions, in that
     order, with the name rules below -> 0.9 (0.85 without a Modality tag).
   - Else the acquisition physics, TR (0018,0080), TE (0018,0081), TI (0018,0082) in ms and
     ScanningSequence (0018,0020) -> 0.8 for T1/T2/FLAIR, 0.6 for a generic MR:
       echo-planar (EP)                                  -> MR (diffusion / functional)
       TI >= 1500, TE >= 60, TR >= 2500 (or unknown)     -> FLAIR
       300 <= TI <= 1400, TE < 30                        -> T1 (MPRAGE, IR-SPGR, T1 FLAIR)
       TI < 300                                          -> MR (STIR)
       no TI, gradient echo (GR), TE >= 10               -> MR (T2*-weighted)
       no TI, TR < 800, TE < 30                          -> T1
       no TI, TR > 2000, TE > 80                         -> T2
       no TI, TR > 2000, TE < 30                         -> MR (proton density)
       anything else                                     -> MR
     Keyword metadata with TE < 1 and TR < 100 is taken to be in seconds (BIDS) and converted.
   - Else an MR of unknown contrast, 0.7. A description that disagrees with the physics wins
     (it names the series), with the disagreement noted.

3. Name of the volume or file (source ``name``; for a path only the file name, extensions
   removed). Case-insensitive words, split on separators, camelCase and digit/letter boundaries,
   so that words which merely contain the letters do not match (``direct``, ``project``, ``CTO``
   are not CT; ``T10`` and ``Patient_1`` are not T1):
       flair, dark fluid, t2f (BraTS)                    -> FLAIR (T2 FLAIR is FLAIR)
       t1 (t1w, t1ce, t1c, AxT1, 3DT1, T1+C), mprage,
       mp2rage, spgr, fspgr, bravo, tfl                  -> T1 (T1 FLAIR is T1-weighted: T1)
       t2 (t2w, AxT2), haste                             -> T2
       ct, cta, ctp, ctv, ncct, cect, cbct, 4DCT, ...    -> CT
       pd, dwi, adc, dti, swi, gre, t2*/t2star, stir,
       epi, bold, asl, tof, mra                          -> MR (an MR, not T1/T2/FLAIR), 0.6
       mr, mri                                           -> MR, 0.5
   One contrast -> 0.75. Several contrasts (``T1_T2_ratio``) -> MR, 0.4. CT and MR words
   together (``T1_to_CT``) -> the name does not decide. If metadata only knows "MR", a contrast
   named by the name is used (source ``name``).

4. Intensities (source ``intensity``; a strided sample of at most ~1 M voxels). CT's Hounsfield
   signature: >= 2 % of voxels at or below -700 (air, scanner padding), the other voxels in
   Hounsfield range (99.5th percentile <= 4000) and >= 20 % of them soft tissue (-150..150)
   -> CT, confidence 0.6, +0.15 for air near -1000 (or values at/below -1000), +0.15 for bone
   (>= 1 % of them >= 300), +0.05 for a soft-tissue median. No air but soft tissue, >= 5 %
   negative voxels, bone and a soft-tissue median -> CT, 0.5. Otherwise an MR (when almost,
   < 5 %, non-negative), whose contrast the brain's tissue classes tell
   (:mod:`.modality_intensity`): the three intensity classes inside the head, the white matter
   found by its depth and compactness, and its place in the intensity order -> T1 (brightest),
   T2 (darkest) or FLAIR (middle), confidence 0.6-0.95, the classes and their medians as evidence.
   A weak leaning (< 0.6), or classes that do not look like a brain (non-brain MR, one tissue),
   give a generic MR at 0.45 -- the safe cross-modality preset; 0.25 when the values fit neither
   CT nor a non-negative MR. When metadata or the name say only "MR" (nothing about the
   contrast), the tissue classes add it (source ``intensity``). A CT stored without its rescale
   (air near 0) looks like an MR here; its metadata or name still say CT, and the mismatch is
   reported.

5. Default (source ``default``): no evidence at all -> MR, confidence 0.1.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .modality_intensity import read_contrast


class Modality(str, Enum):
    # A str-valued enum that prints as its value on every Python from 3.9 (StrEnum is 3.11+).
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    T1 = "T1"
    T2 = "T2"
    FLAIR = "FLAIR"
    CT = "CT"
    MR = "MR"  # an MR image whose contrast could not be told apart


MR_MODALITIES = (Modality.T1, Modality.T2, Modality.FLAIR, Modality.MR)
CONTRASTS = (Modality.T1, Modality.T2, Modality.FLAIR)
SOURCES = ("user", "metadata", "name", "intensity", "default")


def parse_modality(value: str | Modality) -> Modality:
    """``"t1"``/``"T1"``/``Modality.T1`` -> ``Modality.T1``; a clear error for anything else."""
    if isinstance(value, Modality):
        return value
    text = str(value).strip().upper()
    try:
        return Modality(text)
    except ValueError:
        choices = ", ".join(m.value for m in Modality)
        raise InputError(f"Unknown modality {value!r}; expected one of {choices}.") from None


@dataclass(frozen=True)
class ModalityEvidence:
    """What :func:`detect_modality` decided, from which source, how sure, and why (plain words)."""

    modality: Modality
    source: str
    confidence: float
    detail: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}; received {self.source!r}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must lie in 0..1; received {self.confidence!r}")

    def to_dict(self) -> dict[str, object]:
        return {"modality": self.modality.value, "source": self.source,
                "confidence": round(float(self.confidence), 3), "detail": self.detail}


# --------------------------------------------------------------------------------------------
# Internal finding of one source, before the sources are combined.


@dataclass(frozen=True)
class _Finding:
    modality: Modality
    confidence: float
    detail: str
    source: str
    plain: bool = False  # only says "MR" (or is ambiguous): weaker sources may add the contrast


def _family(modality: Modality) -> str:
    return "CT" if modality is Modality.CT else "MR"


# --------------------------------------------------------------------------------------------
# Words (names, descriptions)

_IMAGE_SUFFIX = re.compile(
    r"(\.(nii|nrrd|nhdr|mha|mhd|dcm|ima|img|hdr|mgz|mnc|gz|bz2|tif|tiff|vtk|vti|seg))+$", re.I)
_ORIENT = r"(?:ax|sag|cor|tra)?"
_T1_WORDS = re.compile(r"^(?:mprage|mp2rage|spgr|fspgr|irfspgr|bravo|tfl)\d*$")
_T2_WORDS = re.compile(r"^(?:haste)\d*$")
_CT_WORDS = re.compile(r"^(?:ct|cta|ctv|ctp|ncct|nect|cect|cbct|mdct|hrct|ctangio)\d*$")
_MR_WORDS = re.compile(
    r"^(?:mr|mri|fmri|pd|pdw|pdwi|dwi|adc|dti|swi|gre|bold|epi|ep|asl|tof|mra|stir)\d*$")
_PLAIN_MR = re.compile(r"^(?:mr|mri)\d*$")  # says "MR" and nothing about the contrast
_T1_SUBSTRINGS = ("mprage", "mp2rage", "spgr")  # long, unusual letter runs: safe inside a word


@dataclass(frozen=True)
class _Hit:
    modality: Modality
    position: int
    token: str


def _words(text: str) -> list[str]:
    """Lower-case words split on separators and camelCase; '3D'/'2D' prefixes become own words."""
    # 'T2*' is T2-star; a leading '*' (Siemens sequence names, '*tfl3d1') is just a marker.
    text = re.sub(r"(?<=[A-Za-z0-9])\*", "star ", text).replace("*", " ").replace("+", " plus ")
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", text)
    text = re.sub(r"(?<![a-zA-Z])([1-4][dD])(?=[a-zA-Z])", r"\1 ", text)
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def _subtokens(text: str) -> list[tuple[str, int, bool]]:
    """(sub-token, index of its word, last in its word?) in reading order.

    Sub-tokens are letters with their trailing digits, so 't10' stays one token (not T1) while
    't1ce' -> 't1', 'ce' and 'sub01t2w' -> 'sub01', 't2', 'w'.
    """
    result = []
    for index, word in enumerate(_words(text)):
        subs = re.findall(r"[a-z]+\d*|\d+", word)
        result += [(sub, index, i == len(subs) - 1) for i, sub in enumerate(subs)]
    return result


def _word_hits(text: str) -> list[_Hit]:
    """Every modality word in ``text``, with its sub-token position for adjacency rules."""
    hits: list[_Hit] = []
    subs = _subtokens(text)
    for at, (sub, word, _last) in enumerate(subs):
        following = subs[at + 1][0] if at + 1 < len(subs) else ""
        same_word = at + 1 < len(subs) and subs[at + 1][1] == word
        if "flair" in sub or sub == "darkfluid" or (sub == "dark" and following == "fluid"):
            hits.append(_Hit(Modality.FLAIR, at, "dark fluid" if "dark" in sub else "flair"))
        elif any(s in sub for s in _T1_SUBSTRINGS) or (sub == "mp2" and following == "rage"):
            hits.append(_Hit(Modality.T1, at, "mp2rage" if sub == "mp2" else sub))
        elif re.fullmatch(_ORIENT + r"t1", sub):
            hits.append(_Hit(Modality.T1, at, sub))
        elif re.fullmatch(_ORIENT + r"t2", sub):
            if following == "f" and same_word and subs[at + 1][2]:  # BraTS 2023 't2f' is FLAIR
                hits.append(_Hit(Modality.FLAIR, at, "t2f"))
            elif following == "star" or (following == "s" and same_word):
                hits.append(_Hit(Modality.MR, at, "t2*"))
            else:
                hits.append(_Hit(Modality.T2, at, sub))
        elif _T1_WORDS.fullmatch(sub):
            hits.append(_Hit(Modality.T1, at, sub))
        elif _T2_WORDS.fullmatch(sub):
            hits.append(_Hit(Modality.T2, at, sub))
        elif _CT_WORDS.fullmatch(sub):
            hits.append(_Hit(Modality.CT, at, sub))
        elif _MR_WORDS.fullmatch(sub):
            hits.append(_Hit(Modality.MR, at, sub))
    return hits


def _words_finding(text: str, *, what: str, confidence: float, source: str) -> _Finding | None:
    """Apply the word rules to ``text``; ``what`` names the text in the detail sentence."""
    hits = _word_hits(text)
    if not hits:
        return None
    flair = [h for h in hits if h.modality is Modality.FLAIR]
    t1 = [h for h in hits if h.modality is Modality.T1]
    # 'T1 FLAIR' (GE) is a T1-weighted inversion recovery, so a t1 right before 'flair' wins.
    note = ""
    if any(f.position - h.position == 1 for h in t1 for f in flair):
        hits = [h for h in hits if h.modality is not Modality.FLAIR]
        note = f"{what} contains 'T1 FLAIR' (a T1-weighted inversion recovery)"
    kinds = {h.modality for h in hits}
    if Modality.FLAIR in kinds:
        kinds.discard(Modality.T2)  # 'T2 FLAIR' is the usual name of FLAIR
    tokens = ", ".join(dict.fromkeys(f"'{h.token}'" for h in hits if h.modality in kinds))
    if Modality.CT in kinds and kinds - {Modality.CT}:
        return _Finding(Modality.MR, 0.0, f"{what} mentions both CT and MR words ({tokens}), "
                        "so it does not decide", source, plain=True)
    if kinds == {Modality.CT}:
        return _Finding(Modality.CT, confidence, f"{what} contains {tokens}", source)
    contrasts = [m for m in CONTRASTS if m in kinds]
    if len(contrasts) == 1:
        return _Finding(contrasts[0], confidence, note or f"{what} contains {tokens}", source)
    if len(contrasts) > 1:
        names = "/".join(m.value for m in contrasts)
        return _Finding(Modality.MR, min(confidence, 0.4),
                        f"{what} names several MR contrasts ({names}: {tokens}), so only 'MR' is "
                        "certain", source, plain=True)
    if all(_PLAIN_MR.fullmatch(h.token) for h in hits):
        return _Finding(Modality.MR, min(confidence, 0.5),
                        f"{what} contains {tokens}: an MR of unnamed contrast", source, plain=True)
    return _Finding(Modality.MR, min(confidence, 0.6),
                    f"{what} contains {tokens}: an MR, but not a T1, T2 or FLAIR contrast", source)


def _name_text(name: str | os.PathLike[str]) -> str:
    text = os.fspath(name).strip()
    # A file path: its folders may say anything ('CT_MR_study/'), only the file name counts.
    if _IMAGE_SUFFIX.search(text) or os.sep in text or "/" in text:
        last = re.split(r"[\\/]", text.rstrip("\\/"))[-1]
        stripped = _IMAGE_SUFFIX.sub("", last)
        if stripped:
            return stripped
    return text


# --------------------------------------------------------------------------------------------
# Metadata

_TAG_KEYWORDS = {
    "00080060": "Modality",
    "0008103e": "SeriesDescription",
    "00081030": "StudyDescription",
    "00181030": "ProtocolName",
    "00180024": "SequenceName",
    "00189005": "PulseSequenceName",
    "00180080": "RepetitionTime",
    "00180081": "EchoTime",
    "00180082": "InversionTime",
    "00180020": "ScanningSequence",
    "00180021": "SequenceVariant",
    "00180022": "ScanOptions",
    "00180023": "MRAcquisitionType",
    "00180087": "MagneticFieldStrength",
    "00181314": "FlipAngle",
    "00080016": "SOPClassUID",
    "00080008": "ImageType",
}
_KEYWORDS = {k.lower(): k for k in _TAG_KEYWORDS.values()}
_KEYWORDS |= {"descrip": "descrip", "content": "content"}  # NIfTI / NRRD free text
_TEXT_FIELDS = ("SeriesDescription", "ProtocolName", "SequenceName", "PulseSequenceName",
                "descrip", "content")
_MR_ONLY_FIELDS = ("EchoTime", "InversionTime", "ScanningSequence", "SequenceVariant",
                   "MagneticFieldStrength", "MRAcquisitionType", "PulseSequenceName")
_SOP_CLASS = {"1.2.840.10008.5.1.4.1.1.2": "CT", "1.2.840.10008.5.1.4.1.1.2.1": "CT",
              "1.2.840.10008.5.1.4.1.1.4": "MR", "1.2.840.10008.5.1.4.1.1.4.1": "MR"}


def _normalize_metadata(metadata: Mapping[str, object]) -> tuple[dict[str, str], bool]:
    """Known fields by keyword, and whether they came from keyword keys (BIDS may use seconds)."""
    fields: dict[str, str] = {}
    keyword_keys = False
    for raw_key, raw_value in metadata.items():
        key = str(raw_key).strip()
        if key.lower().startswith("dicom."):
            key = key[6:]
        compact = re.sub(r"[\s()|,_]", "", key).lower()
        keyword = None
        if re.fullmatch(r"[0-9a-f]{8}", compact):
            keyword = _TAG_KEYWORDS.get(compact)
        else:
            keyword = _KEYWORDS.get(compact)
            keyword_keys = keyword_keys or (keyword is not None and keyword not in ("descrip", "content"))
        if keyword is None or raw_value is None:
            continue
        value = _value_text(raw_value)
        if value and keyword not in fields:
            fields[keyword] = value
    return fields, keyword_keys


def _value_text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1", errors="replace")
    if isinstance(value, Iterable) and not isinstance(value, str):
        value = "\\".join(str(v) for v in value)
    return str(value).strip(" \x00\t\r\n")


def _number(text: str | None) -> float | None:
    if not text:
        return None
    match = re.search(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", text)
    if not match:
        return None
    value = float(match.group())
    return value if math.isfinite(value) else None


def _physics(fields: Mapping[str, str], *, seconds_possible: bool) -> _Finding | None:
    """Contrast from TR/TE/TI (ms) and the scanning sequence; None when the tags are missing."""
    tr, te, ti = (_number(fields.get(k)) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
    codes = set(re.findall(r"[A-Z]{2}", fields.get("ScanningSequence", "").upper()))
    if ti is not None and ti <= 0:
        ti = None  # some scanners write TI 0 for sequences without inversion
    unit_note = ""
    if seconds_possible and te is not None and 0 < te < 1 and (tr is None or tr < 100):
        tr, te, ti = ((None if v is None else v * 1000.0) for v in (tr, te, ti))
        unit_note = " (given in seconds, read as ms x 1000)"
    if "EP" in codes:
        return _Finding(Modality.MR, 0.6, "ScanningSequence 'EP' (echo-planar: diffusion or "
                        "functional MR), not a T1, T2 or FLAIR", "metadata")
    if te is None and ti is None:
        return None
    parts = [f"{name} {value:g} ms" for name, value in (("TR", tr), ("TE", te), ("TI", ti))
             if value is not None]
    values = ", ".join(parts) + unit_note

    def found(modality: Modality, why: str, confidence: float = 0.8) -> _Finding:
        return _Finding(modality, confidence, f"{values}: {why}", "metadata")

    if ti is not None:
        if te is None:
            return None
        if ti >= 1500 and te >= 60 and (tr is None or tr >= 2500):
            return found(Modality.FLAIR, "long inversion time with long TR/TE nulls fluid (FLAIR)")
        if 300 <= ti <= 1400 and te < 30:
            return found(Modality.T1, "inversion-prepared short-TE sequence (MPRAGE, IR-SPGR or "
                         "T1 FLAIR) is T1-weighted")
        if ti < 300:
            return found(Modality.MR, "short inversion time is a STIR (fat suppressed), not "
                         "T1/T2/FLAIR", 0.6)
        return found(Modality.MR, "an inversion recovery that matches neither the FLAIR nor the "
                     "T1 rule", 0.6)
    if te is None or tr is None:
        return None
    if "GR" in codes and te >= 10:
        return found(Modality.MR, "gradient echo with long TE is T2*-weighted, not T1/T2/FLAIR", 0.6)
    if tr < 800 and te < 30:
        return found(Modality.T1, "short TR and short TE is T1-weighted")
    if tr > 2000 and te > 80:
        return found(Modality.T2, "long TR and long TE is T2-weighted")
    if tr > 2000 and te < 30:
        return found(Modality.MR, "long TR and short TE is proton-density weighted", 0.6)
    return found(Modality.MR, "intermediate weighting that matches no T1/T2 rule", 0.6)


def _from_metadata(metadata: Mapping[str, object], notes: list[str]) -> _Finding | None:
    fields, keyword_keys = _normalize_metadata(metadata)
    if not fields:
        return None
    tag = fields.get("Modality", "").upper()
    said = f"DICOM Modality '{tag}'"
    if not tag and fields.get("SOPClassUID") in _SOP_CLASS:
        tag = _SOP_CLASS[fields["SOPClassUID"]]
        said = f"SOP class {fields['SOPClassUID']} ({tag} image storage)"
    if tag == "CT":
        return _Finding(Modality.CT, 0.98, said, "metadata")
    if tag and tag != "MR":
        notes.append(f"{said} is neither CT nor MR, so the metadata was not used")
        return None
    if not tag and any(k in fields for k in _MR_ONLY_FIELDS):
        tag = "MR"
        said = "MR acquisition tags (" + ", ".join(k for k in _MR_ONLY_FIELDS if k in fields) + ")"
    is_mr = tag == "MR"

    words: _Finding | None = None
    for key in _TEXT_FIELDS:
        if key not in fields:
            continue
        finding = _words_finding(fields[key], what=f"{key} '{fields[key]}'",
                                 confidence=0.9 if is_mr else 0.85, source="metadata")
        if finding is None or finding.confidence == 0.0:
            continue
        if is_mr and finding.modality is Modality.CT:
            notes.append(f"{finding.detail}, but {said} says MR")
            continue
        if words is None or (words.plain and not finding.plain):
            words = finding
        elif finding.modality in CONTRASTS and words.modality in CONTRASTS \
                and finding.modality is not words.modality:
            notes.append(f"{finding.detail} (ignored: the earlier field wins)")
            words = _Finding(words.modality, words.confidence * 0.7, words.detail, "metadata")
    physics = _physics(fields, seconds_possible=keyword_keys)

    if words is not None and not words.plain:
        if physics and physics.modality in CONTRASTS and words.modality in CONTRASTS \
                and physics.modality is not words.modality:
            notes.append(f"the acquisition physics disagree ({physics.detail}, "
                         f"i.e. {physics.modality.value})")
            words = _Finding(words.modality, words.confidence * 0.7, words.detail, "metadata")
        prefix = f"{said}; " if is_mr and not words.detail.startswith(said) else ""
        return _Finding(words.modality, words.confidence, prefix + words.detail, "metadata")
    if physics is not None and physics.modality in CONTRASTS:
        return _Finding(physics.modality, physics.confidence, f"{said}; {physics.detail}", "metadata")
    if is_mr:
        reasons = [f.detail for f in (words, physics) if f is not None]
        why = "; ".join(reasons) if reasons else "no description, protocol or TR/TE tells the contrast"
        return _Finding(Modality.MR, 0.7, f"{said}; {why}", "metadata", plain=not reasons)
    return words  # descriptions without a Modality tag that name only MR words (or nothing)


# --------------------------------------------------------------------------------------------
# Intensities

MAX_SAMPLES = 1_000_000  # a strided sample this large keeps percentiles stable and detection fast


def _sample(image: sitk.Image) -> np.ndarray:
    values = sitk.GetArrayViewFromImage(image)
    step = max(1, math.ceil((values.size / MAX_SAMPLES) ** (1.0 / values.ndim)))
    sample = np.asarray(values[(slice(None, None, step),) * values.ndim], dtype=np.float64).ravel()
    return sample[np.isfinite(sample)]


def _from_intensity(image: sitk.Image) -> _Finding | None:
    if image.GetNumberOfComponentsPerPixel() != 1:
        return None
    v = _sample(image)
    if v.size == 0 or v.min() == v.max():
        return None  # empty, all-NaN or constant: the values say nothing
    low = v <= -700.0
    low_fraction = float(low.mean())
    rest = v[~low]
    if rest.size:
        p995 = float(np.percentile(rest, 99.5))
        soft = float(((rest >= -150.0) & (rest <= 150.0)).mean())
        bone = float((rest >= 300.0).mean())
        median = float(np.median(rest))
    else:
        p995, soft, bone, median = -math.inf, 0.0, 0.0, -math.inf
    negative = float((v < 0).mean())
    stats = (f"{100 * low_fraction:.1f}% of voxels <= -700, {100 * soft:.0f}% of the rest in "
             f"-150..150, {100 * bone:.1f}% >= 300, 99.5th percentile {p995:.0f}, "
             f"minimum {v.min():.0f}")
    hounsfield_range = p995 <= 4000.0
    if low_fraction >= 0.02 and hounsfield_range and soft >= 0.2:
        lows = v[low]
        air_median = float(np.median(lows[lows >= -1200.0])) if (lows >= -1200.0).any() else math.nan
        classic_air = abs(air_median - (-1000.0)) <= 60.0 or v.min() <= -1000.0
        confidence = 0.6 + 0.15 * classic_air + 0.15 * (bone >= 0.01) + 0.05 * (-200 <= median <= 200)
        return _Finding(Modality.CT, confidence,
                        f"Hounsfield signature (air/padding, soft tissue, bone): {stats}", "intensity")
    if hounsfield_range and soft >= 0.5 and negative >= 0.05 and bone >= 0.01 \
            and -200 <= median <= 200:
        return _Finding(Modality.CT, 0.5, "Hounsfield-like soft tissue, negative values and bone "
                        f"but no air: {stats}", "intensity")
    if negative < 0.05:
        said = f"(almost) non-negative intensities without Hounsfield air ({stats}): an MR"
        reading = read_contrast(image)
        if reading is not None and reading.modality != Modality.MR.value:
            return _Finding(parse_modality(reading.modality), reading.confidence,
                            f"{said}, {reading.detail}", "intensity")
        why = reading.detail if reading is not None else "too few voxels for three tissue classes"
        return _Finding(Modality.MR, 0.45, f"{said}; contrast not recognised: {why}", "intensity", plain=True)
    return _Finding(Modality.MR, 0.25, f"intensities fit neither CT's Hounsfield scale nor a typical "
                    f"non-negative MR ({100 * negative:.0f}% negative; {stats})", "intensity")


# --------------------------------------------------------------------------------------------
# Public API


def _user_modality(user_choice: str | Modality) -> Modality | None:
    if isinstance(user_choice, Modality):
        return user_choice
    text = str(user_choice).strip()
    if text == "" or text.lower() == "auto":
        return None
    try:
        return parse_modality(text)
    except InputError:
        choices = ", ".join(m.value for m in Modality)
        raise InputError(f"Unknown modality {user_choice!r} chosen; expected one of {choices} "
                         "(or 'auto'/None to detect it).") from None


def _conflict(primary: _Finding, other: _Finding | None) -> bool:
    if other is None or other.confidence < 0.4:
        return False
    if _family(primary.modality) != _family(other.modality):
        return True
    return (primary.modality in CONTRASTS and other.modality in CONTRASTS
            and primary.modality is not other.modality)


def detect_modality(image: sitk.Image | None = None, *, name: str | os.PathLike[str] | None = None,
                    metadata: Mapping[str, object] | None = None,
                    user_choice: str | Modality | None = None) -> ModalityEvidence:
    """The modality of a volume, from the user's choice, metadata, name and intensities.

    See the module docstring for the rules. Never raises for missing evidence (the answer is then
    a generic MR with low confidence); raises :class:`InputError` for an invalid ``user_choice``
    and for an ``image`` that is not a SimpleITK image.
    """
    if image is not None and not isinstance(image, sitk.Image):
        raise InputError(f"image must be a SimpleITK image or None; received {type(image).__name__}.")
    chosen = _user_modality(user_choice) if user_choice is not None else None
    notes: list[str] = []
    meta = _from_metadata(metadata, notes) if metadata else None
    text = _name_text(name) if name is not None else ""
    named = _words_finding(text, what=f"name '{text}'", confidence=0.75, source="name") if text else None
    if named is not None and named.confidence == 0.0:
        notes.append(named.detail)
        named = None

    if chosen is not None:
        detail = f"chosen by the user ({user_choice!r})"
        others = [f for f in (meta, named) if f is not None and f.modality is not chosen
                  and _conflict(_Finding(chosen, 1.0, "", "user"), f)]
        if others:
            detail += "; note: " + "; ".join(f"{f.detail} suggests {f.modality.value}" for f in others)
        return ModalityEvidence(chosen, "user", 1.0, detail)

    measured = _from_intensity(image) if image is not None else None
    if measured is not None and measured.modality in CONTRASTS \
            and all(f is None or (f.plain and f.modality is Modality.MR) for f in (meta, named)) \
            and (meta is not None or named is not None):
        # Tags and name say only "MR": the tissue classes add the contrast.
        said = "; ".join(f.detail for f in (meta, named) if f is not None)
        meta, named = None, None
        measured = _Finding(measured.modality, measured.confidence, f"{said}; {measured.detail}", "intensity")
    if meta is not None and (meta.modality is not Modality.MR or named is None
                             or named.modality not in CONTRASTS):
        primary, rest = meta, [named, measured]
    elif named is not None:
        if meta is not None:  # metadata knows only "MR": the name adds the contrast
            named = _Finding(named.modality, named.confidence, f"{meta.detail}; {named.detail}", "name")
        primary, rest = named, [measured]
    elif measured is not None:
        primary, rest = measured, []
    else:
        given = [what for what, value in (("metadata", metadata), ("name", name), ("image", image))
                 if value is not None]
        listed = ", ".join(given[:-1]) + " and " + given[-1] if len(given) > 1 else "".join(given)
        detail = (f"the {listed} gave no usable evidence" if given else
                  "no user choice, metadata, name or image to go on") + ": assuming a generic MR"
        if notes:
            detail += "; " + "; ".join(notes)
        return ModalityEvidence(Modality.MR, "default", 0.1, detail)

    confidence = primary.confidence
    for other in rest:
        if other is not None and _conflict(primary, other):
            notes.append(f"conflict: {other.detail} suggests {other.modality.value}; "
                         f"the {primary.source} wins")
            confidence *= 0.7
    detail = primary.detail + ("; " + "; ".join(notes) if notes else "")
    confidence = round(max(0.05, min(1.0, float(confidence))), 3)
    return ModalityEvidence(primary.modality, primary.source, confidence, detail)


def metadata_from_image(image: sitk.Image) -> dict[str, str]:
    """The image's own metadata dictionary (DICOM tags, NIfTI ``descrip``, NRRD keys), values stripped."""
    return {key: image.GetMetaData(key).strip(" \x00\t\r\n") for key in image.GetMetaDataKeys()}


def metadata_from_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The header metadata of an image file, without reading its voxels.

    A folder is read as one DICOM series (the header of its first file); a folder with no or
    several series raises :class:`InputError`, as does a file ITK cannot read.
    """
    file = Path(path)
    if not file.exists():
        raise InputError(f"Cannot read metadata: {str(file)!r} does not exist.")
    if file.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(file))
        if len(series) != 1:
            raise InputError(f"Expected one DICOM series in the folder {str(file)!r}; found "
                             f"{len(series)}. Point to a file or a single-series folder.")
        file = Path(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(file), series[0])[0])
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(f"Cannot read the header of {str(file)!r} as an image: {last}") from None
    return {key: reader.GetMetaData(key).strip(" \x00\t\r\n") for key in reader.GetMetaDataKeys()}
