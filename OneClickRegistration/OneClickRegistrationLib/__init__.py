"""OneClickRegistration core: pure Python (numpy + SimpleITK), no Slicer, VTK or Qt.

Public entry points are re-exported lazily so that importing the package stays cheap and never
pulls an optional engine in.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "register": "pipeline",
    "judge_transform": "pipeline",
    "RegistrationResult": "pipeline",
    "RegistrationOptions": "options",
    "ImageInfo": "options",
    "Attempt": "attempts",
    "score": "metrics",
    "ScoreResult": "metrics",
    "detect_modality": "modality",
    "preset_for": "presets",
    "OneClickError": "errors",
    "InputError": "errors",
    "EngineError": "errors",
    "EngineUnavailableError": "errors",
    "CancelledError": "errors",
}


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'OneClickRegistrationLib' has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module_name}"), name)


__all__ = sorted(_EXPORTS)
