"""Regenerate the module icon and the screenshots (offscreen; no Slicer needed).

    QT_QPA_PLATFORM=offscreen python Testing/Screenshots/make_screenshots.py [--only icon|panel|overlay]

* ``Resources/Icons/OneClickRegistration.png``: the 128x128 module icon, drawn with QPainter.
* ``Screenshots/panel.png``: the module panel rendered from ``Resources/UI/OneClickRegistration.ui``
  with PySide6. Slicer's own widgets (node selectors, collapsible sections) are replaced by the
  nearest plain Qt widgets, and the result area is filled in from a real registration of a synthetic
  T2/T1 pair, formatted by the same function the module uses.
* ``Screenshots/registered-pair.png`` and ``Screenshots/unregistered-pair.png``: the overlay picture
  (checkerboard, then fixed in magenta over moving in green) of that pair after and before registration.

Run it again whenever the .ui, the result summary or the overlay changes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import SimpleITK as sitk
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QImage, QLinearGradient, QPainter, QPainterPath, QPen
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import QApplication, QComboBox, QGroupBox, QLabel, QWidget

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "OneClickRegistration"))

from OneClickRegistrationLib.outputs import write_outputs  # noqa: E402
from OneClickRegistrationSlicer.outcome import readRegistrationOutputs  # noqa: E402
from OneClickRegistrationSlicer.summary import resultSummaryHtml  # noqa: E402

UI_FILE = ROOT / "Resources" / "UI" / "OneClickRegistration.ui"
ICON_FILE = ROOT / "Resources" / "Icons" / "OneClickRegistration.png"
SHOTS = ROOT / "Screenshots"

# Slicer/CTK widget -> plain Qt stand-in (class, property renames) for rendering outside Slicer.
STAND_INS = {
    "qMRMLWidget": ("QWidget", {}),
    "qMRMLNodeComboBox": ("QComboBox", {}),
    "qMRMLTableView": ("QTableWidget", {}),
    "ctkCollapsibleButton": ("QGroupBox", {"text": "title"}),
}


# ---------------------------------------------------------------------------------------------------
# Icon
# ---------------------------------------------------------------------------------------------------

def _head(painter: QPainter, center: QPointF, angle: float, colour: QColor) -> None:
    painter.save()
    painter.translate(center)
    painter.rotate(angle)
    painter.setPen(QPen(colour, 6))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.drawEllipse(QRectF(-30, -36, 60, 72))
    painter.setPen(QPen(colour, 3))
    painter.drawLine(QPointF(0, -36), QPointF(0, 36))  # midline
    painter.restore()


def make_icon(path: Path = ICON_FILE) -> Path:
    image = QImage(128, 128, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    gradient = QLinearGradient(0, 0, 128, 128)
    gradient.setColorAt(0.0, QColor("#1f3b64"))
    gradient.setColorAt(1.0, QColor("#0d1b2e"))
    painter.setBrush(QBrush(gradient))
    painter.setPen(Qt.PenStyle.NoPen)
    painter.drawRoundedRect(QRectF(2, 2, 124, 124), 22, 22)
    _head(painter, QPointF(58, 60), -18.0, QColor(230, 70, 200, 200))  # moving, before
    _head(painter, QPointF(64, 62), 0.0, QColor(80, 230, 120, 235))  # aligned with the fixed one
    # The "one click": a check mark in a disc.
    painter.setBrush(QColor("#ffffff"))
    painter.drawEllipse(QRectF(82, 82, 38, 38))
    check = QPainterPath(QPointF(91, 101))
    check.lineTo(QPointF(99, 109))
    check.lineTo(QPointF(112, 92))
    painter.setPen(QPen(QColor("#1a7f37"), 6, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                        Qt.PenJoinStyle.RoundJoin))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.drawPath(check)
    painter.end()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(path)):
        raise OSError(f"cannot write {path}")
    return path


# ---------------------------------------------------------------------------------------------------
# Example registration (synthetic T2 moved onto a T1)
# ---------------------------------------------------------------------------------------------------

def example_registration():
    from OneClickRegistrationLib import synthetic
    from OneClickRegistrationLib.pipeline import register

    pair = synthetic.make_pair("T1", "T2", rotation_deg=(4.0, -3.0, 9.0), translation_mm=(7.0, -5.0, 4.0),
                               coarsen=1.5, seed=11)
    result = register(pair.fixed, pair.moving, fixed_name="T1_MPRAGE", moving_name="T2_TSE_axial")
    return pair, result


# ---------------------------------------------------------------------------------------------------
# Panel
# ---------------------------------------------------------------------------------------------------

def _plain_qt_ui(path: Path) -> QByteArray:
    """The .ui with Slicer's widget classes swapped for Qt stand-ins (names kept)."""
    tree = ET.parse(path)
    for widget in tree.iter("widget"):
        stand_in = STAND_INS.get(widget.get("class", ""))
        if stand_in is None:
            continue
        widget.set("class", stand_in[0])
        for prop in list(widget.findall("property")):
            name = prop.get("name")
            if name in stand_in[1]:
                prop.set("name", stand_in[1][name])
            elif widget.get("class") == "QComboBox" and name not in ("toolTip",):
                widget.remove(prop)  # node-selector properties mean nothing to a QComboBox
            elif widget.get("class") == "QGroupBox" and name == "collapsed":
                widget.remove(prop)
    for section in ("customwidgets", "connections"):  # Slicer-only signals (mrmlSceneChanged)
        found = tree.getroot().find(section)
        if found is not None:
            tree.getroot().remove(found)
    return QByteArray(ET.tostring(tree.getroot(), encoding="utf-8"))


