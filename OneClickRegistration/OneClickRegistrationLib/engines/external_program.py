"""One run skeleton for the engines that are external programs (elastix, antsRegistration, BRAINSFit).

:meth:`ExternalProgramEngine.run` is written once, the way TorchIO's ``Transform.__call__`` wraps
each transform's ``apply_transform``: validate the request, find the program, honour cancel, open
the work folder, write the inputs, build the command, run it through
:func:`~OneClickRegistrationLib.process_runner.run_process` with one throttled progress reporter,
explain a failure in the engine's own words, read the result and build the :class:`EngineOutput`.
An adapter fills in only the hooks: arguments in, transform out. An adapter may run its program
more than once (BRAINSFit runs coarse to fine, each run starting from the last one's result); the
runs share the cancel check, the time limit and the progress bar.

Every file lives in the work folder and the program runs there, so its arguments name files
relative to it: a space, comma, bracket or quote in the temporary folder's path never reaches a
program's own option syntax.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np
import SimpleITK as sitk

from ..errors import CancelledError, EngineError, EngineTimeoutError, EngineUnavailableError, InputError
from ..images import check_volume, to_float32, write_image
from ..process_runner import engine_workdir, run_process
from .base import EngineOutput, EngineRequest, RunOptions, check_cancel, report

Program = TypeVar("Program")


@dataclass(frozen=True)
class EngineFiles:
    """The inputs of one external-program run, named relative to the work folder it runs in."""

    fixed: str
    moving: str
    initial_transform: str
    fixed_mask: str | None = None
    moving_mask: str | None = None


@dataclass(frozen=True)
class ProgramCommand:
    """How to start the program: its full argument list, how messages name it, its environment."""

    arguments: tuple[str, ...]
    label: str
    env: Mapping[str, str] | None = None
    # The command's line in the returned log: the command as a user could rerun it.
    shown: str = ""


class ProgressParser(Protocol):
    """Reads an engine's log line by line.

    ``feed`` returns ``(fraction of the program's work done, message)`` when a line moves the run
    forward; ``phase`` names the current stage/level so a new one is always reported.
    """

    phase: object

    def feed(self, line: str) -> tuple[float, str] | None: ...


class ThrottledProgress:
    """Forwards a parser's progress to :attr:`RunOptions.progress`, and keeps the whole log.

    Engines print thousands of lines (one per iteration); a progress bar needs one report per
    ``step`` of the bar or per new phase. Reports are monotonic and mapped into ``[start, end]``
    of the engine's bar (writing inputs and reading the result take the rest).
    """

    def __init__(self, options: RunOptions, parser: ProgressParser, *, start: float = 0.05,
                 end: float = 0.95, step: float = 0.005) -> None:
        self._options = options
        self._parser = parser
        self._start, self._end, self._step = start, end, step
        self._last = -1.0
        self._phase: object = None
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        moved = self._parser.feed(line)
        if moved is None:
            return
        fraction = self._start + (self._end - self._start) * min(1.0, max(0.0, moved[0]))
        fraction = max(fraction, self._last)
        phase = self._parser.phase
        if fraction - self._last >= self._step or phase != self._phase:
            self._last, self._phase = fraction, phase
            report(self._options, fraction, moved[1])


def binary_mask(mask: sitk.Image, role: str) -> sitk.Image:
    """A mask as the 0/1 uint8 image engines read; an empty mask is refused (it selects nothing)."""
    check_volume(mask, role=role)
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise InputError(f"The {role} is empty (no non-zero voxel); a mask must select the region to align.")
    return binary


class ExternalProgramEngine(ABC, Generic[Program]):
    """The skeleton of an external-program adapter; subclasses implement the hooks.

    ``name`` is the registry name (also the temporary folder's prefix); ``label`` names the engine
    in progress messages.
    """

    name: str
    label: str
    # Uncompressed files of this kind are what the program reads fastest and exactly (LPS geometry).
    image_suffix = ".mha"

    def run(self, request: EngineRequest, options: RunOptions) -> EngineOutput:
        check_volume(request.fixed, role="fixed image")
        check_volume(request.moving, role="moving image")
        self.validate(request)
        request = self.adapt_request(request)
        program = self.program()
        check_cancel(options, self.name)
        kept: list[str] = []
        with engine_workdir(self.name, keep_temp=options.keep_temp,
                            on_kept=lambda folder: kept.append(str(folder))) as work:
            report(options, 0.0, f"{self.label}: writing inputs")
            files = self.write_inputs(request, work)
            commands = self.commands(program, request, files, work, options)
            parser = self.progress_parser(request)
            progress = ThrottledProgress(options, parser)
            started = time.monotonic()
            log: list[str] = []
            for command in commands:
                check_cancel(options, self.name)
                # One time limit for all runs together.
                left = None if options.timeout_s is None else options.timeout_s - (time.monotonic() - started)
                try:
                    outcome = run_process(command.arguments, name=command.label, cwd=work, env=command.env,
                                          on_line=progress, cancel=options.cancel,
                                          timeout_s=None if left is None else max(left, 0.001))
                except (CancelledError, EngineTimeoutError, EngineUnavailableError) as exc:
                    if isinstance(exc, EngineTimeoutError) and options.timeout_s is not None:
                        raise EngineTimeoutError(f"{command.label} did not finish within {options.timeout_s:g} s "
                                                 "and was stopped.", log_tail=exc.log_tail) from None
                    raise
                except EngineError as exc:
                    raise self.explain_failure(exc, progress.lines, work) from None
                self.check_log(outcome.log, command)
                log += [command.shown, *outcome.log]
            report(options, 0.97, f"{self.label}: reading the result")
            transform = self.read_result(request, work, log)
            metric = self.metric_value(log, parser)
        report(options, 1.0, f"{self.label}: done")
        return EngineOutput(transform=transform, log=tuple(log), engine_metric_value=metric,
                            kept_temp_dir=kept[0] if kept else None)

    # --- hooks every adapter implements ------------------------------------------------------

    @abstractmethod
    def program(self) -> Program:
        """What to run (a path, or a runner); raises EngineUnavailableError when there is none."""

    @abstractmethod
    def write_initial_transform(self, request: EngineRequest, work: Path) -> str:
        """Write the request's initial transform in the program's format; returns its file name."""

    @abstractmethod
    def commands(self, program: Program, request: EngineRequest, files: EngineFiles, work: Path,
                 options: RunOptions) -> tuple[ProgramCommand, ...]:
        """The command(s) that register ``files``, run in order (they may write parameter files or
        further inputs into ``work``)."""

    @abstractmethod
    def progress_parser(self, request: EngineRequest) -> ProgressParser:
        """A fresh parser of this program's log."""

    @abstractmethod
    def read_result(self, request: EngineRequest, work: Path, log: Sequence[str]) -> sitk.Transform:
        """The program's output as one fixed->moving transform (initial transform included)."""

    # --- hooks with a default --------------------------------------------------------------------

    def validate(self, request: EngineRequest) -> None:
        """Refuse, with InputError, a request this engine cannot run (before anything is written)."""

    def adapt_request(self, request: EngineRequest) -> EngineRequest:
        """The request as this program should receive it (a valid one; e.g. images on a coarser grid)."""
        return request

    def prepare_image(self, image: sitk.Image) -> sitk.Image:
        """The image as the program should read it."""
        return to_float32(image)

    def explain_failure(self, error: EngineError, log: Sequence[str], work: Path) -> EngineError:
        """The error to raise for a failed run, in the engine's words (``log`` is the whole log)."""
        del log, work
        return error

    def check_log(self, log: Sequence[str], command: ProgramCommand) -> None:
        """Raise EngineError for a failure the program reports in its log but not in its exit code."""

    def metric_value(self, log: Sequence[str], parser: ProgressParser) -> float | None:
        """The optimizer's final metric value, when the log shows it (for the log only)."""
        return None

    # --- shared steps --------------------------------------------------------------------------

    def write_inputs(self, request: EngineRequest, work: Path) -> EngineFiles:
        """Write images, masks and the initial transform into ``work``; names are relative to it."""

        def image(img: sitk.Image, stem: str) -> str:
            name = stem + self.image_suffix
            write_image(img, work / name, compress=False)
            return name

        masks = {}
        for side, mask in (("fixed", request.fixed_mask), ("moving", request.moving_mask)):
            masks[side] = None if mask is None else image(binary_mask(mask, f"{side} mask"), f"{side}_mask")
        return EngineFiles(fixed=image(self.prepare_image(request.fixed), "fixed"),
                           moving=image(self.prepare_image(request.moving), "moving"),
                           initial_transform=self.write_initial_transform(request, work),
                           fixed_mask=masks["fixed"], moving_mask=masks["moving"])
