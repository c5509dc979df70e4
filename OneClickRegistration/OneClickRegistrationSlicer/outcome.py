"""What a finished child process left: its outputs read back from files (or its JSON answer)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from OneClickRegistrationLib.errors import EngineError

# The command line's output files (OneClickRegistrationLib.outputs).
TRANSFORM_FILE = "transform.tfm"
REGISTERED_FILE = "registered.nrrd"
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class RegistrationOutcome:
    """A registration (or a judged transform): the verdict and scores, and the ITK fixed->moving transform."""

    verdict: str
    reasons: tuple[str, ...]
    engine: str
    preset: str
    presetDescription: str
    metric: str
    scoreBefore: float | None
    scoreAfter: float | None
    fixedModality: str
    movingModality: str
    fixedSource: str
    movingSource: str
    elapsedS: float | None
    transform: Any = None  # sitk.Transform; None for a judged transform (the caller has it)
    registeredFile: Path | None = None
    attempts: tuple[Mapping[str, Any], ...] = ()
    report: Mapping[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        """The result's flat summary (``RegistrationResult.summary()``: the head of report.json)."""
        from OneClickRegistrationLib.pipeline import SUMMARY_FIELDS

        if all(key in self.report for key in ("verdict", "score_after")):
            return {key: self.report.get(key) for key in SUMMARY_FIELDS}
        return {"preset": self.preset, "engine": self.engine, "metric": self.metric, "score_before": self.scoreBefore,
                "score_after": self.scoreAfter, "verdict": self.verdict, "reasons": "; ".join(self.reasons)}

    def registeredImage(self) -> sitk.Image:
        if self.registeredFile is None:
            raise EngineError("The registration left no resampled volume to load.")
        return sitk.ReadImage(str(self.registeredFile))


def _evidence(report: Mapping[str, Any], role: str) -> Mapping[str, Any]:
    return (report.get("modality_evidence") or {}).get(role) or {}


def readRegistrationOutputs(outdir: Path) -> RegistrationOutcome:
    """The outcome of ``oneclick-register FIXED MOVING -o OUTDIR`` from its report and transform files."""
    try:
        report = json.loads((outdir / REPORT_FILE).read_text(encoding="utf-8"))
        transform = sitk.ReadTransform(str(outdir / TRANSFORM_FILE))
    except (OSError, ValueError, RuntimeError) as error:
        raise EngineError(f"The registration finished but its outputs in {str(outdir)!r} cannot be read: "
                          f"{error}") from None
    return RegistrationOutcome(
        verdict=str(report["verdict"]),
        reasons=tuple(report.get("verdict_reasons") or ()),
        engine=str(report.get("engine", "")),
        preset=str(report.get("preset", "")),
        presetDescription=str(report.get("preset_description", "")),
        metric=str(report.get("metric", "")),
        scoreBefore=report.get("score_before"),
        scoreAfter=report.get("score_after"),
        fixedModality=str(report.get("fixed_modality", "")),
        movingModality=str(report.get("moving_modality", "")),
        fixedSource=str(_evidence(report, "fixed").get("source", "")),
        movingSource=str(_evidence(report, "moving").get("source", "")),
        elapsedS=report.get("elapsed_s"),
        transform=transform,
        registeredFile=outdir / REGISTERED_FILE if (outdir / REGISTERED_FILE).is_file() else None,
        attempts=tuple(report.get("attempts") or ()),
        report=report,
    )


def judgementFromScoreOutput(text: str) -> RegistrationOutcome:
    """The outcome of ``oneclick-register score ... --verdict`` from the JSON it prints."""
    try:
        answer = json.loads(text)
    except ValueError:
        raise EngineError(f"The judge printed something that is not JSON: {text.strip()[:200]!r}") from None
    summary = answer.get("judgement") or {}  # RegistrationResult.summary() of the judged transform
    return RegistrationOutcome(
        verdict=str(answer.get("verdict", summary.get("verdict", ""))),
        reasons=tuple(answer.get("verdict_reasons") or ()),
        engine="none",
        preset=str(summary.get("preset", "")),
        presetDescription=str(summary.get("preset", "")),
        metric=str(summary.get("metric", "")),
        scoreBefore=summary.get("score_before"),
        scoreAfter=summary.get("score_after"),
        fixedModality=str(summary.get("fixed_modality", "")),
        movingModality=str(summary.get("moving_modality", "")),
        fixedSource="",
        movingSource="",
        elapsedS=None,
        report=summary,
    )
