"""T1, T2 or FLAIR from the image itself: how the brain's tissue classes order their intensities.

Grey levels alone say little (scanner, bias field, rescaling), but the *order* of the three brain
tissues does: T1 white matter > grey matter > CSF; T2 CSF > grey > white; FLAIR grey > white with
CSF dark. The three intensity classes are found without knowing which is which; the question is
which class is the white matter. White matter is told from grey matter by its shape, not its
brightness: it lies deeper inside the head than the cortex, and it forms thick regions where the
cortex is a folded ribbon a few millimetres thick. Where the white matter sits in the intensity
order names the contrast: brightest class -> T1, darkest -> T2, middle -> FLAIR.

Steps (on a copy of about 3 mm on every grid, so a 1 mm head takes a fraction of a second and the
shape limits below mean the same on 1 mm and 2 mm grids):

1. Head mask: voxels above 10 % of the 99th percentile, largest connected part, holes filled.
2. Inside it, only voxels at least ``RIM_MM`` from the head's outline, which leaves the scalp
   and the skull out (the image border is not an outline: a cropped field of view keeps its
   inside). A skull-stripped brain just loses its outer cortex.
3. A bias field is divided out: each voxel over the local mean of the region within
   ``BIAS_SIGMA_MM`` (grey and white matter interleave every few millimetres, so they keep their
   contrast). Three classes by a three-class Otsu threshold of the region's histogram; when that
   leaves one class with almost everything (a small grey/white contrast next to CSF's large one),
   two classes are split first and the larger one is split again.
4. Per class: share of the voxels, median, spread, median depth from the head's outline and
   compactness (share of its voxels whose six neighbours are in the same class), the last two
   also over the class's *steady* voxels only: the ``STEADY_SHARE`` of the region with the
   gentlest intensity gradient. At 3 mm a voxel on a tissue border is a mixture, and in a FLAIR
   the mixture of dark CSF and bright cortex takes white matter's grey level: the white-matter
   class then holds a thin, shallow shell along every sulcus and loses to grey matter on shape.
   Steady voxels are mostly pure tissue.
5. White matter = the class (holding >= 15 % of the voxels) with the highest
   ``depth / DEPTH_UNIT_MM + compactness / COMPACTNESS_UNIT`` over its steady voxels; the lead
   over the next class is the margin. The other two classes are named by the contrast this
   implies.
6. Checks that the image is a brain at all: the grey matter and CSF classes must be folded
   (compactness at most ``MAX_GM_COMPACTNESS``/``MAX_CSF_COMPACTNESS``), CSF at most
   ``MAX_CSF_SHARE`` of the voxels, grey and white matter ``MIN_WM_GM_SEPARATION`` spreads apart,
   CSF ``MIN_CSF_GAP`` of the brightest median away from grey matter. A failed check gives a
   generic MR.
7. Confidence ``0.5 + 0.45 * min(1, margin / FULL_MARGIN)``, kept below ``CONFIDENT`` for a T1
   whose grey matter median is above ``T1_MAX_GREY_WHITE_RATIO`` of the white matter's (T1's
   contrast is larger: two classes that close may be a FLAIR). Below ``CONFIDENT`` (0.6) the
   contrast is only a leaning and the answer is a generic MR, which selects the safe
   cross-modality preset.
8. Steps 4-7 once more with the grey/white threshold fitted again on the steady voxels alone
   (the CSF threshold stays: CSF against tissue is a large contrast, and a cropped or stripped
   brain has little CSF away from borders). The mixtures no longer pull that threshold into the
   white-matter peak. The answer is the more confident of the two readings that decide; if they
   decide on different contrasts, a generic MR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

WORKING_SPACING_MM = 3.0
RIM_MM = 12.0  # scalp and skull together are about 10-15 mm thick
MIN_VOXELS = 400
BIAS_SIGMA_MM = 30.0
MIN_WM_SHARE = 0.15
DEPTH_UNIT_MM = 4.0
COMPACTNESS_UNIT = 0.1
FULL_MARGIN = 3.0
MAX_GM_COMPACTNESS = 0.45
MAX_CSF_COMPACTNESS = 0.4
MAX_CSF_SHARE = 0.4
MIN_WM_GM_SEPARATION = 1.5
MIN_CSF_GAP = 0.15
CONFIDENT = 0.6
STEADY_SHARE = 0.7  # share of the region taken as steady (gentlest gradient): shapes and the refit use these
T1_MAX_GREY_WHITE_RATIO = 0.83  # T1 grey/white medians measured 0.64-0.78; FLAIR read as T1 0.86-0.89

_CONTRASTS = ("T1", "T2", "FLAIR")
# Where the white matter sits in the intensity order (0 darkest .. 2 brightest) -> the contrast,
# and the roles of the three classes from darkest to brightest.
# Contrasts are plain names ("T1", "T2", "FLAIR", "MR"): the caller maps them to its Modality.
_ROLES: dict[int, tuple[str, tuple[str, str, str]]] = {
    2: ("T1", ("CSF", "grey matter", "white matter")),
    0: ("T2", ("white matter", "grey matter", "CSF")),
    1: ("FLAIR", ("CSF", "white matter", "grey matter")),
}


@dataclass(frozen=True)
class TissueClass:
    """One intensity class inside the head, darkest first."""

    role: str  # the tissue it stands for under the chosen contrast ('' when none was chosen)
    median: float
    spread: float  # standard deviation
    share: float  # of the voxels analysed
    depth_mm: float | None  # median distance from the head's outline (None: no outline seen)
    compactness: float
    # The same two measured on the class's voxels away from tissue borders (see ``_steady``):
    # what tells white from grey matter, as partial-volume voxels at borders blur the shapes.
    steady_depth_mm: float | None = None
    steady_compactness: float = 0.0

    def describe(self) -> str:
        depth = "" if self.depth_mm is None else f", depth {self.depth_mm:.0f} mm"
        steady = "" if self.steady_depth_mm is None else f"depth {self.steady_depth_mm:.0f} mm, "
        name = self.role or "class"
        return (f"{name} median {self.median:.4g} ({100 * self.share:.0f}%{depth}, "
                f"compactness {self.compactness:.2f}; away from borders {steady}"
                f"compactness {self.steady_compactness:.2f})")


@dataclass(frozen=True)
class ContrastReading:
    """What the tissue classes say: a contrast (or generic MR), how sure, and the evidence."""

    modality: str  # "T1", "T2", "FLAIR", or "MR" when unsure or not a brain
    leaning: str  # the contrast the classes point to, even when too weak to decide
    confidence: float
    margin: float
    classes: tuple[TissueClass, ...]
    detail: str


def _working_copy(image: sitk.Image) -> sitk.Image:
    """A copy of about ``WORKING_SPACING_MM``: voxels averaged in whole blocks, then axes still
    much finer (a 2 mm grid takes no whole block of 3 mm) resampled to it. The compactness limits
    assume voxels about as thick as the cortex: at 2 mm the ribbon is two voxels thick and its
    class would look as compact as white matter."""
    factors = [max(1, min(n, int(WORKING_SPACING_MM / s))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    small = sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), factors)
    spacing = np.asarray(small.GetSpacing())
    fine = spacing < 0.8 * WORKING_SPACING_MM
    if not fine.any():
        return small
    target = np.where(fine, WORKING_SPACING_MM, spacing)
    size = np.maximum(1, np.floor(np.asarray(small.GetSize()) * spacing / target)).astype(int)
    # Centre the coarser grid on the same extent as the fine one.
    shift = np.asarray(small.GetDirection()).reshape(3, 3) @ ((target - spacing) / 2.0)
    return sitk.Resample(small, [int(n) for n in size], sitk.Transform(), sitk.sitkLinear,
                         tuple(np.asarray(small.GetOrigin()) + shift), tuple(float(t) for t in target),
                         small.GetDirection(), 0.0, sitk.sitkFloat32)


def _head_and_depth(small: sitk.Image, values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    top = float(np.percentile(values, 99.0))
    rough = sitk.GetImageFromArray((values > 0.1 * top).astype(np.uint8))
    rough.CopyInformation(small)
    largest = sitk.BinaryThreshold(sitk.RelabelComponent(sitk.ConnectedComponent(rough), sortByObjectSize=True),
                                   1, 1, 1, 0)
    head_image = sitk.BinaryFillhole(largest)
    head = sitk.GetArrayFromImage(head_image) > 0
    if head.all():
        return head, None  # the whole field of view is inside the head: no outline to measure from
    distance = sitk.SignedMaurerDistanceMap(head_image, insideIsPositive=True, squaredDistance=False,
                                            useImageSpacing=True)
    return head, sitk.GetArrayFromImage(distance)


def _flatten_bias(small: sitk.Image, values: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Divide by the region's local mean over ``BIAS_SIGMA_MM``: a smooth bias field goes, while
    grey and white matter, interleaved at every few millimetres, keep their contrast. The quotient
    is kept wherever the local mean reaches, not only in the region, so the region's edge shows
    no false step to the gradient of ``_steady``."""
    def smooth(array: np.ndarray) -> np.ndarray:
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.CopyInformation(small)
        return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, BIAS_SIGMA_MM))

    weight = region.astype(np.float32)
    local = smooth(values * weight) / np.maximum(smooth(weight), 1e-6)
    flat = np.where(local > 0, values / np.maximum(local, 1e-12), 0.0)
    return flat.astype(np.float32) * float(np.median(values[region]))


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    """The threshold that maximises the between-class variance of two classes (Otsu)."""
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        return float(hi)
    hist, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    p = hist.astype(np.float64) / hist.sum()
    centers = (edges[:-1] + edges[1:]) / 2.0
    w, m = np.cumsum(p), np.cumsum(p * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m[-1] * w - m) ** 2 / (w * (1.0 - w))
    between[~np.isfinite(between)] = -np.inf
    return float(edges[int(np.argmax(between)) + 1])


