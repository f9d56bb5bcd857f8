"""How numbers and lists read where people see them: the SR text, the pages, `tace jobs show`."""

from __future__ import annotations

from collections.abc import Sequence

PROBABILITY_FLOOR = 0.001


def probability_text(probability: float) -> str:
    """Three decimals, never a certainty the model cannot have: ``>0.999`` instead of ``1.000``."""
    if probability > 1 - PROBABILITY_FLOOR:
        return ">0.999"
    if probability < PROBABILITY_FLOOR:
        return "<0.001"
    return f"{probability:.3f}"


def missing_text(labels: Sequence[str], total: int) -> str:
    """``3 of 43 clinical values missing: serum albumin, ...``, or that none is missing."""
    if not labels:
        return f"all {total} clinical values present"
    return f"{len(labels)} of {total} clinical values missing: {', '.join(labels)}"
