"""The module panel's .ui file against the module file that uses it (PySide6, offscreen).

The module file imports Slicer's Qt bindings, so it is read as text here: every ``self.ui.<name>`` it
uses must be a widget in the loaded .ui, every ``SlicerParameterName`` in the .ui must be a field of
the parameter node, and the combo boxes must offer exactly the module's choices.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.qt

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "OneClickRegistration" / "OneClickRegistration.py"
UI_FILE = ROOT / "Resources" / "UI" / "OneClickRegistration.ui"
ICON_FILE = ROOT / "Resources" / "Icons" / "OneClickRegistration.png"


@pytest.fixture(scope="module")
def qt_app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    widgets = pytest.importorskip("PySide6.QtWidgets")
    return widgets.QApplication.instance() or widgets.QApplication([])


@pytest.fixture(scope="module")
def loaded_ui(qt_app):
    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtUiTools import QUiLoader

    ui_file = QFile(str(UI_FILE))
    assert ui_file.open(QIODevice.OpenModeFlag.ReadOnly)
    loader = QUiLoader()
    # Slicer's own widgets (qMRMLNodeComboBox, ctkCollapsibleButton) are unknown here; QUiLoader
    # builds them as their declared base class, keeping their object names.
    widget = loader.load(ui_file)
    ui_file.close()
    assert widget is not None, loader.errorString()
    return widget


def module_source() -> str:
    return MODULE_FILE.read_text(encoding="utf-8")


def used_ui_names() -> set[str]:
    return set(re.findall(r"self\.ui\.([A-Za-z_]\w*)", module_source()))


def module_constant(name: str) -> tuple[str, ...]:
    tree = ast.parse(module_source())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{name} not found in {MODULE_FILE.name}")


def parameter_node_fields() -> dict[str, ast.AST]:
    tree = ast.parse(module_source())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "OneClickRegistrationParameterNode":
            return {item.target.id: item.annotation for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("OneClickRegistrationParameterNode not found")


def test_every_widget_the_module_uses_exists_in_the_ui(loaded_ui):
    from PySide6.QtWidgets import QWidget

    names = used_ui_names()
    assert {"registerButton", "progressBar", "resultLabel", "judgeButton"} <= names  # the parse works
    missing = sorted(n for n in names if loaded_ui.findChild(QWidget, n) is None)
    assert missing == [], f"used by {MODULE_FILE.name} but absent from {UI_FILE.name}: {missing}"


def test_parameter_names_in_the_ui_are_parameter_node_fields():
    tree = ET.parse(UI_FILE)
    bound = {
        widget.get("name"): widget.find("./property[@name='SlicerParameterName']/string").text
        for widget in tree.iter("widget")
        if widget.find("./property[@name='SlicerParameterName']") is not None
    }
    fields = parameter_node_fields()
    # The result texts are kept in the parameter node (they survive a scene reload) and shown by the module.
    kept_texts = {"resultText", "judgeResultText"}
    assert sorted(bound.values()) == sorted(set(fields) - kept_texts), (bound, sorted(fields))
    assert kept_texts <= set(fields)


PY39 = Path("/opt/py39/bin/python")


@pytest.mark.skipif(not PY39.exists(), reason="needs a Python 3.9 interpreter (Slicer 5.8's version)")
def test_parameter_node_annotations_evaluate_on_python_3_9():
    # The parameter node wrapper calls typing.get_type_hints on the class: an "X | Y" would raise there.
    tree = ast.parse(module_source())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "OneClickRegistrationParameterNode")
    cls.decorator_list = []
    constants = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "").isupper()]
    source = "\n".join([
        "import typing", "from typing import Annotated",
        "class _Node: pass",
        "vtkMRMLScalarVolumeNode = vtkMRMLLinearTransformNode = vtkMRMLTransformNode = _Node",
        "def Choice(values): return values",
        *(ast.unparse(c) for c in constants), ast.unparse(cls),
        "print(sorted(typing.get_type_hints(OneClickRegistrationParameterNode, include_extras=True)))",
    ])
    completed = subprocess.run([str(PY39), "-c", source], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "resultText" in completed.stdout and "outputTransform" in completed.stdout


def test_slicer_start_up_imports_nothing_heavy_and_the_module_starts_no_thread():
    # Slicer imports every module file at start-up: numpy, SimpleITK and the packages load on first use.
    tree = ast.parse(module_source())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top_level.add((node.module or "").split(".")[0])
    assert not top_level & {"numpy", "SimpleITK", "OneClickRegistrationLib", "OneClickRegistrationSlicer"}
    assert "threading" not in module_source() and "Thread(" not in module_source()


@pytest.mark.parametrize(("combo", "constant"), [
    ("fixedModalityComboBox", "MODALITY_CHOICES"),
    ("movingModalityComboBox", "MODALITY_CHOICES"),
    ("engineComboBox", "ENGINE_CHOICES"),
])
def test_combo_boxes_offer_the_module_choices(loaded_ui, combo, constant):
    from PySide6.QtWidgets import QComboBox

    box = loaded_ui.findChild(QComboBox, combo)
    assert box is not None
    assert tuple(box.itemText(i) for i in range(box.count())) == module_constant(constant)


def test_choices_match_the_core():
    from OneClickRegistrationLib.engines import ENGINE_NAMES
    from OneClickRegistrationLib.modality import Modality

    assert module_constant("ENGINE_CHOICES") == ("auto", *ENGINE_NAMES)
    assert set(module_constant("MODALITY_CHOICES")) == {"auto", *(m.value for m in Modality)}


def test_advanced_and_judge_sections_start_collapsed():
    tree = ET.parse(UI_FILE)
    collapsed = {
        w.get("name"): w.find("./property[@name='collapsed']/bool").text
        for w in tree.iter("widget") if w.get("class") == "ctkCollapsibleButton"
    }
    assert collapsed["advancedCollapsibleButton"] == "true"
    assert collapsed["judgeCollapsibleButton"] == "true"
    assert collapsed["inputsCollapsibleButton"] == "false"


def test_icon_is_128_pixels_square(qt_app):
    from PySide6.QtGui import QImage

    image = QImage(str(ICON_FILE))
    assert not image.isNull()
    assert (image.width(), image.height()) == (128, 128)


def _resource_path_function(module_file: Path):
    # The module's own resourcePath(), compiled alone (the module file needs Slicer to import).
    tree = ast.parse(module_source())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "resourcePath")
    namespace: dict = {"os": os, "__file__": str(module_file)}
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(MODULE_FILE), "exec"), namespace)
    return namespace["resourcePath"]


def test_resource_paths_resolve_in_the_source_tree_layout():
    found = _resource_path_function(MODULE_FILE)("UI/OneClickRegistration.ui")
    assert Path(found).resolve() == UI_FILE.resolve()


def test_resource_paths_resolve_in_the_installed_layout(tmp_path):
    # CMake installs Resources/ beside the module file, inside Slicer's shared qt-scripted-modules
    # folder; a Resources/ one level up (another extension's) must not win over it.
    modules = tmp_path / "lib" / "qt-scripted-modules"
    (modules / "Resources" / "UI").mkdir(parents=True)
    (tmp_path / "lib" / "Resources" / "UI").mkdir(parents=True)
    for folder in (modules / "Resources" / "UI", tmp_path / "lib" / "Resources" / "UI"):
        (folder / "OneClickRegistration.ui").write_text("<ui/>", encoding="utf-8")
    resource_path = _resource_path_function(modules / "OneClickRegistration.py")
    expected = modules / "Resources" / "UI" / "OneClickRegistration.ui"
    assert Path(resource_path("UI/OneClickRegistration.ui")) == expected
    with pytest.raises(FileNotFoundError, match="not found"):
        resource_path("UI/Missing.ui")
