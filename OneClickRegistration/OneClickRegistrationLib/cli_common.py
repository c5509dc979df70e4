"""Pieces shared by the command-line entry points: parser, error handling and a terminal progress line."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import NoReturn

from .errors import OneClickError, first_line
from .interrupts import exit_code
from .modality import Modality

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

MODALITY_CHOICES = [m.value for m in Modality]

# Kept under its former name for the sub-commands that still import it.
one_line = first_line


class QuietParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line with exit code 2 (not the whole usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def guarded(
    run: Callable[[], int],
    *,
    prog: str = "oneclick-register",
    unexpected: tuple[type[BaseException], ...] = (),
) -> int:
    """Run a command; documented errors become a one-line message and exit code 2, never a traceback.

    ``unexpected`` lists further exception types shown the same way, with their type name (a
    command that hands user files straight to ITK or the file system lists ``RuntimeError, OSError``).
    """
    try:
        return run()
    except OneClickError as exc:
        print(f"{prog}: error: {first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM turned into one by interrupts.py
        print(f"{prog}: interrupted", file=sys.stderr)
        return exit_code(interrupt)
    except unexpected as exc:
        print(f"{prog}: error: {type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


class TerminalProgress:
    """Prints progress on one updating line when stderr is a terminal, else every 10% and each new stage."""

    def __init__(self, prefix: str = "", *, enabled: bool = True) -> None:
        self.prefix = prefix
        self.enabled = enabled
        self._tty = sys.stderr.isatty()
        self._last_decile = -1
        self._last_stage = ""

    def __call__(self, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        if self._tty:
            bar = "#" * int(fraction * 30)
            print(
                f"\r{self.prefix}[{bar:<30}] {fraction:4.0%} {message[:60]:<60}",
                end="",
                file=sys.stderr,
                flush=True,
            )
            if fraction >= 1.0:
                print(file=sys.stderr)
            return
        decile = int(fraction * 10)
        stage = re.sub(r"[\d.]+", "#", message)  # a new stage (not a new count) always gets its line
        if decile != self._last_decile or stage != self._last_stage:
            self._last_decile, self._last_stage = decile, stage
            print(f"{self.prefix}{fraction:4.0%} {message}", file=sys.stderr, flush=True)
