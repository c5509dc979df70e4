"""Shared fixtures: small synthetic heads with known ground truth (cached per session)."""

from __future__ import annotations

import pytest

from OneClickRegistrationLib import synthetic


@pytest.fixture(scope="session")
def t1_ct_pair() -> synthetic.SyntheticPair:
    """A coarse T1 (fixed) / CT (moving) pair moved by 10 deg-ish and ~15 mm."""
    return synthetic.make_pair("T1", "CT", rotation_deg=(8.0, -6.0, 10.0), translation_mm=(6.0, -8.0, 5.0),
                               moving_fov_shift_mm=(5.0, -3.0, 4.0), coarsen=2.5, seed=3)


@pytest.fixture(scope="session")
def t1_t2_pair() -> synthetic.SyntheticPair:
    return synthetic.make_pair("T1", "T2", rotation_deg=(-7.0, 5.0, -9.0), translation_mm=(-5.0, 7.0, -4.0),
                               coarsen=2.5, seed=5)
