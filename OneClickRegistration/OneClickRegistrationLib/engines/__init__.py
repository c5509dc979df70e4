"""Engine registry: one adapter module per engine, imported only when asked for."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module

from ..errors import EngineUnavailableError, InputError
from .base import Availability, EngineSettings, RegistrationEngine

# name -> module; each module defines ``create_engine(settings: EngineSettings) -> RegistrationEngine``.
_ENGINE_MODULES: Mapping[str, str] = {
    "simpleitk": "simpleitk_engine",
    "elastix": "elastix_engine",
    "ants": "ants_engine",
    "brainsfit": "brainsfit_engine",
}

ENGINE_NAMES: tuple[str, ...] = tuple(_ENGINE_MODULES)

_settings: dict[str, EngineSettings] = {}


def configure_engine(name: str, settings: EngineSettings) -> None:
    """Set where an engine's program is (used by the Slicer glue to point at bundled binaries)."""
    _settings[_check_name(name)] = settings


def engine_settings(name: str) -> EngineSettings:
    return _settings.get(_check_name(name), EngineSettings())


def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in _ENGINE_MODULES:
        raise InputError(f"Unknown engine {name!r}; expected one of {', '.join(ENGINE_NAMES)}.")
    return key


def get_engine(name: str, settings: EngineSettings | None = None) -> RegistrationEngine:
    """The adapter for ``name`` (it may still be unavailable: ask its ``availability()``)."""
    key = _check_name(name)
    try:
        module = import_module(f"{__name__}.{_ENGINE_MODULES[key]}")
    except ImportError as exc:
        raise EngineUnavailableError(f"The {key} engine adapter cannot be loaded: {exc}.") from None
    return module.create_engine(settings if settings is not None else engine_settings(key))


def engine_availability() -> dict[str, Availability]:
    """Every known engine and whether it can run here."""
    result: dict[str, Availability] = {}
    for name in ENGINE_NAMES:
        try:
            result[name] = get_engine(name).availability()
        except EngineUnavailableError as exc:
            result[name] = Availability(False, str(exc))
    return result
