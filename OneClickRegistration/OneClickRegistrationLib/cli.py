"""The ``oneclick-register`` command line.

``oneclick-register FIXED MOVING -o OUTDIR [...]`` registers one pair; the sub-commands ``score``,
``batch`` and ``demo`` do the rest. Every documented failure exits non-zero with a one-line message
on stderr and no traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from .interrupts import exit_code, signals_interrupt

# sub-command -> module with ``main(argv: list[str]) -> int``
_SUBCOMMANDS: dict[str, str] = {
    "score": "cli_score",
    "batch": "cli_batch",
    "demo": "cli_demo",
}

_COMMAND_LINES = """  oneclick-register FIXED MOVING -o OUTDIR [options]   register one pair
  oneclick-register score FIXED MOVING [options]       score an alignment
  oneclick-register batch PAIRS.csv -o DIR             register many pairs
  oneclick-register demo [-o DIR]                      offline demonstration
Run any of them with --help for its options."""
USAGE = "usage:\n" + _COMMAND_LINES
COMMANDS = "commands:\n" + _COMMAND_LINES


def _entry(module: str) -> Callable[[list[str]], int]:
    return import_module(f"{__package__}.{module}").main


def _dispatch(args: list[str]) -> int:
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        from .cli_register import build_parser

        print(build_parser().format_help())
        print(COMMANDS)
        return 0
    if args[0] in _SUBCOMMANDS:
        return _entry(_SUBCOMMANDS[args[0]])(args[1:])
    return _entry("cli_register")(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Ctrl-C and SIGTERM stop it cleanly (exit 130 / 143) in every stage."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with signals_interrupt():
            return _dispatch(args)
    except KeyboardInterrupt as interrupt:  # one that arrived outside a command's own guard
        print("oneclick-register: interrupted", file=sys.stderr)
        return exit_code(interrupt)


if __name__ == "__main__":
    sys.exit(main())
