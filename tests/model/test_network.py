from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import CLDCAConfig, Variant
from model.network import CLDCA
from model.resnet import BackboneWeightsError, ResNet50, load_backbone_state, read_state_file

TORCHVISION_RESNET50_FC = 2048 * 1000 + 1000


def torchvision_resnet50_names() -> list[str]:
    """The state-dict names torchvision's resnet50() uses, written from its architecture."""

    def bn(prefix: str) -> list[str]:
        return [
            f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ]

    names = ["conv1.weight", *bn("bn1")]
    for layer, blocks in enumerate((3, 4, 6, 3), start=1):
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            for conv in (1, 2, 3):
                names += [f"{prefix}.conv{conv}.weight", *bn(f"{prefix}.bn{conv}")]
            if block == 0:
                names += [f"{prefix}.downsample.0.weight", *bn(f"{prefix}.downsample.1")]
    return [*names, "fc.weight", "fc.bias"]


def test_backbone_matches_torchvision_names_and_parameter_count() -> None:
    backbone = ResNet50()
    assert sorted(backbone.state_dict()) == sorted(torchvision_resnet50_names()[:-2])
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    assert trainable == 23_508_032
    assert trainable + TORCHVISION_RESNET50_FC == 25_557_032


def _torchvision_file(
    tmp_path: Path, rename: tuple[str, str] | None = None, reshape: str | None = None
) -> Path:
    torch.manual_seed(1)
    source = ResNet50()
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.randn(1000, 2048)
    state["fc.bias"] = torch.randn(1000)
    if rename:
        state[rename[1]] = state.pop(rename[0])
    if reshape:
        state[reshape] = torch.randn(3, 3)
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(state, path)
    return path


def test_a_torchvision_state_dict_loads(tmp_path: Path) -> None:
    path = _torchvision_file(tmp_path)
    backbone = ResNet50()
    load_backbone_state(backbone, read_state_file(path), str(path))
    saved = torch.load(path, weights_only=True)
    torch.testing.assert_close(backbone.layer4[2].conv3.weight, saved["layer4.2.conv3.weight"])


@pytest.mark.parametrize(
    ("rename", "reshape", "message"),
    [
        (
            ("layer1.0.conv1.weight", "layer1.0.convA.weight"),
            None,
            "unexpected parameter 'layer1.0.convA.weight'",
        ),
        (
            None,
            "layer2.1.bn1.weight",
            "parameter 'layer2.1.bn1.weight' has shape (3, 3), ResNet-50 needs (128,)",
        ),
    ],
)
def test_a_misfit_weight_file_is_refused_naming_the_first_misfit(
    tmp_path: Path, rename: tuple[str, str] | None, reshape: str | None, message: str
) -> None:
    path = _torchvision_file(tmp_path, rename=rename, reshape=reshape)
    with pytest.raises(BackboneWeightsError) as caught:
        load_backbone_state(ResNet50(), read_state_file(path), str(path))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_unreadable_weight_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a pickle")
    with pytest.raises(BackboneWeightsError, match="not a readable weight file"):
        read_state_file(path)


def _inputs(lengths: list[int], size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    slices = torch.rand(len(lengths), max(lengths), 3, size, size)
    return slices, torch.tensor(lengths), torch.rand(len(lengths), 43)


@pytest.mark.parametrize("variant", list(Variant))
def test_every_variant_gives_two_logits_per_series(variant: Variant) -> None:
    model = CLDCA(CLDCAConfig(variant=variant)).eval()
    slices, lengths, clinical = _inputs([3, 2])
    with torch.no_grad():
        assert model(slices, lengths, clinical).shape == (2, 2)
        features = model.forward_features(
            model.embed_slices(slices, lengths) if variant.uses_image else None, lengths, clinical
        )
        torch.testing.assert_close(model.forward_head(features), model(slices, lengths, clinical))


@pytest.mark.parametrize(
    "variant", [Variant.full, Variant.no_lstm, Variant.no_cross_attention, Variant.image_only]
)
def test_padding_does_not_change_a_series_output(variant: Variant) -> None:
    model = CLDCA(CLDCAConfig(variant=variant)).eval()
    slices, lengths, clinical = _inputs([3, 5])
    garbage = slices.clone()
    garbage[0, 3:] = 1e3
    with torch.no_grad():
        alone = model(slices[:1, :3], lengths[:1], clinical[:1])
        batched = model(slices, lengths, clinical)
        with_garbage_padding = model(garbage, lengths, clinical)
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(with_garbage_padding, batched, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", list(Variant))
def test_every_ablation_trains_one_step(variant: Variant) -> None:
    torch.manual_seed(0)
    model = CLDCA(CLDCAConfig(variant=variant, feed_missing_mask=True, clinical_inputs=43)).train()
    slices, lengths, _ = _inputs([3, 2])
    clinical = torch.rand(2, 86)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = torch.nn.functional.cross_entropy(model(slices, lengths, clinical), torch.tensor([0, 1]))
    loss.backward()
    torch.optim.Adam(model.parameters(), lr=1e-3).step()
    assert torch.isfinite(loss)
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert any(n.startswith("head.") for n in changed)
    if variant.uses_image:
        assert any(n.startswith("backbone.") for n in changed)
    if variant.uses_clinical:
        assert any(n.startswith("clinical_encoder.") for n in changed)


def test_frozen_backbone_stays_fixed_and_in_eval_mode() -> None:
    model = CLDCA(CLDCAConfig(freeze_backbone=True)).train()
    assert model.backbone is not None and not model.backbone.training
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_config_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="dropout must be in"):
        CLDCAConfig(dropout=1.5)
    with pytest.raises(ValueError, match="'bogus' is not a valid Variant"):
        CLDCAConfig(variant="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown model config keys: extra"):
        CLDCAConfig.from_dict({"extra": 1})
