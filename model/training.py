"""Training and cross-validation of CLDCA, following the paper's protocol.

Stratified k-fold cross-validation (k = 5), Adam at 1e-4, batches of 32, dropout
0.1. The clinical normalization is fitted on each training fold only. With a
frozen backbone the per-slice ResNet-50 features are computed once per case and
reused by every epoch, fold and ablation, which is what makes CPU training
practical; with a trainable backbone the network is trained end to end.
Everything is seeded: the same inputs and seed give the same model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import CLDCAConfig, PreprocessConfig, Variant
from model.data import ManifestCase, VolumeLoader
from model.metrics import Metrics, classification_metrics
from model.network import CLDCA
from model.preprocess import preprocess_volume
from model.resnet import ResNet50, load_backbone_state, read_state_file
from model.schema import FeatureSchema, Normalization

Progress = Callable[[str, int, int], None]


def no_progress(description: str, done: int, total: int) -> None:
    """The default progress sink: silent."""


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


@dataclass
class Sample:
    """One case ready for the network: cached backbone features or preprocessed slices."""

    case_id: str
    label: int
    clinical: dict[str, object]
    features: Tensor | None = None
    slices: Tensor | None = None

    @property
    def length(self) -> int:
        source = self.features if self.features is not None else self.slices
        return int(source.shape[0]) if source is not None else 0


def initial_backbone_state(seed: int, weights_file: Path | None = None) -> dict[str, Tensor]:
    """The backbone every model of a run starts from: ImageNet weights if given, else seeded init."""
    torch.manual_seed(seed)
    backbone = ResNet50()
    if weights_file is not None:
        load_backbone_state(backbone, read_state_file(weights_file), str(weights_file))
    return {k: v.clone() for k, v in backbone.state_dict().items()}


def _state_digest(state: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(float(state[name].float().sum().item()).hex().encode())
    return digest.hexdigest()[:16]


def prepare_samples(
    cases: Sequence[ManifestCase],
    loader: VolumeLoader,
    preprocess: PreprocessConfig,
    *,
    frozen_backbone: bool,
    backbone_state: dict[str, Tensor] | None,
    device: torch.device,
    progress: Progress = no_progress,
    cache_dir: Path | None = None,
    uses_image: bool = True,
) -> list[Sample]:
    """Load every volume once; with a frozen backbone, turn it into slice features now."""
    backbone: ResNet50 | None = None
    key_base = ""
    if uses_image and frozen_backbone:
        assert backbone_state is not None
        backbone = ResNet50()
        backbone.load_state_dict(backbone_state)
        backbone.eval().to(device)
        key_base = json.dumps(preprocess.to_dict(), sort_keys=True) + _state_digest(backbone_state)
    samples = []
    for done, case in enumerate(cases):
        sample = Sample(case.case_id, case.label, case.clinical)
        if uses_image:
            if backbone is not None:
                sample.features = _cached_features(
                    case.volume, loader, preprocess, backbone, device, cache_dir, key_base
                )
            else:
                volume = torch.from_numpy(loader(case.volume))
                sample.slices = preprocess_volume(volume, preprocess)[:, 0].to(torch.float16)
        samples.append(sample)
        progress("loading cases" if backbone is None else "backbone features", done + 1, len(cases))
    return samples


def _cached_features(
    volume_path: Path,
    loader: VolumeLoader,
    preprocess: PreprocessConfig,
    backbone: ResNet50,
    device: torch.device,
    cache_dir: Path | None,
    key_base: str,
) -> Tensor:
    cache_file = None
    if cache_dir is not None:
        stat = volume_path.stat()
        key = hashlib.sha256(
            f"{volume_path}|{stat.st_size}|{stat.st_mtime_ns}|{key_base}".encode()
        ).hexdigest()
        cache_file = cache_dir / f"{key[:32]}.pt"
        if cache_file.exists():
            return torch.load(cache_file, weights_only=True)
    slices = preprocess_volume(torch.from_numpy(loader(volume_path)).to(device), preprocess)
    with torch.inference_mode():
        features = torch.cat([backbone(slices[i : i + 64]) for i in range(0, len(slices), 64)]).float().cpu()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(features, cache_file)
    return features


def _clinical_matrix(
    samples: Sequence[Sample],
    schema: FeatureSchema,
    normalization: Normalization,
    config: CLDCAConfig,
) -> Tensor:
    rows = [schema.encode(s.clinical, normalization).network_input(config.feed_missing_mask) for s in samples]
    return torch.from_numpy(np.stack(rows))


def _padded(samples: Sequence[Sample], attribute: str) -> tuple[Tensor, Tensor]:
    items = [getattr(s, attribute) for s in samples]
    lengths = torch.tensor([t.shape[0] for t in items])
    out = items[0].new_zeros((len(items), int(lengths.max()), *items[0].shape[1:]))
    for index, tensor in enumerate(items):
        out[index, : tensor.shape[0]] = tensor
    return out, lengths


def _logits(model: CLDCA, batch: Sequence[Sample], clinical: Tensor, device: torch.device) -> Tensor:
    config = model.config
    clinical_input = clinical.to(device) if config.variant.uses_clinical else None
    if not config.variant.uses_image:
        return model.forward_head(model.forward_features(None, None, clinical_input))
    lengths: Tensor
    if batch[0].features is not None:
        features, lengths = _padded(batch, "features")
        return model.forward_head(
            model.forward_features(features.to(device), lengths.to(device), clinical_input)
        )
    slices, lengths = _padded(batch, "slices")
    slices = slices.to(device).float().unsqueeze(2).expand(-1, -1, 3, -1, -1)
    return model(slices, lengths.to(device), clinical_input)


def build_model(config: CLDCAConfig, backbone_state: dict[str, Tensor] | None, seed: int) -> CLDCA:
    torch.manual_seed(seed)
    model = CLDCA(config)
    if model.backbone is not None and backbone_state is not None:
        model.backbone.load_state_dict(backbone_state)
    if config.freeze_backbone:
        model.freeze_backbone()
    return model


def fit(
    config: CLDCAConfig,
    samples: Sequence[Sample],
    schema: FeatureSchema,
    normalization: Normalization,
    settings: TrainSettings,
    backbone_state: dict[str, Tensor] | None,
    device: torch.device,
    *,
    seed: int,
    progress: Progress = no_progress,
    description: str = "training",
) -> CLDCA:
    model = build_model(config, backbone_state, seed).to(device)
    clinical = _clinical_matrix(samples, schema, normalization, config)
    labels = torch.tensor([s.label for s in samples])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(samples) + settings.batch_size - 1) // settings.batch_size
    total = settings.epochs * steps_per_epoch
    done = 0
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(samples), generator=generator)
        for start in range(0, len(samples), settings.batch_size):
            index = order[start : start + settings.batch_size]
            batch = [samples[i] for i in index.tolist()]
            loss = F.cross_entropy(_logits(model, batch, clinical[index], device), labels[index].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            done += 1
            progress(description, done, total)
    return model.eval()


def score(
    model: CLDCA,
    samples: Sequence[Sample],
    schema: FeatureSchema,
    normalization: Normalization,
    device: torch.device,
    batch_size: int = 32,
) -> np.ndarray:
    """Probability of disease control for each sample."""
    clinical = _clinical_matrix(samples, schema, normalization, model.config)
    scores = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            logits = _logits(model, batch, clinical[start : start + batch_size], device)
            scores.append(torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy())
    return np.concatenate(scores)


def stratified_folds(labels: Sequence[int], k: int, seed: int) -> list[np.ndarray]:
    """Test indices of k folds with the class balance of the whole set."""
    labels_array = np.asarray(labels)
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for value in np.unique(labels_array):
        members = np.flatnonzero(labels_array == value)
        rng.shuffle(members)
        for position, index in enumerate(members):
            folds[position % k].append(int(index))
    if any(len(f) == 0 for f in folds):
        raise ValueError(f"too few cases ({len(labels_array)}) for {k} folds")
    return [np.sort(np.asarray(f)) for f in folds]


@dataclass
class FoldResult:
    fold: int
    metrics: Metrics
    case_ids: list[str]
    y_true: np.ndarray
    y_score: np.ndarray


@dataclass
class CrossValidation:
    variant: Variant
    folds: list[FoldResult] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name in ("auc", "accuracy", "precision", "recall"):
            values = np.asarray([getattr(f.metrics, name) for f in self.folds], dtype=np.float64)
            out[name] = {"mean": float(np.nanmean(values)), "sd": float(np.nanstd(values, ddof=1))}
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "variant": self.variant.value,
            "folds": [
                {
                    "fold": f.fold,
                    **f.metrics.as_dict(),
                    "cases": f.case_ids,
                    "y_true": f.y_true.tolist(),
                    "y_score": [round(float(s), 6) for s in f.y_score],
                }
                for f in self.folds
            ],
            "summary": self.summary(),
        }


def cross_validate(
    config: CLDCAConfig,
    samples: Sequence[Sample],
    schema: FeatureSchema,
    settings: TrainSettings,
    backbone_state: dict[str, Tensor] | None,
    device: torch.device,
    progress: Progress = no_progress,
) -> CrossValidation:
    result = CrossValidation(config.variant)
    labels = [s.label for s in samples]
    for fold, test_index in enumerate(stratified_folds(labels, settings.folds, settings.seed)):
        test_set = set(test_index.tolist())
        train = [s for i, s in enumerate(samples) if i not in test_set]
        test = [samples[i] for i in test_index]
        normalization = schema.fit(s.clinical for s in train)
        model = fit(
            config,
            train,
            schema,
            normalization,
            settings,
            backbone_state,
            device,
            seed=settings.seed + fold,
            progress=progress,
            description=f"{config.variant} fold {fold + 1}/{settings.folds}",
        )
        y_score = score(model, test, schema, normalization, device)
        y_true = np.asarray([s.label for s in test])
        result.folds.append(
            FoldResult(
                fold + 1,
                classification_metrics(y_true, y_score),
                [s.case_id for s in test],
                y_true,
                y_score,
            )
        )
    return result
