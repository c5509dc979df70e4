"""The panel's plain-words summary of an outcome (rich text for a QLabel), translatable."""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

Translate = Callable[[str], str]

COLOURS = {"good": "#1a7f37", "questionable": "#b35900", "failed": "#c62828"}


def verdictWords(label: str, _: Translate) -> tuple[str, str]:
    words = {
        "good": (_("Good"), _("the volumes are aligned; the result can be used.")),
        "questionable": (_("Questionable"), _("check the alignment visually before using it.")),
        "failed": (_("Failed"), _("the volumes are not aligned; do not use this result.")),
    }
    return words.get(label, (label.title(), ""))


def _scoreText(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{number:.4f}" if math.isfinite(number) else "n/a"


def resultSummaryHtml(outcome: Any, *, judged: bool = False, translate: Translate = lambda text: text) -> str:
    """Verdict, reasons, scores, modalities, preset, engine and time; every text from the outcome is escaped."""
    _, e = translate, html.escape
    word, meaning = verdictWords(outcome.verdict, _)
    lines = [f'<p><b style="color:{COLOURS.get(outcome.verdict, "#000000")}">{e(word)}</b>: {e(meaning)}</p>']
    if outcome.reasons:
        lines.append("<ul>" + "".join(f"<li>{e(r)}</li>" for r in outcome.reasons) + "</ul>")
    scoreLabel = _("Score of the transform") if judged else _("Score")
    lines.append(
        f"<p>{e(scoreLabel)} ({e(outcome.metric.upper())}, {e(_('higher is better'))}): "
        f"{_scoreText(outcome.scoreBefore)} &rarr; <b>{_scoreText(outcome.scoreAfter)}</b></p>")
    details = []
    if outcome.fixedSource:
        details.append(e(_("Modalities: fixed {fixed} ({fixedSource}), moving {moving} ({movingSource})").format(
            fixed=outcome.fixedModality, fixedSource=outcome.fixedSource,
            moving=outcome.movingModality, movingSource=outcome.movingSource)))
    elif outcome.fixedModality:
        details.append(e(_("Modalities: fixed {fixed}, moving {moving}").format(
            fixed=outcome.fixedModality, moving=outcome.movingModality)))
    details.append(e(_("Preset: {preset}").format(preset=outcome.presetDescription or outcome.preset)))
    if not judged:
        elapsed = outcome.elapsedS if outcome.elapsedS is not None else float("nan")
        details.append(e(_("Engine: {engine}, time {seconds:.1f} s").format(engine=outcome.engine, seconds=elapsed)))
    lines.append("<p>" + "<br>".join(details) + "</p>")
    if len(outcome.attempts) > 1:
        rows = "".join(
            f"<li>{e(str(a.get('engine', '')))} ({e(str(a.get('start', '')))}): {_scoreText(a.get('score'))}"
            + (f", {e(str(a['verdict']))}" if a.get("verdict") else "")
            + (f", {e(_('error'))}: {e(str(a['error']))}" if a.get("error") else "") + "</li>"
            for a in outcome.attempts)
        lines.append("<p>" + e(_("{count} attempts, the best one kept:").format(count=len(outcome.attempts)))
                     + f"</p><ul>{rows}</ul>")
    return "".join(lines)
