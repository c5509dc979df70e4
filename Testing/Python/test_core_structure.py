"""The core's shape: no import cycle, one options object, one attempt type, one result schema."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import OneClickRegistrationLib
from OneClickRegistrationLib.errors import CancelledError, InputError, first_line, raise_if_cancelled
from OneClickRegistrationLib.options import ImageInfo, RegistrationOptions, from_shortcuts

PACKAGE = Path(OneClickRegistrationLib.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports at run time, anywhere in it (function-local
    imports included; ``if TYPE_CHECKING:`` blocks excluded: they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
               for node in ast.walk(block)}
    here = _module_name(path).split(".") if _module_name(path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        target = ".".join([*base, *(node.module.split(".") if node.module else [])])
        if node.module is None:  # from . import x: x is a module of the package or a name of __init__
            found.update(".".join([*base, alias.name]) for alias in node.names)
        else:
            found.add(target)
    return found


def test_the_core_has_no_import_cycle() -> None:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    assert "recovery" in graph["pipeline"] and "pipeline" not in graph["recovery"]
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for nxt in sorted(graph[name]):
            if state.get(nxt) == "open":
                cycle = [*trail[trail.index(nxt):], nxt] if nxt in trail else [name, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_options_are_validated_once_with_clear_messages() -> None:
    with pytest.raises(InputError, match="rigid"):
        RegistrationOptions(transform="deformable")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="timeout_s must be more than 0 seconds; received 0"):
        RegistrationOptions(timeout_s=0)
    with pytest.raises(InputError, match="time_budget_s must be a number of seconds"):
        RegistrationOptions(time_budget_s=float("nan"))
    with pytest.raises(InputError, match="threads must be a whole number"):
        RegistrationOptions(threads=0)
    with pytest.raises(AttributeError):
        RegistrationOptions().engine = "ants"  # type: ignore[misc]


def test_shortcuts_build_and_override_the_options() -> None:
    base = RegistrationOptions(engine="elastix", recover=False)
    options, fixed, moving = from_shortcuts(base, ImageInfo(name="a"), None,
                                            {"engine": "ants", "moving_modality": "CT", "fixed_name": "b"})
    assert (options.engine, options.recover) == ("ants", False)
    assert (fixed.name, moving.modality, moving.name) == ("b", "CT", None)
    with pytest.raises(TypeError, match="fixed_modalty"):
        from_shortcuts(None, None, None, {"fixed_modalty": "T1"})
    with pytest.raises(TypeError, match="engine"):
        from_shortcuts(None, None, None, {"engine": "ants"}, images_only=True)


def test_one_cancel_check_and_one_first_line() -> None:
    raise_if_cancelled(None)
    raise_if_cancelled(lambda: False)
    with pytest.raises(CancelledError, match="cancelled; nothing was changed"):
        raise_if_cancelled(lambda: True)
    assert first_line(ValueError("  first\nsecond")) == "first"
    assert first_line(KeyError()) == "KeyError"


def test_core_never_imports_slicer_vtk_qt_or_ctk() -> None:
    names = [m.name for m in pkgutil.walk_packages(OneClickRegistrationLib.__path__, "OneClickRegistrationLib.")]
    code = textwrap.dedent(f"""
        import sys, importlib
        for blocked in ("slicer", "vtk", "vtkmodules", "qt", "ctk", "PythonQt"):
            sys.modules[blocked] = None  # any import of them now fails
        for name in {names!r}:
            importlib.import_module(name)
        print(len({names!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(names) > 20


def test_public_api_is_reexported_lazily_from_its_home_module() -> None:
    code = textwrap.dedent("""
        import sys
        import OneClickRegistrationLib as lib
        before = {name for name in sys.modules if name.startswith("OneClickRegistrationLib.")}
        print(sorted(before))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"  # importing the package loads none of its modules (cheap, no engine)
    for name in OneClickRegistrationLib.__all__:
        exported = getattr(OneClickRegistrationLib, name)
        home = importlib.import_module(exported.__module__)
        assert getattr(home, name) is exported, name
    with pytest.raises(AttributeError, match="has no attribute 'does_not_exist'"):
        OneClickRegistrationLib.does_not_exist  # noqa: B018
