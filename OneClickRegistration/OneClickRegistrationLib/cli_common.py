"""Pieces shared by the command-line entry points: error handling and a terminal progress line."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import NoReturn

from .errors import OneClickError
from .interrupts import exit_code

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class QuietParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (plus usage) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return " ".join(text.splitlines()[:1]) if text else type(error).__name__


def guarded(run: Callable[[], int]) -> int:
    """Run a command; documented errors become a one-line message and exit code 2, never a traceback."""
    try:
        return run()
    except OneClickError as exc:
        print(f"oneclick-register: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM turned into one by interrupts.py
        print("oneclick-register: interrupted", file=sys.stderr)
        return exit_code(interrupt)


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
