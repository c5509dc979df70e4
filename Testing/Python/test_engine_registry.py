"""The engine registry (engines/__init__.py): names, adapters, availability and settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from OneClickRegistrationLib.engines import (
    ENGINE_NAMES,
    configure_engine,
    engine_availability,
    engine_settings,
    get_engine,
)
from OneClickRegistrationLib.engines.base import EngineSettings
from OneClickRegistrationLib.errors import InputError


def test_every_engine_answers_and_the_embedded_one_always_runs() -> None:
    availability = engine_availability()
    assert tuple(availability) == ENGINE_NAMES
    assert availability["simpleitk"].available  # it needs nothing beyond SimpleITK itself
    for name in ENGINE_NAMES:
        assert get_engine(name).name == name
        if not availability[name].available:
            assert availability[name].detail, name  # an engine that cannot run says why


def test_names_are_forgiving_about_case_and_unknown_names_are_refused() -> None:
    assert get_engine(" SimpleITK ").name == "simpleitk"
    with pytest.raises(InputError, match=r"Unknown engine 'flirt'; expected one of simpleitk, elastix"):
        get_engine("flirt")


def test_a_configured_program_that_does_not_exist_makes_the_engine_unavailable(tmp_path: Path) -> None:
    saved = engine_settings("elastix")
    missing = tmp_path / "no-such-elastix"
    configure_engine("elastix", EngineSettings(executable=str(missing)))
    try:
        availability = get_engine("elastix").availability()
        assert not availability.available
        assert "no-such-elastix" in availability.detail
    finally:
        configure_engine("elastix", saved)
    assert engine_settings("elastix") == saved
