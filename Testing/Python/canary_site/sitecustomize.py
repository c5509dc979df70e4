"""Installs the test canary in child Pythons started by the tests (only on PYTHONPATH under the canary)."""

from __future__ import annotations

import os
import sys

if os.environ.get("ONECLICK_TEST_CANARY_SHIFT_MM"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        import canary

        canary.install_from_environment()
    except ImportError:  # a child that cannot import the core has no engine to shift
        pass
