"""Modality names shared by the whole package (detection rules are added below by the detection work)."""

from __future__ import annotations

from enum import StrEnum


class Modality(StrEnum):
    T1 = "T1"
    T2 = "T2"
    FLAIR = "FLAIR"
    CT = "CT"
    MR = "MR"  # an MR image whose contrast could not be told apart


MR_MODALITIES = (Modality.T1, Modality.T2, Modality.FLAIR, Modality.MR)


def parse_modality(value: str | Modality) -> Modality:
    """``"t1"``/``"T1"``/``Modality.T1`` -> ``Modality.T1``; a clear error for anything else."""
    from .errors import InputError

    if isinstance(value, Modality):
        return value
    text = str(value).strip().upper()
    try:
        return Modality(text)
    except ValueError:
        choices = ", ".join(m.value for m in Modality)
        raise InputError(f"Unknown modality {value!r}; expected one of {choices}.") from None
