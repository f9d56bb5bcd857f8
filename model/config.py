"""The one frozen configuration of a CLDCA network and of its input preprocessing.

Both travel inside every checkpoint, so a model is always run with the settings it
was trained with. Constructors validate eagerly and name the offending argument.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from model.contract import LEGACY_PHASES, validate_phases

MODEL_NAME = "CLDCA"
CLASS_NAMES = ("progressive_disease", "disease_control")
"""Index 1 is disease control (CR + PR + SD); its softmax is the reported probability."""


class Variant(enum.StrEnum):
    """The paper's ablations, as configurations of one network."""

    full = "full"
    no_cross_attention = "no_cross_attention"
    no_self_attention = "no_self_attention"
    no_lstm = "no_lstm"
    image_only = "image_only"
    clinical_only = "clinical_only"

    @property
    def uses_image(self) -> bool:
        return self is not Variant.clinical_only

    @property
    def uses_clinical(self) -> bool:
        return self is not Variant.image_only


def _positive(name: str, value: int | float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class CLDCAConfig:
    variant: Variant = Variant.full
    backbone_dim: int = 2048
    lstm_hidden: int = 128
    clinical_inputs: int = 43
    clinical_hidden: tuple[int, ...] = (128, 256, 128)
    feed_missing_mask: bool = False
    attention_dim: int = 128
    mlp_hidden: int = 128
    num_classes: int = 2
    dropout: float = 0.1
    freeze_backbone: bool = False
    standardize_clinical: bool = True
    """Centre and scale the clinical inputs by training statistics (see ``ClinicalEncoder``)."""
    phases: tuple[str, ...] = LEGACY_PHASES
    """The contrast phase of each input channel (``model.contract``): one repeated, or three."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", Variant(self.variant))
        object.__setattr__(self, "phases", validate_phases(self.phases))
        object.__setattr__(self, "clinical_hidden", tuple(self.clinical_hidden))
        for name in (
            "backbone_dim",
            "lstm_hidden",
            "clinical_inputs",
            "attention_dim",
            "mlp_hidden",
        ):
            _positive(name, getattr(self, name))
        if not self.clinical_hidden or any(h <= 0 for h in self.clinical_hidden):
            raise ValueError(f"clinical_hidden must be positive widths, got {self.clinical_hidden!r}")
        if self.num_classes != len(CLASS_NAMES):
            raise ValueError(f"num_classes must be {len(CLASS_NAMES)}, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def clinical_width(self) -> int:
        """Inputs of the clinical DNN: the values, and their missing mask when fed."""
        return self.clinical_inputs * (2 if self.feed_missing_mask else 1)

    @property
    def clinical_dim(self) -> int:
        return self.clinical_hidden[-1]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["variant"] = self.variant.value
        data["clinical_hidden"] = list(self.clinical_hidden)
        data["phases"] = list(self.phases)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLDCAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        # Checkpoints older than standardize_clinical were trained without it; older than
        # phases, on any one series (the dataclass default).
        return cls(**{"standardize_clinical": False, **data})


@dataclass(frozen=True)
class PreprocessConfig:
    """HU window, output size and slice budget applied to every volume."""

    window_center: float = 60.0
    window_width: float = 400.0
    image_size: int = 224
    max_slices: int | None = None

    def __post_init__(self) -> None:
        _positive("window_width", self.window_width)
        _positive("image_size", self.image_size)
        if self.max_slices is not None:
            _positive("max_slices", self.max_slices)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        return cls(**data)