def _fill_results_table(table, outcome) -> None:
    from PySide6.QtWidgets import QTableWidgetItem

    from OneClickRegistrationSlicer.results_table import RESULTS_TABLE_COLUMNS, resultRow

    row = resultRow(outcome, fixedName="T1_MPRAGE", movingName="T2_TSE_axial",
                    transformName="T2_TSE_axial to T1_MPRAGE")
    table.setColumnCount(len(RESULTS_TABLE_COLUMNS))
    table.setRowCount(1)
    table.setHorizontalHeaderLabels([name for name, _ in RESULTS_TABLE_COLUMNS])
    for column, (name, kind) in enumerate(RESULTS_TABLE_COLUMNS):
        value = row[name]
        table.setItem(0, column, QTableWidgetItem(f"{value:.3f}" if kind == "d" else str(value)))


def render_panel(pair, result, path: Path) -> Path:
    from OneClickRegistrationLib.engines import engine_availability

    data = _plain_qt_ui(UI_FILE)
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.ReadOnly)
    panel = QUiLoader().load(buffer)

    def child(kind, name):
        found = panel.findChild(kind, name)
        if found is None:
            raise LookupError(f"{name} is not in {UI_FILE.name}")
        return found

    child(QComboBox, "fixedVolumeSelector").addItem("T1_MPRAGE")
    child(QComboBox, "movingVolumeSelector").addItem("T2_TSE_axial")
    child(QComboBox, "judgeTransformSelector").addItem("None")
    child(QComboBox, "outputTransformSelector").addItem("Create a new transform")
    fixed, moving = result.fixed_modality, result.moving_modality
    child(QLabel, "fixedModalityDetectedLabel").setText(
        f"detected: {fixed.modality} ({fixed.source}, confidence {fixed.confidence:.2f})")
    child(QLabel, "movingModalityDetectedLabel").setText(
        f"detected: {moving.modality} ({moving.source}, confidence {moving.confidence:.2f})")
    available = engine_availability()
    child(QLabel, "engineStatusLabel").setText("\n".join(
        f"{'✓' if a.available else '✗'} {name}: {a.detail}" for name, a in available.items()))
    with tempfile.TemporaryDirectory() as folder:  # the panel shows what it reads back from the child's files
        write_outputs(result, pair.fixed, folder)
        outcome = readRegistrationOutputs(Path(folder))
    child(QLabel, "resultLabel").setText(resultSummaryHtml(outcome))
    _fill_results_table(child(QWidget, "resultsTableView"), outcome)
    child(QLabel, "statusLabel").setText("Done.")
    child(QWidget, "progressBar").hide()
    child(QWidget, "registerButton").setEnabled(True)
    child(QGroupBox, "judgeCollapsibleButton").hide()  # collapsed in Slicer; QGroupBox cannot collapse
    panel.setFont(QFont("DejaVu Sans", 9))
    panel.resize(460, 10)
    panel.resize(460, panel.sizeHint().height())
    picture = panel.grab()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not picture.save(str(path)):
        raise OSError(f"cannot write {path}")
    return path


# ---------------------------------------------------------------------------------------------------
# Overlay of the registered pair
# ---------------------------------------------------------------------------------------------------

def _save_rgb(rgb: np.ndarray, path: Path) -> Path:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, _ = rgb.shape
    image = QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(path)):
        raise OSError(f"cannot write {path}")
    return path


def render_overlays(pair, result, folder: Path) -> list[Path]:
    from OneClickRegistrationLib.overlay import caption_for, qc_mosaic, write_overlay

    before = sitk.Resample(pair.moving, pair.fixed, sitk.Transform(), sitk.sitkLinear, float("nan"),
                           sitk.sitkFloat32)
    fill = result.preset.moving_fill_value
    sheet = write_overlay(pair.fixed, result.registered, folder / "qc-sheet.png", fill_value=fill,
                          transform=result.transform, caption=caption_for(result))
    return [_save_rgb(qc_mosaic(pair.fixed, result.registered, fill_value=fill).rgb, folder / "registered-pair.png"),
            _save_rgb(qc_mosaic(pair.fixed, before).rgb, folder / "unregistered-pair.png"), sheet]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("icon", "panel", "overlay"))
    args = parser.parse_args(argv)
    app = QApplication.instance() or QApplication([])
    written: list[Path] = []
    if args.only in (None, "icon"):
        written.append(make_icon())
    if args.only in (None, "panel", "overlay"):
        pair, result = example_registration()
        if args.only in (None, "panel"):
            written.append(render_panel(pair, result, SHOTS / "panel.png"))
        if args.only in (None, "overlay"):
            written += render_overlays(pair, result, SHOTS)
    for path in written:
        print(path.relative_to(ROOT))
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
