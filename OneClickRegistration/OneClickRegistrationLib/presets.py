"""Hard-coded registration presets, one per ordered (fixed, moving) modality pair.

The table is data: a few named settings blocks combined per pair, no branching logic. Every engine
adapter translates the same :class:`Preset` fields into its own parameters, so the presets stay
engine-agnostic. Where a family departs from the generic block, the tuning study
``Testing/Benchmarks/bench_presets.py`` showed the gain on held-out cases (README, "Presets").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .modality import Modality, parse_modality

Similarity = Literal["mi", "ncc"]
Initialization = Literal["geometry", "moments"]

# Fill values for voxels outside the moving image, by the moving modality: air.
FILL_VALUE = {Modality.CT: -1024.0, Modality.T1: 0.0, Modality.T2: 0.0, Modality.FLAIR: 0.0, Modality.MR: 0.0}

# CT is clipped to this Hounsfield window before registration: it keeps soft tissue and bone
# contrast while stopping dense bone/metal and the air/pad background from dominating MI.
CT_WINDOW_HU = (-100.0, 1500.0)


@dataclass(frozen=True)
class Preset:
    """Everything an engine needs to know to register one modality pair."""

    name: str
    fixed_modality: Modality
    moving_modality: Modality
    engines: tuple[str, ...]  # preference order; the first installed one runs
    transform: Literal["rigid", "affine"]
    similarity: Similarity  # what the engines optimize
    initialization: Initialization
    shrink_factors: tuple[int, ...]  # pyramid, coarse to fine
    smoothing_sigmas_mm: tuple[float, ...]  # one per pyramid level
    iterations: tuple[int, ...]  # one per pyramid level
    sampling_fraction: float  # share of fixed voxels sampled per metric evaluation
    histogram_bins: int
    interpolation: Literal["linear", "bspline"]
    winsorize: tuple[float, float]  # intensity quantiles clipped before registration (MR)
    fixed_ct_window: tuple[float, float] | None
    moving_ct_window: tuple[float, float] | None
    moving_fill_value: float
    score_metric: Literal["ncc", "nmi"]  # the metric the result is judged with

    def describe(self) -> str:
        levels = "/".join(str(s) for s in self.shrink_factors)
        return (
            f"{self.name}: {self.transform}, optimize {self.similarity.upper()}, "
            f"init {self.initialization}, pyramid {levels}, score {self.score_metric.upper()}"
        )


# Settings blocks. Same-modality pairs optimize correlation; anything else mutual information.
# The generic block below is where the tuning study (Testing/Benchmarks/bench_presets.py) started;
# each family departs from it only where the study's held-out cases kept a gain (README, "Presets").
_COMMON = dict(
    transform="rigid",
    shrink_factors=(4, 2, 1),
    smoothing_sigmas_mm=(2.0, 1.0, 0.0),
    iterations=(200, 100, 50),
    sampling_fraction=0.10,
    histogram_bins=32,
    interpolation="linear",
    winsorize=(0.005, 0.995),
)
# MR pairs keep the full iteration count: halving it was as accurate on the study's 2 mm heads
# (~0.7x the time) but a 4 cm object on a 1 mm grid went from 0.08 to 0.34 mm (test_robustness_geometry).
# Pairs with a CT keep the generic pyramid: the study's faster 8/4/2 pyramid was measured on 2 mm grids
# only, where its finest level is the full image; on a 1 mm image it would stop at 2 mm voxels.
# Same-contrast MR is optimised with MI too: more accurate than NCC in the study (median 0.052 vs 0.073 mm)
# and on nibabel's real T1 pair (0.10 vs 0.31 mm mean error, 2 mm vs 4 mm SPM-resampled grids); the score
# stays NCC, comparable across same-contrast pairs.
_SAME_MR = dict(_COMMON, similarity="mi", initialization="moments", score_metric="ncc")
_CROSS_MR = dict(_COMMON, similarity="mi", initialization="moments", score_metric="nmi")
_WITH_CT = dict(_COMMON, similarity="mi", initialization="moments", score_metric="nmi")
_CT_CT = dict(_COMMON, similarity="ncc", initialization="moments", score_metric="ncc")
# A generic MR may be any contrast, so it is treated as cross-modality even against itself.
_GENERIC_MR = _CROSS_MR

# Elastix first: as accurate as ANTs on every benchmark pair and several times faster (see README);
# ANTs next; BRAINSFit (every Slicer ships it) before the embedded SimpleITK engine, which it matched
# or beat in accuracy at a fifth of the time (bench_brainsfit); SimpleITK last, so one click always
# has an engine.
_ENGINES_DEFAULT = ("elastix", "ants", "brainsfit", "simpleitk")


# The table itself: (fixed, moving) -> settings block. Written out so it reads as data.
_T1, _T2, _FL, _CT, _MR = Modality.T1, Modality.T2, Modality.FLAIR, Modality.CT, Modality.MR
_TABLE: dict[tuple[Modality, Modality], dict[str, object]] = {
    (_T1, _T1): _SAME_MR,
    (_T1, _T2): _CROSS_MR,
    (_T1, _FL): _CROSS_MR,
    (_T1, _CT): _WITH_CT,
    (_T1, _MR): _GENERIC_MR,
    (_T2, _T1): _CROSS_MR,
    (_T2, _T2): _SAME_MR,
    (_T2, _FL): _CROSS_MR,
    (_T2, _CT): _WITH_CT,
    (_T2, _MR): _GENERIC_MR,
    (_FL, _T1): _CROSS_MR,
    (_FL, _T2): _CROSS_MR,
    (_FL, _FL): _SAME_MR,
    (_FL, _CT): _WITH_CT,
    (_FL, _MR): _GENERIC_MR,
    (_CT, _T1): _WITH_CT,
    (_CT, _T2): _WITH_CT,
    (_CT, _FL): _WITH_CT,
    (_CT, _CT): _CT_CT,
    (_CT, _MR): _WITH_CT,
    (_MR, _T1): _GENERIC_MR,
    (_MR, _T2): _GENERIC_MR,
    (_MR, _FL): _GENERIC_MR,
    (_MR, _CT): _WITH_CT,
    (_MR, _MR): _GENERIC_MR,
}


def _build(fixed: Modality, moving: Modality) -> Preset:
    block = _TABLE[(fixed, moving)]
    return Preset(
        name=f"{moving.value}-to-{fixed.value}",
        fixed_modality=fixed,
        moving_modality=moving,
        engines=_ENGINES_DEFAULT,
        fixed_ct_window=CT_WINDOW_HU if fixed is Modality.CT else None,
        moving_ct_window=CT_WINDOW_HU if moving is Modality.CT else None,
        moving_fill_value=FILL_VALUE[moving],
        **block,  # type: ignore[arg-type]
    )


PRESETS: dict[tuple[Modality, Modality], Preset] = {pair: _build(*pair) for pair in _TABLE}


# The pyramid's shrink factors are written for a 1 mm fixed image; images of other resolutions get
# factors that give the same physical voxel size per level (a 2.5 mm image is not shrunk 4x to 10 mm).
REFERENCE_SPACING_MM = 1.0


def level_shrink_factors(preset: Preset, fixed_spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Shrink factors per level adapted to the fixed image's finest spacing (never below 1)."""
    finest = min(fixed_spacing)
    return tuple(max(1, round(s * REFERENCE_SPACING_MM / finest)) for s in preset.shrink_factors)


def preset_for(
    fixed_modality: str | Modality,
    moving_modality: str | Modality,
    *,
    transform: Literal["rigid", "affine"] | None = None,
) -> Preset:
    """The preset for a (fixed, moving) pair; ``transform`` overrides rigid/affine."""
    preset = PRESETS[(parse_modality(fixed_modality), parse_modality(moving_modality))]
    if transform is not None and transform != preset.transform:
        preset = replace(preset, transform=transform)
    return preset
