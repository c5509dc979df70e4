"""Child-process entry point that runs antspyx's in-process ``antsRegistration`` library call.

The ANTs adapter starts this file as its own process (``python ants_child.py <arguments.json>``)
whenever no ``antsRegistration`` executable is found. Running the library call in a child keeps it
cancellable (the whole process is killed), keeps a GUI responsive, and isolates crashes: ANTs
segfaults on some bad inputs (a missing image file, for example), which must not take Slicer down.

This file deliberately imports nothing from the package: it is started by path, so it works even
where the package is only on the parent's ``sys.path`` (inside Slicer) and not on the child's.

The JSON file holds ``{"arguments": [...]}``, the antsRegistration argument list. A command line of
``-- arg1 arg2 ...`` runs those arguments directly (a stand-in ``antsRegistration`` executable).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

EXIT_USAGE = 2
EXIT_NO_ANTSPYX = 3


def load_ants_library() -> ModuleType:
    """antspyx's compiled ``ants.lib`` module.

    ``import ants`` pulls in the whole Python layer (about 1.5 s); only the compiled extension is
    needed, so it is loaded straight from the package folder, with the normal import as fallback.
    """
    spec = importlib.util.find_spec("ants")
    if spec is None:
        raise ImportError("the antspyx package (module 'ants') is not installed")
    for folder in spec.submodule_search_locations or ():
        for candidate in sorted(Path(folder).glob("lib.*")):
            if candidate.suffix not in (".so", ".pyd"):
                continue
            try:
                loader = importlib.machinery.ExtensionFileLoader("ants.lib", str(candidate))
                lib_spec = importlib.util.spec_from_file_location("ants.lib", str(candidate), loader=loader)
                if lib_spec is None:
                    continue
                module = importlib.util.module_from_spec(lib_spec)
                loader.exec_module(module)
                return module
            except ImportError:
                break
    from ants import lib  # the documented way, slower

    return lib


def read_arguments(argv: list[str]) -> list[str]:
    if len(argv) >= 1 and argv[0] == "--":
        return argv[1:]
    if len(argv) != 1:
        raise ValueError(f"expected one JSON arguments file (or '-- args...'); received {argv!r}")
    payload = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    arguments = payload.get("arguments") if isinstance(payload, dict) else None
    if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
        raise ValueError(f"{argv[0]} must hold {{\"arguments\": [list of strings]}}")
    return arguments


def main(argv: list[str] | None = None) -> int:
    # Line-buffered Python output, so our own messages interleave in order with ANTs' C++ output
    # (which flushes at every std::endl; the parent reads the pipe line by line).
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    try:
        arguments = read_arguments(list(sys.argv[1:] if argv is None else argv))
    except (OSError, ValueError) as exc:
        print(f"ERROR: ants_child: {exc}", flush=True)
        return EXIT_USAGE
    try:
        lib = load_ants_library()
    except ImportError as exc:
        print(f"ERROR: cannot load antspyx's antsRegistration: {exc}", flush=True)
        return EXIT_NO_ANTSPYX
    try:
        code = lib.antsRegistration(arguments)
    except Exception as exc:  # the binding turns C++ exceptions into Python ones: report, fail
        print(f"ERROR: antsRegistration raised {type(exc).__name__}: {exc}", flush=True)
        return 1
    sys.stdout.flush()
    return int(code) if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
