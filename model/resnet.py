"""ResNet-50, written with torchvision's parameter names.

torchvision does not import beside the pinned torch, so the backbone lives here.
Keeping torchvision's names (``conv1``, ``layer1.0.downsample.0``, ...) means an
ImageNet state dict saved by torchvision loads as is (its ``fc.*`` entries, the
ImageNet classifier, are not part of the backbone and are ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

EXPANSION = 4
"""A bottleneck's output has four times its width in channels."""


class BackboneWeightsError(ValueError):
    """A backbone weight file that does not fit ResNet-50; the message names the first misfit."""


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _stage(blocks: int, in_channels: int, width: int, stride: int) -> nn.Sequential:
    """One of layer1..layer4: the first bottleneck changes channels (and stride), the rest keep them."""
    out_channels = width * EXPANSION
    return nn.Sequential(
        Bottleneck(in_channels, width, stride),
        *(Bottleneck(out_channels, width) for _ in range(blocks - 1)),
    )


class ResNet50(nn.Module):
    """ResNet-50 up to global average pooling: images (N, 3, H, W) -> features (N, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(3, 64, 64, stride=1)
        self.layer2 = _stage(4, 256, 128, stride=2)
        self.layer3 = _stage(6, 512, 256, stride=2)
        self.layer4 = _stage(3, 1024, 512, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def load_backbone_state(backbone: ResNet50, state: Mapping[str, Tensor], source: str) -> None:
    """Load a torchvision-format state dict, refusing any missing, extra or misshapen entry."""
    expected = backbone.state_dict()
    given = {
        k.removeprefix("module."): v for k, v in state.items() if not k.startswith(("fc.", "module.fc."))
    }
    for name, tensor in given.items():
        if name not in expected:
            raise BackboneWeightsError(f"{source}: unexpected parameter {name!r} (not in ResNet-50)")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise BackboneWeightsError(
                f"{source}: parameter {name!r} has shape {tuple(tensor.shape)}, "
                f"ResNet-50 needs {tuple(expected[name].shape)}"
            )
    for name in expected:
        if name not in given:
            raise BackboneWeightsError(f"{source}: parameter {name!r} is missing")
    backbone.load_state_dict(given, strict=True)


def read_state_file(path: Path) -> dict[str, Tensor]:
    """A state dict from a torchvision ``.pth`` (tensors only, no pickled code) or safetensors file."""
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is one message
        raise BackboneWeightsError(f"{path}: not a readable weight file ({exc.__class__.__name__})") from None
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise BackboneWeightsError(f"{path}: does not hold a state dict of tensors")
    return dict(loaded)
