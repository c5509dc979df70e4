"""The canary: a known geometry error injected on the way into every engine, for tests only.

``python -m pytest --canary-shift-mm 0.3`` moves the moving image (and its mask) by that many
millimetres, along the diagonal of the physical axes, in every request an engine receives, the way
a wrong geometry step before the engines would. Every accuracy test that runs a real engine must then
fail: a suite that still passes cannot see an error of that size. Production code knows nothing of
this; child processes (the CLI tests) get it through ``canary_site/sitecustomize.py``, which Python
imports at start-up when the plugin puts that folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import contextvars
import functools
import os
from dataclasses import replace
from importlib import import_module
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

ENV_VAR = "ONECLICK_TEST_CANARY_SHIFT_MM"
SITE_DIR = Path(__file__).resolve().parent / "canary_site"
# Set while an engine's run is in progress, so a run that calls its parent's run shifts only once.
_inside_run: contextvars.ContextVar[bool] = contextvars.ContextVar("canary_inside_run", default=False)


def shift_vector(shift_mm: float) -> np.ndarray:
    """``shift_mm`` along the diagonal: every physical axis moves, the length is ``shift_mm``."""
    return np.full(3, shift_mm / np.sqrt(3.0))


def _shifted(image: sitk.Image | None, offset: np.ndarray) -> sitk.Image | None:
    if image is None:
        return None
    moved = sitk.Image(image)  # a copy: the caller's image keeps its header
    moved.SetOrigin(tuple(float(v) for v in np.add(image.GetOrigin(), offset)))
    return moved


def _wrap(run: Callable[..., Any], offset: np.ndarray) -> Callable[..., Any]:
    @functools.wraps(run)
    def shifted_run(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if _inside_run.get():
            return run(self, request, *args, **kwargs)
        token = _inside_run.set(True)
        try:
            request = replace(request, moving=_shifted(request.moving, offset),
                              moving_mask=_shifted(request.moving_mask, offset))
            return run(self, request, *args, **kwargs)
        finally:
            _inside_run.reset(token)

    shifted_run.__canary__ = True  # type: ignore[attr-defined]
    return shifted_run


def install(shift_mm: float) -> list[str]:
    """Wrap the ``run`` of every engine class; returns the wrapped classes' names."""
    from OneClickRegistrationLib.engines import _ENGINE_MODULES

    offset = shift_vector(shift_mm)
    wrapped: list[str] = []
    modules = []
    for name in (*_ENGINE_MODULES.values(), "external_program"):
        try:
            modules.append(import_module(f"OneClickRegistrationLib.engines.{name}"))
        except ImportError:  # an engine whose adapter cannot load never runs, so there is nothing to shift
            continue
    for module in modules:
        for value in vars(module).values():
            run = vars(value).get("run") if isinstance(value, type) else None
            if (callable(run) and value.__module__ == module.__name__ and not getattr(run, "__canary__", False)
                    and not getattr(value, "_is_protocol", False)):
                value.run = _wrap(run, offset)
                wrapped.append(value.__name__)
    return wrapped


def propagate_to_children(shift_mm: float) -> None:
    """Child Pythons started by the tests (the CLI) install the canary too."""
    os.environ[ENV_VAR] = repr(float(shift_mm))
    paths = [str(SITE_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)


def install_from_environment() -> None:
    value = os.environ.get(ENV_VAR)
    if value:
        install(float(value))
