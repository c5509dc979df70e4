"""The scene's results table: one row per registration, saved with the scene."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import vtk

RESULTS_TABLE_ATTRIBUTE = "OneClickRegistration.ResultsTable"
# The result summary's keys (OneClickRegistrationLib.pipeline.SUMMARY_FIELDS, as in report.json and the
# batch CSV) -> column title and kind ("s" string, "d" double; missing values are NaN), mapped once here.
SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("fixed", "Fixed", "s"),
    ("moving", "Moving", "s"),
    ("fixed_modality", "Fixed modality", "s"),
    ("moving_modality", "Moving modality", "s"),
    ("preset", "Preset", "s"),
    ("engine", "Engine", "s"),
    ("transform_kind", "Transform kind", "s"),
    ("metric", "Metric", "s"),
    ("score_before", "Score before", "d"),
    ("score_after", "Score after", "d"),
    ("verdict", "Verdict", "s"),
    ("reasons", "Reasons", "s"),
    ("elapsed_s", "Time (s)", "d"),
)
RESULTS_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    *((title, kind) for _, title, kind in SUMMARY_COLUMNS),
    ("Transform", "s"),  # the scene's transform node holding the result
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
    """One row (column title -> value) from an outcome's result summary; volumes named as in the scene."""
    summary = {**outcome.summary, "fixed": fixedName, "moving": movingName}
    row = {title: summary.get(key) for key, title, _ in SUMMARY_COLUMNS}
    row["Transform"] = transformName
    return row


def appendResultRow(table: Any, row: Mapping[str, Any]) -> int:
    """Append ``row`` to the results table; returns the new row's index."""
    index = table.AddEmptyRow()
    vtkTable = table.GetTable()
    for name, kind in RESULTS_TABLE_COLUMNS:
        column = vtkTable.GetColumnByName(name)
        if column is None:  # a table saved by an older version: add the missing column
            column = _newColumn(name, kind, table.GetNumberOfRows())
            table.AddColumn(column)
        value = row.get(name)
        column.SetValue(index, ("" if value is None else str(value)) if kind == "s" else _float(value))
    vtkTable.Modified()
    table.Modified()
    return index