def _three_class_thresholds(values: np.ndarray, bins: int = 128) -> tuple[float, float]:
    """Two thresholds that maximise the between-class variance of three classes (Otsu)."""
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        return float(lo), float(hi)
    hist, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    p = hist.astype(np.float64) / hist.sum()
    centers = (edges[:-1] + edges[1:]) / 2.0
    w, m = np.cumsum(p), np.cumsum(p * centers)
    i, j = np.arange(bins)[:, None], np.arange(bins)[None, :]
    w0, w1, w2 = w[i], w[j] - w[i], 1.0 - w[j]
    m0, m1, m2 = m[i], m[j] - m[i], m[-1] - m[j]
    valid = (j > i) & (w0 > 0) & (w1 > 1e-9) & (w2 > 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(valid, m0**2 / w0 + m1**2 / w1 + m2**2 / w2, -np.inf)
    a, b = np.unravel_index(int(np.argmax(between)), between.shape)
    return float(edges[a + 1]), float(edges[b + 1])


def _split_the_larger_part(values: np.ndarray) -> tuple[float, float]:
    """Two classes, then the larger one split in two: used when the three-class criterion let
    one class hold almost everything (a low grey/white contrast next to a large CSF contrast)."""
    first = _otsu(values)
    lower = values <= first
    if lower.mean() >= 0.5:
        return _otsu(values[lower]), first
    return first, _otsu(values[~lower])


def _compactness(labels: np.ndarray, label: int, members: np.ndarray) -> float:
    inner = members.copy()
    for axis in range(3):
        for step in (1, -1):
            inner &= np.roll(labels, step, axis=axis) == label
    return float(inner.sum() / max(1, members.sum()))


def _steady(values: np.ndarray, region: np.ndarray, spacing_zyx: tuple[float, ...]) -> np.ndarray:
    """The ``STEADY_SHARE`` of the region's voxels with the gentlest intensity gradient.

    At about 3 mm most voxels on a border between two tissues are mixtures of both. A mixture
    lands between the two tissues' grey levels, and in a FLAIR the mixture of dark CSF and bright
    cortex lands right on white matter's: the white-matter class then takes in a thin, shallow
    shell along the sulci and looks less like white matter, and its histogram peak is blurred.
    Mixtures sit where the intensity changes fastest, so leaving out the steepest voxels leaves
    mostly pure tissue.
    """
    gradients = np.gradient(values.astype(np.float64), *spacing_zyx)
    magnitude = np.sqrt(sum(g * g for g in gradients))
    limit = np.quantile(magnitude[region], STEADY_SHARE)
    return region & (magnitude <= limit)


def _fit_thresholds(inside: np.ndarray) -> tuple[float, float]:
    """The two thresholds of three classes over all the region's voxels."""
    low, high = _three_class_thresholds(inside)
    shares = np.array([(inside <= low).mean(), ((inside > low) & (inside <= high)).mean(), (inside > high).mean()])
    if (shares >= MIN_WM_SHARE).sum() < 2:
        low, high = _split_the_larger_part(inside)
    return low, high


def _refit_grey_white(values: np.ndarray, steady: np.ndarray, thresholds: tuple[float, float],
                      leaning: str) -> tuple[float, float] | None:
    """The threshold between the two tissue classes fitted again on the steady voxels only; the
    CSF threshold stays (CSF against tissue is a large contrast that mixtures hardly move, and
    steady voxels may hold almost no CSF: a cropped or skull-stripped brain has little of it
    away from borders). CSF is the brightest class of a T2 and the darkest of the others."""
    low, high = thresholds
    tissue = values[steady & ((values <= high) if leaning == "T2" else (values > low))]
    if tissue.size < 10:
        return None
    split = _otsu(tissue)
    return (split, high) if leaning == "T2" else (low, split)


def _classes(values: np.ndarray, region: np.ndarray, depth: np.ndarray | None,
             steady: np.ndarray, thresholds: tuple[float, float]) -> list[TissueClass] | None:
    """Three intensity classes over the region; shares, medians and spreads count all voxels,
    shapes both all and the steady ones."""
    inside = values[region]
    low, high = thresholds
    labels = np.zeros(values.shape, np.uint8)
    labels[region] = 1 + (inside > low) + (inside > high)
    found = []
    for label in (1, 2, 3):
        members = labels == label
        if members.sum() < 10:
            return None
        member_values = values[members]
        kept = members & steady
        if kept.sum() < 10:
            kept = members
        found.append(TissueClass(
            role="", median=float(np.median(member_values)), spread=float(np.std(member_values)),
            share=float(members.sum() / region.sum()),
            depth_mm=None if depth is None else float(np.median(depth[members])),
            compactness=_compactness(labels, label, members),
            steady_depth_mm=None if depth is None else float(np.median(depth[kept])),
            steady_compactness=_compactness(labels, label, kept)))
    return found


def _white_matter_score(c: TissueClass) -> float:
    return (c.steady_depth_mm or 0.0) / DEPTH_UNIT_MM + c.steady_compactness / COMPACTNESS_UNIT


def _brain_checks(named: list[TissueClass], contrast: str) -> list[str]:
    """Reasons the classes do not look like a brain under ``contrast`` (empty: they do)."""
    roles = {c.role: c for c in named}
    wm, gm, csf = roles["white matter"], roles["grey matter"], roles["CSF"]
    top = max(c.median for c in named)
    failed = []
    if gm.compactness > MAX_GM_COMPACTNESS:
        failed.append(f"the grey-matter class is not folded (compactness {gm.compactness:.2f})")
    if csf.compactness > MAX_CSF_COMPACTNESS:
        failed.append(f"the CSF class is not folded (compactness {csf.compactness:.2f})")
    if csf.share > MAX_CSF_SHARE:
        failed.append(f"the CSF class holds {100 * csf.share:.0f}% of the head")
    separation = abs(wm.median - gm.median) / max(1e-12, (wm.spread + gm.spread) / 2.0)
    if separation < MIN_WM_GM_SEPARATION:
        failed.append(f"white and grey matter only {separation:.1f} spreads apart")
    gap = (csf.median - gm.median) if contrast == "T2" else (gm.median - csf.median)
    if gap < MIN_CSF_GAP * top:
        failed.append(f"CSF only {100 * gap / top:.0f}% of the brightest median from grey matter")
    return failed


def read_contrast(image: sitk.Image) -> ContrastReading | None:
    """The contrast of a non-negative MR head image from its tissue classes; None when the image
    is too small or too uniform to have three classes."""
    if image.GetDimension() != 3 or min(image.GetSize()) < 3:
        return None  # a slice or a thin slab has no depth to tell white from grey matter
    small = _working_copy(image)
    values = np.nan_to_num(sitk.GetArrayFromImage(small).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if values.ndim != 3 or values.size < MIN_VOXELS:
        return None
    head, depth = _head_and_depth(small, values)
    region = head
    if depth is not None:
        for rim in (RIM_MM, RIM_MM / 2.0, 0.0):  # a small or skull-stripped head keeps its core
            region = head & (depth >= rim)
            if region.sum() >= max(MIN_VOXELS, 0.15 * head.sum()):
                break
    if region.sum() < MIN_VOXELS:
        return None
    if BIAS_SIGMA_MM > 0:
        values = _flatten_bias(small, values, region)
    steady = _steady(values, region, small.GetSpacing()[::-1])
    thresholds = _fit_thresholds(values[region])
    whole = _reading(values, region, depth, steady, thresholds, fitted="all voxels")
    if whole is None or whole.leaning not in _CONTRASTS:
        return whole  # one class dominates: not three tissues
    refit = _refit_grey_white(values, steady, thresholds, whole.leaning)
    sharp = None if refit is None else _reading(values, region, depth, steady, refit,
                                                fitted="voxels away from tissue borders")
    decided = [reading for reading in (whole, sharp) if reading is not None and reading.modality != "MR"]
    if len({reading.modality for reading in decided}) > 1:
        return ContrastReading("MR", whole.leaning, 0.45, 0.0, whole.classes,
                               "the two fits disagree: " + " / ".join(r.detail for r in decided))
    return max(decided or [whole], key=lambda reading: reading.confidence)


def _reading(values: np.ndarray, region: np.ndarray, depth: np.ndarray | None, steady: np.ndarray,
             thresholds: tuple[float, float], *, fitted: str) -> ContrastReading | None:
    """The contrast from one set of class thresholds (see ``_classes``)."""
    classes = _classes(values, region, depth, steady, thresholds)
    if classes is None:
        return None
    eligible = [i for i, c in enumerate(classes) if c.share >= MIN_WM_SHARE]
    ranked = sorted(eligible, key=lambda i: _white_matter_score(classes[i]), reverse=True)
    if len(ranked) < 2:
        plain = "; ".join(c.describe() for c in classes)
        return ContrastReading("MR", "MR", 0.45, 0.0, tuple(classes),
                               f"one intensity class dominates the head ({plain}): not a brain's three tissues")
    white = ranked[0]
    margin = _white_matter_score(classes[white]) - _white_matter_score(classes[ranked[1]])
    leaning, roles = _ROLES[white]
    named = [replace(c, role=role) for role, c in zip(roles, classes)]
    evidence = "; ".join(c.describe() for c in named)
    failed = _brain_checks(named, leaning)
    if failed:
        return ContrastReading("MR", leaning, 0.45, margin, tuple(named),
                               f"tissue classes fitted on {fitted} do not look like a brain "
                               f"({'; '.join(failed)}): {evidence}")
    confidence = 0.5 + 0.45 * min(1.0, max(0.0, margin) / FULL_MARGIN)
    roles = {c.role: c for c in named}
    close = roles["grey matter"].median / max(1e-12, roles["white matter"].median)
    if leaning == "T1" and close > T1_MAX_GREY_WHITE_RATIO:
        # FLAIR's grey/white contrast is smaller than T1's white/grey one: two bright classes this
        # close may be a FLAIR whose white matter was misplaced, so T1 stays a leaning.
        confidence = min(confidence, CONFIDENT - 0.05)
    confidence = round(confidence, 3)
    order = " > ".join(c.role for c in sorted(named, key=lambda c: c.median, reverse=True))
    why = (f"brain tissue order {order} ({leaning}), classes fitted on {fitted}, the white matter told "
           f"by depth and compactness away from tissue borders with margin {margin:.2f}: {evidence}")
    if confidence < CONFIDENT or math.isnan(confidence):
        return ContrastReading("MR", leaning, confidence, margin, tuple(named),
                               f"leans {leaning} but too weakly to decide: {why}")
    return ContrastReading(leaning, leaning, confidence, margin, tuple(named), why)
