"""CLDCA: CNN-LSTM over CT slices, DNN over clinical values, cross- and self-attention.

``forward_features`` maps inputs to the fused feature vector and ``forward_head``
maps that to logits, so the backbone's per-slice features can be computed once
(``embed_slices``) and cached when the backbone is frozen.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.blocks import (
    ClassifierHead,
    ClinicalEncoder,
    CrossAttention,
    PooledSliceEncoder,
    SelfAttention,
    SliceSequenceEncoder,
)
from model.config import CLDCAConfig, Variant
from model.resnet import ResNet50


class CLDCA(nn.Module):
    def __init__(self, config: CLDCAConfig) -> None:
        super().__init__()
        self.config = config
        variant = config.variant
        d = config.attention_dim
        self.backbone: ResNet50 | None = None
        self.slice_encoder: nn.Module | None = None
        self.clinical_encoder: ClinicalEncoder | None = None
        self.cross_attention: CrossAttention | None = None
        self.self_attention: SelfAttention | None = None
        self.image_proj: nn.Linear | None = None
        self.clinical_proj: nn.Linear | None = None

        if variant.uses_image:
            self.backbone = ResNet50()
            if variant is Variant.no_lstm:
                self.slice_encoder = PooledSliceEncoder(config.backbone_dim, config.lstm_hidden)
            else:
                self.slice_encoder = SliceSequenceEncoder(config.backbone_dim, config.lstm_hidden)
        if variant.uses_clinical:
            self.clinical_encoder = ClinicalEncoder(
                config.clinical_width, config.clinical_hidden, config.dropout, config.standardize_clinical
            )
        fused = variant.uses_image and variant.uses_clinical
        if fused:
            if variant is not Variant.no_cross_attention:
                self.cross_attention = CrossAttention(
                    config.clinical_dim, config.lstm_hidden, d, config.dropout
                )
            else:
                self.image_proj = nn.Linear(config.lstm_hidden, d)
            self.clinical_proj = nn.Linear(config.clinical_dim, d) if config.clinical_dim != d else None
            if variant is not Variant.no_self_attention:
                self.self_attention = SelfAttention(d, config.dropout)
            head_inputs = 2 * d
        elif variant.uses_image:
            head_inputs = config.lstm_hidden
        else:
            head_inputs = config.clinical_dim
        self.head = ClassifierHead(head_inputs, config.mlp_hidden, config.num_classes, config.dropout)
        if config.freeze_backbone:
            self.freeze_backbone()

    def freeze_backbone(self) -> None:
        if self.backbone is not None:
            self.backbone.eval()
            for parameter in self.backbone.parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> CLDCA:
        super().train(mode)
        if self.config.freeze_backbone and self.backbone is not None:
            self.backbone.eval()
        return self

    def embed_slices(self, slices: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, 3, H, W) padded slices -> (B, T, 2048); only real slices see the backbone."""
        if self.backbone is None:
            raise RuntimeError(f"variant {self.config.variant} has no image branch")
        batch, steps = slices.shape[:2]
        valid = torch.arange(steps, device=slices.device).unsqueeze(0) < lengths.to(slices.device).unsqueeze(
            1
        )
        features = self.backbone(slices[valid])
        out = features.new_zeros(batch, steps, features.shape[-1])
        out[valid] = features
        return out

    def forward_features(
        self,
        slice_features: Tensor | None = None,
        lengths: Tensor | None = None,
        clinical: Tensor | None = None,
    ) -> Tensor:
        """Per-slice backbone features and clinical inputs -> the fused feature vector."""
        variant = self.config.variant
        tokens = image = clin = None
        if variant.uses_image:
            if slice_features is None or lengths is None:
                raise ValueError(f"variant {variant} needs slice_features and lengths")
            assert self.slice_encoder is not None
            tokens, image = self.slice_encoder(slice_features, lengths)
        if variant.uses_clinical:
            if clinical is None:
                raise ValueError(f"variant {variant} needs clinical inputs")
            assert self.clinical_encoder is not None
            clin = self.clinical_encoder(clinical)
        if clin is None:
            assert image is not None
            return image
        if image is None:
            return clin
        query = self.clinical_proj(clin) if self.clinical_proj is not None else clin
        if self.cross_attention is not None:
            assert tokens is not None and lengths is not None
            attended = self.cross_attention(clin, tokens, lengths)
        else:
            assert self.image_proj is not None
            attended = self.image_proj(image)
        fused = torch.stack([attended, query], dim=1)
        if self.self_attention is not None:
            fused = self.self_attention(fused)
        return fused.flatten(1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, slices: Tensor | None, lengths: Tensor | None, clinical: Tensor | None) -> Tensor:
        slice_features = None
        if self.config.variant.uses_image:
            if slices is None or lengths is None:
                raise ValueError(f"variant {self.config.variant} needs slices and lengths")
            slice_features = self.embed_slices(slices, lengths)
        return self.forward_head(self.forward_features(slice_features, lengths, clinical))

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per branch, as `tace model info` reports them."""
        branches = {
            "backbone": self.backbone,
            "slice_encoder": self.slice_encoder,
            "clinical_encoder": self.clinical_encoder,
            "cross_attention": self.cross_attention,
            "self_attention": self.self_attention,
            "fusion_projections": nn.ModuleList(
                [m for m in (self.image_proj, self.clinical_proj) if m is not None]
            ),
            "head": self.head,
        }
        counts = {
            name: sum(p.numel() for p in module.parameters())
            for name, module in branches.items()
            if module is not None and any(True for _ in module.parameters())
        }
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts
