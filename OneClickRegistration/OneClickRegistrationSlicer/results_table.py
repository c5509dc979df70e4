"""The scene's results table: one row per registration, saved with the scene."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import vtk

RESULTS_TABLE_ATTRIBUTE = "OneClickRegistration.ResultsTable"
RESULTS_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    # (column name, kind): "s" string, "d" double (missing values are NaN)
    ("Fixed", "s"),
    ("Moving", "s"),
    ("Fixed modality", "s"),
    ("Moving modality", "s"),
    ("Preset", "s"),
    ("Engine", "s"),
    ("Metric", "s"),
    ("Score before", "d"),
    ("Score after", "d"),
    ("Verdict", "s"),
    ("Reasons", "s"),
    ("Time (s)", "d"),
    ("Transform", "s"),
)


def _nodesByClass(scene: Any, className: str) -> list[Any]:
    collection = scene.GetNodesByClass(className)
    nodes = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    return [node for node in nodes if node is not None]


def _newColumn(name: str, kind: str, rows: int = 0) -> Any:
    column = vtk.vtkStringArray() if kind == "s" else vtk.vtkDoubleArray()
    column.SetName(name)
    column.SetNumberOfValues(rows)
    return column


def resultsTableNode(scene: Any, *, create: bool = True) -> Any:
    """The scene's results table, created (empty, with its columns) on first use."""
    for table in _nodesByClass(scene, "vtkMRMLTableNode"):
        if table.GetAttribute(RESULTS_TABLE_ATTRIBUTE) == "1":
            return table
    if not create:
        return None
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName("OneClickRegistration results"))
    table.SetAttribute(RESULTS_TABLE_ATTRIBUTE, "1")
    for name, kind in RESULTS_TABLE_COLUMNS:
        table.AddColumn(_newColumn(name, kind))
    return table


def _float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return number if math.isfinite(number) else float("nan")


def resultRow(outcome: Any, *, fixedName: str, movingName: str, transformName: str = "") -> dict[str, Any]:
    """One row (column name -> value) for a :class:`~.outcome.RegistrationOutcome`."""
    return {
        "Fixed": fixedName,
        "Moving": movingName,
        "Fixed modality": outcome.fixedModality,
        "Moving modality": outcome.movingModality,
        "Preset": outcome.preset,
        "Engine": outcome.engine,
        "Metric": outcome.metric,
        "Score before": _float(outcome.scoreBefore),
        "Score after": _float(outcome.scoreAfter),
        "Verdict": outcome.verdict,
        "Reasons": "; ".join(outcome.reasons),
        "Time (s)": _float(outcome.elapsedS),
        "Transform": transformName,
    }


def appendResultRow(table: Any, row: Mapping[str, Any]) -> int:
    """Append ``row`` to the results table; returns the new row's index."""
    index = table.AddEmptyRow()
    vtkTable = table.GetTable()
    for name, kind in RESULTS_TABLE_COLUMNS:
        column = vtkTable.GetColumnByName(name)
        if column is None:  # a table saved by an older version: add the missing column
            column = _newColumn(name, kind, table.GetNumberOfRows())
            table.AddColumn(column)
        value = row.get(name, "" if kind == "s" else float("nan"))
        column.SetValue(index, str(value) if kind == "s" else _float(value))
    vtkTable.Modified()
    table.Modified()
    return index
