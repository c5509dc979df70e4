"""What a registration is asked to do: the run's settings and what is known about each image.

Both are frozen and validated once, when they are made; the pipeline, recovery and every front end
(command line, batch, Slicer) pass these objects instead of re-listing their fields.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import SimpleITK as sitk

from .engines.base import CancelCheck, ProgressCallback, RunOptions, TransformKind
from .errors import InputError

TRANSFORM_KINDS: tuple[str, ...] = ("rigid", "affine")


@dataclass(frozen=True)
class ImageInfo:
    """What is known about one image besides its voxels.

    ``name`` (a file or node name) and ``metadata`` (DICOM-like tags) help modality detection;
    ``modality`` is the user's choice ("T1", "T2", "FLAIR", "CT", "MR") and wins over detection;
    ``mask`` (on the image's grid, nonzero = inside) replaces the automatic head mask.
    """

    name: str | None = None
    metadata: Mapping[str, str] | None = None
    modality: str | None = None
    mask: sitk.Image | None = None


@dataclass(frozen=True)
class RegistrationOptions:
    """How to run one registration.

    ``engine``: None picks the preset's first installed engine (with the embedded SimpleITK engine
    as a fallback); a name forces that engine. ``recover``: try other starts when the verdict is
    not ``good``, within ``time_budget_s`` (None: a default scaled on the first attempt).
    ``timeout_s`` caps each engine run; ``threads`` caps an engine's threads; ``keep_temp`` keeps
    the engines' work folders (their paths are in the result). ``progress(fraction, message)`` and
    ``cancel()`` connect the run to a user interface. ``initial_transform`` (fixed->moving, e.g. a
    manual pre-alignment) replaces the automatic initialization as the first attempt's start.
    """

    engine: str | None = None
    transform: TransformKind = "rigid"
    recover: bool = True
    timeout_s: float | None = None
    time_budget_s: float | None = None
    threads: int | None = None
    keep_temp: bool = False
    progress: ProgressCallback | None = None
    cancel: CancelCheck | None = None
    initial_transform: sitk.Transform | None = None

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORM_KINDS:
            raise InputError(f"transform must be 'rigid' or 'affine'; received {self.transform!r}.")
        if self.engine is not None and not isinstance(self.engine, str):
            raise InputError(f"engine must be an engine name or None; received {self.engine!r}.")
        _check_seconds("timeout_s", self.timeout_s, allow_zero=False)
        _check_seconds("time_budget_s", self.time_budget_s, allow_zero=True)
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise InputError(f"threads must be a whole number of at least 1, or None; received {self.threads!r}.")

    def run_options(self, *, progress: ProgressCallback | None = None,
                    timeout_s: float | None = None) -> RunOptions:
        """The engine-level options of one engine run (its own progress slice and limits).

        Threads are set explicitly for every run (elastix -threads, ANTs' ITK variable, SimpleITK's
        method, BRAINSFit's numberOfThreads): all cores unless ``threads`` caps them.
        """
        return RunOptions(
            progress=progress,
            cancel=self.cancel,
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
            keep_temp=self.keep_temp,
            threads=self.threads or os.cpu_count() or 1,
        )


def _check_seconds(name: str, value: float | None, *, allow_zero: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} must be a number of seconds or None; received {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "at least 0" if allow_zero else "more than 0"
        raise InputError(f"{name} must be {bound} seconds; received {value!r}.")


_OPTION_NAMES = frozenset(f.name for f in fields(RegistrationOptions))
_IMAGE_FIELDS = {f"{role}_{f.name}": (role, f.name) for role in ("fixed", "moving") for f in fields(ImageInfo)}


def from_shortcuts(
    options: RegistrationOptions | None,
    fixed: ImageInfo | None,
    moving: ImageInfo | None,
    shortcuts: Mapping[str, Any],
    *,
    images_only: bool = False,
) -> tuple[RegistrationOptions, ImageInfo, ImageInfo]:
    """Fold keyword shortcuts (``engine=``, ``fixed_name=``, ``moving_modality=``, ...) into the objects.

    A shortcut overrides the same field of an object given alongside it; ``images_only`` accepts
    only the image shortcuts (for calls that run no engine).
    """
    allowed = set(_IMAGE_FIELDS) if images_only else _OPTION_NAMES | set(_IMAGE_FIELDS)
    unknown = sorted(set(shortcuts) - allowed)
    if unknown:
        expected = "" if images_only else f"fields of RegistrationOptions ({', '.join(sorted(_OPTION_NAMES))}) or "
        raise TypeError(
            f"Unknown keyword(s) {', '.join(unknown)}; expected {expected}fixed_ or moving_ followed by a field "
            "of ImageInfo (name, metadata, modality, mask)."
        )
    infos = {"fixed": fixed or ImageInfo(), "moving": moving or ImageInfo()}
    for key, value in shortcuts.items():
        if key in _IMAGE_FIELDS:
            role, field_name = _IMAGE_FIELDS[key]
            infos[role] = replace(infos[role], **{field_name: value})
    chosen = {key: value for key, value in shortcuts.items() if key in _OPTION_NAMES}
    settled = options or RegistrationOptions()
    if chosen:
        settled = replace(settled, **chosen)
    return settled, infos["fixed"], infos["moving"]
