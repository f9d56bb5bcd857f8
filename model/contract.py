"""What a checkpoint needs from a study: its contrast phases, slice thickness and slice count.

The gateway decides from this whether a study is ready and which series to
decode, so it travels in the checkpoint's metadata (``CheckpointMeta``) and is
written as plain JSON that ``tace.model_contract`` reads from the safetensors
header without torch (the listener never imports it).

``phases`` are the ResNet-50's three input channels in order: one phase repeated
to three channels, three phases as the three channels, or ``("any",)`` for a
model that reads any one eligible series (checkpoints older than the contract).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PHASES = ("arterial", "portal_venous", "delayed", "non_contrast")
"""Contrast phases a contract may name (the series classifier's vocabulary)."""
ANY_PHASE = "any"
LEGACY_PHASES = (ANY_PHASE,)
"""A single-phase model that takes any eligible series: what checkpoints without a contract mean."""
THREE_PHASES = ("arterial", "portal_venous", "delayed")
"""The paper's phases, in the channel order the demo model uses."""
CHANNELS = 3
"""Input channels of the ResNet-50: a single phase is repeated to fill them."""


def validate_phases(phases: Sequence[str], argument: str = "phases") -> tuple[str, ...]:
    """``phases`` as a tuple, or a ``ValueError`` naming ``argument`` and what is wrong."""
    if isinstance(phases, str):
        raise ValueError(f"{argument} must be a sequence of phase names, got the string {phases!r}")
    values = tuple(str(p) for p in phases)
    if values == LEGACY_PHASES:
        return values
    if ANY_PHASE in values:
        raise ValueError(f"{argument}: {ANY_PHASE!r} stands alone (any one series), got {values!r}")
    unknown = [p for p in values if p not in PHASES]
    if unknown:
        raise ValueError(f"{argument}: unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{argument}: a phase appears twice in {values!r}")
    if len(values) not in (1, CHANNELS):
        raise ValueError(
            f"{argument}: one phase (repeated to {CHANNELS} channels) or {CHANNELS} phases "
            f"(one per channel), got {len(values)}: {values!r}"
        )
    return values


@dataclass(frozen=True)
class InputContract:
    """The series a checkpoint reads; validated on construction, errors name the argument."""

    phases: tuple[str, ...] = LEGACY_PHASES
    slice_thickness_mm: tuple[float, float] = (0.0, math.inf)
    """Closed range of slice thicknesses seen in training; ``inf`` as the upper end: no limit."""
    min_slices: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", validate_phases(self.phases))
        thickness = tuple(float(t) for t in self.slice_thickness_mm)
        if len(thickness) != 2:
            raise ValueError(f"slice_thickness_mm must be (low, high), got {self.slice_thickness_mm!r}")
        low, high = thickness
        if math.isnan(low) or math.isnan(high) or low < 0 or math.isinf(low) or high < low:
            raise ValueError(
                "slice_thickness_mm must be 0 <= low <= high (high may be inf), "
                f"got {self.slice_thickness_mm!r}"
            )
        object.__setattr__(self, "slice_thickness_mm", (low, high))
        if isinstance(self.min_slices, bool) or not isinstance(self.min_slices, int) or self.min_slices < 1:
            raise ValueError(f"min_slices must be an integer of at least 1, got {self.min_slices!r}")

    @classmethod
    def legacy(cls) -> InputContract:
        """What a checkpoint without a contract accepts: any one series, any thickness, one slice."""
        return cls(LEGACY_PHASES, (0.0, math.inf), 1)

    @property
    def any_phase(self) -> bool:
        return self.phases == LEGACY_PHASES

    @property
    def multi_phase(self) -> bool:
        """True when each channel is its own phase (a (slices, 3, rows, columns) volume)."""
        return len(self.phases) > 1

    def describe(self) -> str:
        """One line for `tace model info` and logs."""
        phases = "any one series" if self.any_phase else " + ".join(self.phases)
        if self.multi_phase:
            phases += " (one per channel)"
        low, high = self.slice_thickness_mm
        thickness = (
            "any thickness"
            if (low, high) == (0.0, math.inf)
            else (f"thickness >= {low:g} mm" if math.isinf(high) else f"thickness {low:g}-{high:g} mm")
        )
        return f"{phases}; {thickness}; at least {self.min_slices} slices"

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON: an unbounded upper thickness is written as ``null``."""
        low, high = self.slice_thickness_mm
        return {
            "phases": list(self.phases),
            "slice_thickness_mm": [low, None if math.isinf(high) else high],
            "min_slices": self.min_slices,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputContract:
        known = {"phases", "slice_thickness_mm", "min_slices"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown input contract keys: {', '.join(unknown)}")
        thickness = data.get("slice_thickness_mm", [0.0, None])
        if not isinstance(thickness, list | tuple) or len(thickness) != 2:
            raise ValueError(f"slice_thickness_mm must be [low, high], got {thickness!r}")
        low, high = thickness
        return cls(
            phases=tuple(data.get("phases", LEGACY_PHASES)),
            slice_thickness_mm=(float(low), math.inf if high is None else float(high)),
            min_slices=data.get("min_slices", 1),
        )
