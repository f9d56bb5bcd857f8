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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import PreprocessConfig
from model.contract import CHANNELS, LEGACY_PHASES

AIR_HU = -1000.0
"""What padding outside the field of view becomes."""


@dataclass(frozen=True)
class StoredVolume:
    """Stored pixel values of a series with each slice's modality rescale, not yet in HU.

    A worker hands the model 16-bit integers (a quarter of the bytes of float32 HU
    plus no float pass on the CPU): only the slices the model reads are uploaded, and
    rescale and padding are applied where the arithmetic is cheap, on the device.
    The float32 operations are those of a CPU rescale (multiply, then add), so both
    give the same HU.
    """

    values: np.ndarray
    """(slices, rows, columns) as stored: int16 or uint16 for CT, float32 when already HU."""
    slope: np.ndarray
    """(slices,) float32 RescaleSlope."""
    intercept: np.ndarray
    """(slices,) float32 RescaleIntercept."""
    padding: np.ndarray | None = None
    """(slices, 2) inclusive stored range of padding (air); low > high: none in that slice."""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def __len__(self) -> int:
        return len(self.values)

    def hu(self) -> np.ndarray:
        """Float32 HU on the CPU (phase alignment and callers that want an array)."""
        return self.to_hu(torch.device("cpu")).numpy()

    def to_hu(self, device: torch.device, indices: Tensor | None = None) -> Tensor:
        """Upload the (selected) stored slices as they are, then rescale on ``device``.

        Unsigned 16-bit values travel as their int16 bit patterns and are widened
        on the device: torch's uint16 lacks kernels on CUDA, int16 and int32 have them.
        """
        pick = np.arange(len(self.values)) if indices is None else indices.cpu().numpy()
        chosen = np.ascontiguousarray(self.values[pick])
        unsigned = chosen.dtype == np.uint16
        values = torch.from_numpy(chosen.view(np.int16) if unsigned else chosen)
        if device.type == "cuda":
            values = values.pin_memory()
        stored = values.to(device, non_blocking=True)
        if unsigned:
            stored = stored.int() & 0xFFFF
        slope = torch.from_numpy(self.slope[pick].astype(np.float32)).to(device).view(-1, 1, 1)
        intercept = torch.from_numpy(self.intercept[pick].astype(np.float32)).to(device).view(-1, 1, 1)
        hu = stored.float() * slope + intercept
        if self.padding is not None:
            bounds = torch.from_numpy(self.padding[pick].astype(np.int64)).to(device)
            wide = stored.long()
            padded = (wide >= bounds[:, 0].view(-1, 1, 1)) & (wide <= bounds[:, 1].view(-1, 1, 1))
            hu = hu.masked_fill_(padded, AIR_HU)
        return hu


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
    return _window_and_resize(volume_hu.index_select(0, indices).float(), config)


def preprocess_stored(
    stored: StoredVolume,
    config: PreprocessConfig,
    device: torch.device,
    phases: Sequence[str] = LEGACY_PHASES,
) -> Tensor:
    """:func:`preprocess_volume` from stored values: the selected slices go to ``device`` as integers."""
    check_volume_shape(stored.shape, phases)
    if len(stored) == 0:
        raise ValueError("volume_hu has no slices")
    indices = select_slices(len(stored), config.max_slices)
    return _window_and_resize(stored.to_hu(device, indices).unsqueeze(1), config)


def _window_and_resize(volume: Tensor, config: PreprocessConfig) -> Tensor:
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
