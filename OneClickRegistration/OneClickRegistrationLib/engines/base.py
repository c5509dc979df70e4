"""The engine protocol: what every registration engine adapter takes and returns.

An adapter has two halves. Building its command or parameter set from a request is a pure function
(testable without the engine installed). Running it goes through
:func:`OneClickRegistrationLib.process_runner.run_process` (external programs) or the engine's own
library (SimpleITK), reporting progress and honouring cancel.

Transform convention everywhere: an ITK *resampling* transform in LPS physical space that maps
points of the **fixed** image to points of the **moving** image.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import SimpleITK as sitk

if TYPE_CHECKING:
    from ..presets import Preset

ProgressCallback = Callable[[float, str], None]
"""Called with a fraction in [0, 1] and a short message."""

CancelCheck = Callable[[], bool]
"""Returns True once the user asked to cancel."""

TransformKind = Literal["rigid", "affine"]


@dataclass(frozen=True)
class EngineRequest:
    """One registration to run.

    ``fixed`` and ``moving`` are float32 3D images, already intensity-prepared by the pipeline
    (CT windowing, etc.). ``initial_transform`` (fixed->moving, linear) is where the optimizer
    starts: the pipeline always computes one, so engines never initialize themselves.
    ``fixed_mask``/``moving_mask`` (optional, any grid, non-zero = inside) restrict where the
    engine's metric samples, e.g. to a partial field of view.
    """

    fixed: sitk.Image
    moving: sitk.Image
    preset: Preset
    initial_transform: sitk.Transform
    transform_kind: TransformKind = "rigid"
    fixed_mask: sitk.Image | None = None
    moving_mask: sitk.Image | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.initial_transform, sitk.Transform):
            from ..errors import InputError

            raise InputError("An engine request needs an initial transform (fixed->moving) to start from; "
                             f"received {type(self.initial_transform).__name__}.")


@dataclass(frozen=True)
class RunOptions:
    """How to run: callbacks, limits and debugging switches (never what to compute)."""

    progress: ProgressCallback | None = None
    cancel: CancelCheck | None = None
    timeout_s: float | None = None
    keep_temp: bool = False
    # Extra threads the engine may use; None lets it choose.
    threads: int | None = None


@dataclass(frozen=True)
class EngineOutput:
    """What an engine returns: the full fixed->moving transform (initial transform included)."""

    transform: sitk.Transform
    log: tuple[str, ...] = ()
    # Optimizer's own final metric value, for the log only: it is not comparable across engines.
    engine_metric_value: float | None = None
    kept_temp_dir: str | None = None


@dataclass(frozen=True)
class Availability:
    """Whether an engine can run here, and where it was found (or why not)."""

    available: bool
    detail: str


@dataclass(frozen=True)
class EngineSettings:
    """Where to find an engine's program; empty means "search the usual places"."""

    executable: str | os.PathLike[str] | None = None
    search_dirs: tuple[str, ...] = field(default_factory=tuple)


@runtime_checkable
class RegistrationEngine(Protocol):
    """A registration engine adapter."""

    name: str

    def availability(self) -> Availability:
        """Cheap check (no registration run) of whether the engine can run here."""
        ...

    def run(self, request: EngineRequest, options: RunOptions) -> EngineOutput:
        """Run the registration. Raises the errors of :mod:`OneClickRegistrationLib.errors`."""
        ...


def report(options: RunOptions, fraction: float, message: str) -> None:
    """Send progress if anyone listens; clamps the fraction to [0, 1]."""
    if options.progress is not None:
        options.progress(min(1.0, max(0.0, fraction)), message)


def check_cancel(options: RunOptions, engine: str) -> None:
    """Raise :class:`CancelledError` if the user asked to cancel."""
    from ..errors import CancelledError

    if options.cancel is not None and options.cancel():
        raise CancelledError(f"The {engine} registration was cancelled.")
