"""The typed building blocks of CLDCA besides the ResNet-50 backbone."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def padding_mask(lengths: Tensor, max_length: int) -> Tensor:
    """True where a position is padding: (B,) lengths -> (B, T) bool."""
    positions = torch.arange(max_length, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)


class SliceFeatureNorm(nn.Module):
    """Batch normalization of the pooled slice features, over real slices only.

    Pooled ResNet features share a large common component across slices and
    patients; standardizing each channel lets the sequence model see the
    differences. Padding never enters the statistics.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        valid = ~padding_mask(lengths.to(features.device), features.shape[1])
        out = torch.zeros_like(features)
        out[valid] = self.bn(features[valid])
        return out


class SliceSequenceEncoder(nn.Module):
    """LSTM over the per-slice features of a series, packed so padding never leaks in.

    Returns the per-slice outputs (the image tokens) and the last state of each
    sequence (the global image feature).
    """

    def __init__(self, input_dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = SliceFeatureNorm(input_dim)
        self.lstm = nn.LSTM(input_dim, hidden, batch_first=True)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        features = self.norm(features, lengths)
        packed = pack_padded_sequence(features, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, (h_n, _) = self.lstm(packed)
        tokens, _ = pad_packed_sequence(output, batch_first=True, total_length=features.shape[1])
        return tokens, h_n[-1]


class PooledSliceEncoder(nn.Module):
    """The no-LSTM ablation: project each slice, average over the real slices."""

    def __init__(self, input_dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = SliceFeatureNorm(input_dim)
        self.proj = nn.Linear(input_dim, hidden)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        tokens = torch.relu(self.proj(self.norm(features, lengths)))
        keep = (~padding_mask(lengths, features.shape[1])).unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * keep
        pooled = tokens.sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(tokens.dtype)
        return tokens, pooled


class ClinicalEncoder(nn.Module):
    """The DNN over the clinical values: 43 -> 128 -> 256 -> 128 with ReLU.

    With ``standardize`` the inputs are first centred and scaled by statistics of
    the training data (buffers set once by ``set_input_statistics``, saved with
    the weights). Min-max scaling lets one outlier squeeze a column towards a
    constant; on a hundred cases that alone costs the network its signal.
    """

    input_mean: Tensor
    input_scale: Tensor

    def __init__(
        self, inputs: int, hidden: tuple[int, ...], dropout: float, standardize: bool = False
    ) -> None:
        super().__init__()
        self.standardize = standardize
        if standardize:
            self.register_buffer("input_mean", torch.zeros(inputs))
            self.register_buffer("input_scale", torch.ones(inputs))
        layers: list[nn.Module] = []
        width = inputs
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        self.net = nn.Sequential(*layers)

    def set_input_statistics(self, inputs: Tensor) -> None:
        """Mean and standard deviation per input over (N, inputs) training rows; constant columns stay put."""
        if not self.standardize:
            raise RuntimeError("this encoder was built without standardize")
        std = inputs.float().std(0, unbiased=False)
        self.input_mean.copy_(inputs.float().mean(0))
        self.input_scale.copy_(torch.where(std > 1e-6, 1.0 / std.clamp(min=1e-6), torch.ones_like(std)))

    def forward(self, clinical: Tensor) -> Tensor:
        if self.standardize:
            clinical = (clinical - self.input_mean) * self.input_scale
        return self.net(clinical)


class CrossAttention(nn.Module):
    """Asymmetric cross-attention: the clinical feature asks, the image tokens answer.

    Scaled dot product with learned W_q (clinical), W_k and W_v (image tokens);
    padded slices are masked out of the keys.
    """

    def __init__(self, query_dim: int, token_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.w_q = nn.Linear(query_dim, dim)
        self.w_k = nn.Linear(token_dim, dim)
        self.w_v = nn.Linear(token_dim, dim)
        self.dropout = dropout

    def forward(self, query: Tensor, tokens: Tensor, lengths: Tensor) -> Tensor:
        q = self.w_q(query).unsqueeze(1)
        k = self.w_k(tokens)
        v = self.w_v(tokens)
        allowed = ~padding_mask(lengths, tokens.shape[1])
        attended = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=allowed.unsqueeze(1),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return attended.squeeze(1)


class SelfAttention(nn.Module):
    """Single-head self-attention over the fused feature tokens, residual and layer norm."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.norm(tokens + self.drop(self.out(attended)))


class ClassifierHead(nn.Module):
    """Two-layer MLP with ReLU to the two response classes."""

    def __init__(self, inputs: int, hidden: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, classes),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)
