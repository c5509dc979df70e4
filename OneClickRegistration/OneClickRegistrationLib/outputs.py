"""Writing a registration's outputs: transform, resampled volume, report and overlay picture."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .images import write_image, write_text, write_transform
from .overlay import write_overlay
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
    """Write the four outputs into ``outdir``; each file appears only once complete."""
    folder = Path(outdir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "transform": write_transform(result.transform, folder / TRANSFORM_FILE),
        "registered": write_image(result.registered, folder / REGISTERED_FILE),
        "overlay": write_overlay(
            fixed_image, result.registered, folder / OVERLAY_FILE, fill_value=result.preset.moving_fill_value
        ),
    }
    report = result.to_report()
    report["outputs"] = {name: str(path) for name, path in paths.items()}
    if extra:
        report.update(extra)
    paths["report"] = write_text(json.dumps(report, indent=2, default=str), folder / REPORT_FILE)
    return paths
