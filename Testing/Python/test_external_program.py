"""The shared pieces of the external-program skeleton that no single engine run pins down."""

from __future__ import annotations

import pytest
import SimpleITK as sitk

from OneClickRegistrationLib.engines.base import RunOptions
from OneClickRegistrationLib.engines.external_program import ThrottledProgress, binary_mask
from OneClickRegistrationLib.errors import InputError


class _Parser:
    """Reads lines "<phase> <fraction>"; anything else is not progress."""

    def __init__(self) -> None:
        self.phase: object = None

    def feed(self, line: str) -> tuple[float, str] | None:
        parts = line.split()
        if len(parts) != 2:
            return None
        self.phase = parts[0]
        return float(parts[1]), f"phase {parts[0]} at {parts[1]}"


def test_progress_is_throttled_monotonic_mapped_and_reports_every_new_phase():
    reports: list[tuple[float, str]] = []
    progress = ThrottledProgress(RunOptions(progress=lambda f, m: reports.append((f, m))), _Parser(),
                                 start=0.1, end=0.9, step=0.01)
    lines = ["banner", "a 0.0", "a 0.001", "a 0.002", "a 0.5", "a 0.4", "b 0.4", "b 2.0"]
    for line in lines:
        progress(line)
    assert progress.lines == lines  # the whole log is kept, progress or not
    fractions = [f for f, _ in reports]
    assert fractions == pytest.approx([0.1, 0.5, 0.5, 0.9])
    # The small steps and the step back are not reported; the new phase is, at no lower fraction.
    assert [m for _, m in reports] == ["phase a at 0.0", "phase a at 0.5", "phase b at 0.4", "phase b at 2.0"]


def test_binary_mask_is_zero_one_and_refuses_an_empty_mask():
    mask = sitk.Image([4, 4, 4], sitk.sitkInt16)
    with pytest.raises(InputError, match="moving mask is empty"):
        binary_mask(mask, "moving mask")
    mask[1, 2, 3] = -7
    binary = binary_mask(mask, "moving mask")
    assert binary.GetPixelID() == sitk.sitkUInt8
    assert binary[1, 2, 3] == 1 and sum(sitk.GetArrayViewFromImage(binary).ravel()) == 1
