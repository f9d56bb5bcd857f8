"""From a HU volume to network input: window, scale to [0, 1], resize, three channels.

A single-phase volume (slices, rows, columns) is repeated to the ResNet-50's
three channels; a multi-phase volume (slices, phases, rows, columns) gives one
phase per channel, in the order the checkpoint declares (``model.contract``).
Every channel gets the same HU window. Everything is tensor arithmetic on the
volume's device, so on a GPU the raw slices are uploaded once and the window
and resize run there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import PreprocessConfig
from model.contract import CHANNELS, LEGACY_PHASES


def select_slices(count: int, max_slices: int | None) -> Tensor:
    """Evenly spaced slice indices when a series has more slices than the budget."""
    if max_slices is None or count <= max_slices:
        return torch.arange(count)
    return torch.linspace(0, count - 1, max_slices).round().long()


def check_volume_shape(shape: Sequence[int], phases: Sequence[str]) -> None:
    """A ``ValueError`` naming both shapes when a volume does not fit the declared phases.

    One phase: (slices, rows, columns), or (slices, 1, rows, columns). Three phases:
    (slices, 3, rows, columns) with the channels in the declared order.
    """
    shape = tuple(shape)
    names = ", ".join(phases)
    if len(phases) == 1:
        if len(shape) == 3 or (len(shape) == 4 and shape[1] == 1):
            return
        raise ValueError(
            f"volume_hu has shape {shape}; a single-phase model ({names}) takes (slices, rows, columns)"
        )
    if len(shape) == 4 and shape[1] == len(phases):
        return
    raise ValueError(
        f"volume_hu has shape {shape}; this model reads {len(phases)} phases as channels "
        f"({names}) and takes (slices, {len(phases)}, rows, columns)"
    )


def preprocess_volume(
    volume_hu: Tensor, config: PreprocessConfig, phases: Sequence[str] = LEGACY_PHASES
) -> Tensor:
    """(T, H, W) or (T, C, H, W) HU -> (T', 3, S, S) float in [0, 1], T' <= max_slices."""
    check_volume_shape(volume_hu.shape, phases)
    if volume_hu.shape[0] == 0:
        raise ValueError("volume_hu has no slices")
    if volume_hu.ndim == 3:
        volume_hu = volume_hu.unsqueeze(1)
    indices = select_slices(volume_hu.shape[0], config.max_slices).to(volume_hu.device)
    volume = volume_hu.index_select(0, indices).float()
    low = config.window_center - config.window_width / 2
    scaled = ((volume - low) / config.window_width).clamp_(0.0, 1.0)
    size = config.image_size
    if scaled.shape[-2:] != (size, size):
        scaled = F.interpolate(
            scaled, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0.0, 1.0)
    if scaled.shape[1] == 1:
        return scaled.expand(-1, CHANNELS, -1, -1).contiguous()
    return scaled.contiguous()
