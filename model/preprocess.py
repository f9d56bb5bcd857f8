"""From a HU volume to network input: window, scale to [0, 1], resize, three channels.

Everything is tensor arithmetic on the volume's device, so on a GPU the raw
slices are uploaded once and the window and resize run there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import PreprocessConfig


def select_slices(count: int, max_slices: int | None) -> Tensor:
    """Evenly spaced slice indices when a series has more slices than the budget."""
    if max_slices is None or count <= max_slices:
        return torch.arange(count)
    return torch.linspace(0, count - 1, max_slices).round().long()


def preprocess_volume(volume_hu: Tensor, config: PreprocessConfig) -> Tensor:
    """(T, H, W) HU -> (T', 3, S, S) float in [0, 1], T' <= max_slices."""
    if volume_hu.ndim != 3:
        raise ValueError(f"volume_hu must be (slices, rows, columns), got shape {tuple(volume_hu.shape)}")
    if volume_hu.shape[0] == 0:
        raise ValueError("volume_hu has no slices")
    indices = select_slices(volume_hu.shape[0], config.max_slices).to(volume_hu.device)
    volume = volume_hu.index_select(0, indices).float()
    low = config.window_center - config.window_width / 2
    scaled = ((volume - low) / config.window_width).clamp_(0.0, 1.0)
    size = config.image_size
    if scaled.shape[-2:] != (size, size):
        scaled = (
            F.interpolate(
                scaled.unsqueeze(1),
                size=(size, size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            .squeeze(1)
            .clamp_(0.0, 1.0)
        )
    return scaled.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
