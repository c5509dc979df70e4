"""Shared fixtures (small synthetic heads with known ground truth), the canary switch and the CI profile."""

from __future__ import annotations

import os

import canary
import pytest
from hypothesis import HealthCheck, settings

from OneClickRegistrationLib import synthetic

# CI draws the same hypothesis examples every run, so a red run can be reproduced; locally they vary.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--canary-shift-mm", type=float, default=None, metavar="MM",
        help="Move the moving image by MM millimetres in every request an engine receives (a planted "
             "geometry error): every accuracy test that runs a real engine must then fail.")


def pytest_configure(config: pytest.Config) -> None:
    shift = config.getoption("--canary-shift-mm")
    if shift:
        wrapped = canary.install(shift)
        canary.propagate_to_children(shift)
        config.stash[_CANARY_KEY] = f"canary: moving images shifted by {shift:g} mm in {', '.join(wrapped)}.run"


def pytest_report_header(config: pytest.Config) -> str | None:
    return config.stash.get(_CANARY_KEY, None)


_CANARY_KEY = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def t1_ct_pair() -> synthetic.SyntheticPair:
    """A coarse T1 (fixed) / CT (moving) pair moved by 10 deg-ish and ~15 mm."""
    return synthetic.make_pair("T1", "CT", rotation_deg=(8.0, -6.0, 10.0), translation_mm=(6.0, -8.0, 5.0),
                               moving_fov_shift_mm=(5.0, -3.0, 4.0), coarsen=2.5, seed=3)


@pytest.fixture(scope="session")
def t1_t2_pair() -> synthetic.SyntheticPair:
    return synthetic.make_pair("T1", "T2", rotation_deg=(-7.0, 5.0, -9.0), translation_mm=(-5.0, 7.0, -4.0),
                               coarsen=2.5, seed=5)


# The engines' own tests (elastix, SimpleITK, BRAINSFit) register the same two pairs: a T1 fixed image and
# a T2 or CT moving image moved by about 10 degrees and 11 mm.
ENGINE_ROTATION_DEG = (8.0, -6.0, 10.0)
ENGINE_TRANSLATION_MM = (6.0, -8.0, 5.0)


def engine_test_pair(fixed: str, moving: str) -> synthetic.SyntheticPair:
    return synthetic.make_pair(fixed, moving, rotation_deg=ENGINE_ROTATION_DEG,
                               translation_mm=ENGINE_TRANSLATION_MM, coarsen=2.5)


@pytest.fixture(scope="session")
def t2_pair() -> synthetic.SyntheticPair:
    return engine_test_pair("T1", "T2")


@pytest.fixture(scope="session")
def ct_pair() -> synthetic.SyntheticPair:
    return engine_test_pair("T1", "CT")
