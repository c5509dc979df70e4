"""Writing a registration's outputs: transform, resampled volume, report and overlay picture."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .images import write_image, write_text, write_transform
from .interrupts import deferred
from .overlay import caption_for, write_overlay
from .pipeline import RegistrationResult

TRANSFORM_FILE = "transform.tfm"
REGISTERED_FILE = "registered.nrrd"
REPORT_FILE = "report.json"
OVERLAY_FILE = "overlay.png"


def write_outputs(
    result: RegistrationResult,
    fixed_image,
    outdir: str | os.PathLike[str],
    *,
    extra: dict[str, object] | None = None,
) -> dict[str, Path]:
    """Write the four outputs into ``outdir``, all or nothing.

    Everything is first written (and checked) in a hidden staging folder inside ``outdir``, then
    renamed into place; a failure on any file leaves ``outdir`` as it was, never a new transform
    beside an old report.
    """
    folder = Path(outdir)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-outputs-", dir=folder))
    try:
        final = {
            "transform": folder / TRANSFORM_FILE,
            "registered": folder / REGISTERED_FILE,
            "overlay": folder / OVERLAY_FILE,
            "report": folder / REPORT_FILE,
        }
        write_transform(result.transform, staging / TRANSFORM_FILE)
        write_image(result.registered, staging / REGISTERED_FILE)
        write_overlay(fixed_image, result.registered, staging / OVERLAY_FILE,
                      fill_value=result.preset.moving_fill_value, transform=result.transform,
                      caption=caption_for(result))
        report = result.to_report()
        report["outputs"] = {name: str(path) for name, path in final.items() if name != "report"}
        if extra:
            report.update(extra)
        write_text(json.dumps(report, indent=2, default=str), staging / REPORT_FILE)
        with deferred():  # a signal never leaves a new transform beside an old report
            for path in final.values():
                os.replace(staging / path.name, path)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
