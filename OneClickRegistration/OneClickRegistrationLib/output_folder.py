"""The output folder a command was given, checked before any work is done."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InputError


def check_output_folder(folder: str | os.PathLike[str], *, option: str = "-o") -> Path:
    """Refuse an output folder that cannot hold the outputs: an existing file, a path below a file,
    or a place where nothing can be written. Nothing is created; the folder itself is made when the
    outputs are written.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {str(path)!r} is an existing file; expected a folder (new or existing) "
                         "for the outputs.")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder.")
    try:
        with tempfile.TemporaryDirectory(prefix=".oneclick-write-test-", dir=existing):
            pass
    except OSError as exc:
        raise InputError(f"{option} {str(path)!r} cannot be written: {str(existing)!r} refuses new files "
                         f"({exc.strerror or exc}).") from None
    return path
