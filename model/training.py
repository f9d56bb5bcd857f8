"""Training and cross-validation of CLDCA, made trustworthy for small, imbalanced cohorts.

The paper's network (dropout 0.1, batches of 32) in repeated stratified k-fold
cross-validation. The paper trained Adam at 1e-4 on 181 patients; a site
validating on 50-300 cases with few progressions needs more so the numbers can be
trusted, and the defaults say so:

- class-weighted loss (each class weighs half), AdamW at 1e-3 with strong
  decoupled weight decay, clinical inputs standardized by training statistics;
- early stopping on the pooled held-out loss of inner stratified folds of each
  training fold (after a warm-up), then one refit on the whole training fold for
  the chosen number of epochs;
- optional recalibration (Platt or isotonic) and the decision threshold (Youden's
  J, or a target sensitivity for progression) chosen on those inner held-out
  predictions, so the test fold never informs either;
- fewer folds, with a note, when a class has fewer cases than folds, and a
  refusal below three cases, so no fold is ever left without a class;
- a logistic-regression baseline on the same folds (``model.baseline``).

The clinical normalization is fitted on each training fold only. With a frozen
backbone the per-slice ResNet-50 features are computed once per case and reused
by every epoch, fold and ablation, which is what makes CPU training practical;
clinical-only models never run the backbone. Everything is seeded: the same
inputs and seed give the same model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.baseline import LogisticBaseline
from model.calibration import CalibrationMethod, Calibrator, fit_calibrator
from model.config import CLDCAConfig, PreprocessConfig, Variant
from model.contract import LEGACY_PHASES
from model.data import ManifestCase, VolumeLoader, load_case_volume
from model.image_stats import volume_statistics
from model.metrics import Metrics, choose_threshold, classification_metrics
from model.network import CLDCA
from model.preprocess import preprocess_volume
from model.resnet import ResNet50, load_backbone_state, read_state_file
from model.schema import FeatureSchema, Normalization

Progress = Callable[[str, int, int], None]
MIN_CASES_PER_CLASS = 3
"""Each class needs a test case in every fold and two in every training fold (one to validate on)."""


def no_progress(description: str, done: int, total: int) -> None:
    """The default progress sink: silent."""


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 40
    """The most epochs; early stopping usually ends sooner."""
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    """Decoupled (AdamW) weight decay."""
    folds: int = 5
    repeats: int = 1
    seed: int = 0
    inner_folds: int = 3
    """Inner cross-validation of each training fold that decides when to stop."""
    patience: int = 10
    """Epochs without a better pooled held-out loss before training stops."""
    min_epochs: int = 20
    """Warm-up: no epoch before this one is chosen (a network at its random start has no loss to beat)."""
    class_weighting: bool = True
    target_sensitivity: float | None = None
    """Threshold for this sensitivity for progression on the training data; None: Youden's J."""
    calibration: CalibrationMethod | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "repeats", "patience", "min_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.min_epochs > self.epochs:
            raise ValueError(f"min_epochs ({self.min_epochs}) must not exceed epochs ({self.epochs})")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}")
        if self.inner_folds < 2:
            raise ValueError(f"inner_folds must be at least 2, got {self.inner_folds}")
        if self.target_sensitivity is not None and not 0.0 < self.target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity must be in (0, 1], got {self.target_sensitivity}")
        if self.calibration is not None:
            object.__setattr__(self, "calibration", CalibrationMethod(self.calibration))

    @property
    def threshold_rule(self) -> str:
        where = "inner cross-validated predictions of the training data"
        if self.target_sensitivity is None:
            return f"Youden's J on {where}"
        return f"sensitivity for progression >= {self.target_sensitivity:g} on {where}"

    def to_dict(self) -> dict[str, object]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "folds": self.folds,
            "repeats": self.repeats,
            "seed": self.seed,
            "inner_folds": self.inner_folds,
            "patience": self.patience,
            "min_epochs": self.min_epochs,
            "class_weighting": self.class_weighting,
            "threshold_rule": self.threshold_rule,
            "calibration": self.calibration.value if self.calibration else None,
        }


@dataclass
class Sample:
    """One case ready for the network: cached backbone features or preprocessed slices."""

    case_id: str
    label: int
    clinical: dict[str, object]
    features: Tensor | None = None
    slices: Tensor | None = None
    pooled: np.ndarray | None = None
    """Mean backbone feature over the slices, for the logistic baseline."""
    slice_count: int = 0
    """Slices of the volume as loaded, before any subsampling (the contract's minimum)."""
    image_stats: dict[str, float | None] | None = None
    """The volume's statistics (``model.image_stats``), kept in the checkpoint for image drift."""

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
    phases: tuple[str, ...] = LEGACY_PHASES,
) -> list[Sample]:
    """Load every volume once and compute its slice features (for the baseline even when trained).

    With ``uses_image`` False nothing is loaded and no backbone is built. A case of a
    multi-phase model loads one volume per phase, stacked as the channels.
    """
    backbone: ResNet50 | None = None
    key_base = ""
    if uses_image:
        assert backbone_state is not None
        backbone = ResNet50()
        backbone.load_state_dict(backbone_state)
        backbone.eval().to(device)
        key_base = json.dumps(
            {**preprocess.to_dict(), "phases": list(phases)}, sort_keys=True
        ) + _state_digest(backbone_state)
    samples = []
    for done, case in enumerate(cases):
        sample = Sample(case.case_id, case.label, case.clinical)
        if backbone is not None:
            features, sample.slice_count, sample.image_stats = _cached_features(
                case, loader, preprocess, phases, backbone, device, cache_dir, key_base
            )
            sample.pooled = features.mean(0).numpy()
            if frozen_backbone:
                sample.features = features
            else:
                volume = torch.from_numpy(load_case_volume(case, loader))
                slices = preprocess_volume(volume, preprocess, phases)
                # A single phase fills all three channels alike: keep one, expand per batch.
                sample.slices = (slices if len(phases) > 1 else slices[:, :1]).to(torch.float16)
        samples.append(sample)
        if backbone is not None:
            progress("backbone features", done + 1, len(cases))
    return samples


def _cached_features(
    case: ManifestCase,
    loader: VolumeLoader,
    preprocess: PreprocessConfig,
    phases: tuple[str, ...],
    backbone: ResNet50,
    device: torch.device,
    cache_dir: Path | None,
    key_base: str,
) -> tuple[Tensor, int, dict[str, float | None] | None]:
    """(per-slice features, slices loaded, image statistics), from the cache when the volumes are unchanged.

    A cache entry written before image statistics were kept has none (None)."""
    cache_file = None
    if cache_dir is not None:
        identity = "|".join(f"{p}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in case.volume_paths)
        key = hashlib.sha256(f"{identity}|{key_base}".encode()).hexdigest()
        cache_file = cache_dir / f"{key[:32]}.pt"
        if cache_file.exists():
            cached = torch.load(cache_file, weights_only=True)
            return cached["features"], int(cached["slices"]), cached.get("image_stats")
    volume = load_case_volume(case, loader)
    stats = volume_statistics(volume, case.slice_thickness_mm)
    slices = preprocess_volume(torch.from_numpy(volume).to(device), preprocess, phases)
    with torch.inference_mode():
        features = torch.cat([backbone(slices[i : i + 64]) for i in range(0, len(slices), 64)]).float().cpu()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"features": features, "slices": volume.shape[0], "image_stats": stats}, cache_file)
    return features, int(volume.shape[0]), stats


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
    slices = slices.to(device).float().expand(-1, -1, 3, -1, -1)
    return model(slices, lengths.to(device), clinical_input)


def build_model(config: CLDCAConfig, backbone_state: dict[str, Tensor] | None, seed: int) -> CLDCA:
    torch.manual_seed(seed)
    model = CLDCA(config)
    if model.backbone is not None and backbone_state is not None:
        model.backbone.load_state_dict(backbone_state)
    if config.freeze_backbone:
        model.freeze_backbone()
    return model


def class_weights(labels: Sequence[int]) -> Tensor:
    """Inverse class frequencies scaled so each class weighs half of the loss."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise ValueError("class weighting needs cases of both classes")
    return torch.tensor(len(labels) / (2.0 * counts), dtype=torch.float32)


@dataclass
class FittedModel:
    """A trained network with what turns its output into a decision."""

    model: CLDCA
    normalization: Normalization
    threshold: float
    calibrator: Calibrator | None
    best_epoch: int
    epochs_run: int
    held_out_scores: np.ndarray
    """Inner cross-validated (calibrated) probabilities of the training cases, at the best epoch."""

    def probabilities(
        self, samples: Sequence[Sample], schema: FeatureSchema, device: torch.device
    ) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated, raw) probability of disease control."""
        raw = score(self.model, samples, schema, self.normalization, device)
        return (self.calibrator.apply(raw) if self.calibrator else raw), raw


def fit(
    config: CLDCAConfig,
    samples: Sequence[Sample],
    schema: FeatureSchema,
    settings: TrainSettings,
    backbone_state: dict[str, Tensor] | None,
    device: torch.device,
    *,
    seed: int,
    progress: Progress = no_progress,
    description: str = "training",
) -> FittedModel:
    """Inner cross-validation picks the epochs, calibrator and threshold; then one refit on all.

    ``samples`` are split into stratified inner folds whose models train in
    lockstep; training stops when the class-weighted loss of their pooled
    held-out predictions has not improved for ``patience`` epochs. With a
    handful of progressions one validation split would hold a single one and
    stop at random; pooled, every training case is validated on once. The
    held-out predictions of the best epoch fit the calibrator (as scikit-learn's
    ``CalibratedClassifierCV(ensemble=False)`` does) and choose the threshold, so
    neither is tuned on predictions of cases the network had learnt. The
    returned network is refit on every case for the best number of epochs.
    """
    normalization = schema.fit(s.clinical for s in samples)
    labels = np.asarray([s.label for s in samples])
    inner_folds = min(settings.inner_folds, int(np.bincount(labels, minlength=2).min()))
    if inner_folds < 2:
        raise ValueError("inner cross-validation needs 2 cases of each class in every training fold")
    runs = []
    for validation_index in stratified_folds(labels.tolist(), inner_folds, seed):
        held = set(validation_index.tolist())
        train = [s for i, s in enumerate(samples) if i not in held]
        runs.append(
            (
                _Run(config, train, schema, normalization, settings, backbone_state, device, seed),
                validation_index,
            )
        )
    weights = (
        class_weights(labels.tolist()).numpy().astype(np.float64) if settings.class_weighting else np.ones(2)
    )
    held_out = np.full((settings.epochs, len(samples)), np.nan)
    best_loss, best_epoch, epoch = math.inf, settings.min_epochs, 0
    for epoch in range(1, settings.epochs + 1):
        for run, validation_index in runs:
            run.epoch()
            held_out[epoch - 1, validation_index] = run.probabilities([samples[i] for i in validation_index])
        loss = _weighted_log_loss(labels, held_out[epoch - 1], weights)
        progress(f"{description} (inner CV)", epoch, settings.epochs)
        if epoch < settings.min_epochs:
            continue
        if loss < best_loss - 1e-6:
            best_loss, best_epoch = loss, epoch
        elif epoch - best_epoch >= settings.patience:
            break
    progress(f"{description} (inner CV)", epoch, epoch)
    del runs
    inner_scores = held_out[best_epoch - 1]
    calibrator = None
    if settings.calibration is not None:
        calibrator = fit_calibrator(settings.calibration, labels, inner_scores)
        inner_scores = calibrator.apply(inner_scores)
    threshold = choose_threshold(labels, inner_scores, settings.target_sensitivity)
    final = _Run(config, samples, schema, normalization, settings, backbone_state, device, seed)
    for done in range(1, best_epoch + 1):
        final.epoch()
        progress(description, done, best_epoch)
    return FittedModel(
        final.model.eval(), normalization, threshold, calibrator, best_epoch, epoch, inner_scores
    )


def _weighted_log_loss(labels: np.ndarray, probability: np.ndarray, weights: np.ndarray) -> float:
    """Cross-entropy with class weights, averaged as ``F.cross_entropy(weight=...)`` does."""
    p = np.clip(probability, 1e-7, 1 - 1e-7)
    case_weights = weights[labels]
    losses = -np.where(labels == 1, np.log(p), np.log(1 - p))
    return float((case_weights * losses).sum() / case_weights.sum())


class _Run:
    """One network being trained on one set of cases, an epoch at a time."""

    def __init__(
        self,
        config: CLDCAConfig,
        train: Sequence[Sample],
        schema: FeatureSchema,
        normalization: Normalization,
        settings: TrainSettings,
        backbone_state: dict[str, Tensor] | None,
        device: torch.device,
        seed: int,
    ) -> None:
        self.train, self.schema, self.normalization = list(train), schema, normalization
        self.settings, self.device = settings, device
        self.model = build_model(config, backbone_state, seed).to(device)
        self.clinical = _clinical_matrix(self.train, schema, normalization, config)
        encoder = self.model.clinical_encoder
        if encoder is not None and encoder.standardize:
            encoder.set_input_statistics(self.clinical.to(device))
        self.labels = torch.tensor([s.label for s in self.train])
        self.weights = class_weights(self.labels.tolist()).to(device) if settings.class_weighting else None
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimiser = torch.optim.AdamW(
            trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self) -> None:
        self.model.train()
        order = torch.randperm(len(self.train), generator=self.generator)
        for start in range(0, len(self.train), self.settings.batch_size):
            index = order[start : start + self.settings.batch_size]
            batch = [self.train[i] for i in index.tolist()]
            logits = _logits(self.model, batch, self.clinical[index], self.device)
            loss = F.cross_entropy(logits, self.labels[index].to(self.device), weight=self.weights)
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()

    def probabilities(self, samples: Sequence[Sample]) -> np.ndarray:
        return score(self.model, samples, self.schema, self.normalization, self.device)


def score(
    model: CLDCA,
    samples: Sequence[Sample],
    schema: FeatureSchema,
    normalization: Normalization,
    device: torch.device,
    batch_size: int = 32,
) -> np.ndarray:
    """Probability of disease control for each sample, as the network gives it (uncalibrated)."""
    clinical = _clinical_matrix(samples, schema, normalization, model.config)
    scores = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            logits = _logits(model, batch, clinical[start : start + batch_size], device)
            scores.append(torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy())
    return np.concatenate(scores)


def plan_folds(labels: Sequence[int], requested: int) -> tuple[int, str | None]:
    """The folds to use, and a note when fewer than requested; refuses too few cases.

    A fold without a case of some class has no AUC and would drop out of the mean
    unseen, so the folds never outnumber the smaller class.
    """
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=2)
    smallest = int(counts.min())
    name = "progressive" if counts[0] <= counts[1] else "disease control"
    if smallest < MIN_CASES_PER_CLASS:
        raise ValueError(
            f"only {smallest} {name} case(s): cross-validation needs at least "
            f"{MIN_CASES_PER_CLASS} of each class"
        )
    if smallest < requested:
        return smallest, (
            f"only {smallest} {name} cases: {smallest} folds instead of {requested}, "
            "so every test fold holds at least one"
        )
    return requested, None


def stratified_folds(labels: Sequence[int], k: int, seed: int) -> list[np.ndarray]:
    """Test indices of k folds with the class balance of the whole set; every fold has both classes."""
    labels_array = np.asarray(labels)
    counts = np.bincount(labels_array.astype(int), minlength=2)
    if counts.min() < k:
        raise ValueError(f"{k} folds need {k} cases of each class, the smaller class has {counts.min()}")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for value in np.unique(labels_array):
        members = np.flatnonzero(labels_array == value)
        rng.shuffle(members)
        for position, index in enumerate(members):
            folds[(position + offset) % k].append(int(index))
        offset += len(members)
    return [np.sort(np.asarray(f)) for f in folds]


@dataclass
class FoldResult:
    repeat: int
    fold: int
    test_index: np.ndarray
    case_ids: list[str]
    y_true: np.ndarray
    y_score: np.ndarray
    """Calibrated when calibration is on; else the raw probability."""
    raw_score: np.ndarray
    metrics: Metrics
    baseline_score: np.ndarray
    baseline_metrics: Metrics
    best_epoch: int


@dataclass
class CrossValidation:
    """Out-of-fold predictions of every repeat, for the model and the baseline on the same folds."""

    variant: Variant
    case_ids: list[str]
    y_true: np.ndarray
    folds_used: int
    repeats: int
    baseline_name: str
    notes: list[str] = field(default_factory=list)
    folds: list[FoldResult] = field(default_factory=list)

    def out_of_fold(self, kind: str = "model") -> np.ndarray:
        """(repeats, cases) scores: ``model`` (calibrated if asked), ``raw`` or ``baseline``."""
        attribute = {"model": "y_score", "raw": "raw_score", "baseline": "baseline_score"}[kind]
        out = np.full((self.repeats, len(self.case_ids)), np.nan)
        for fold in self.folds:
            out[fold.repeat - 1, fold.test_index] = getattr(fold, attribute)
        return out

    def pooled_metrics(self, kind: str = "model") -> list[Metrics]:
        """Per repeat, the metrics of the pooled out-of-fold predictions at each fold's threshold.

        Thresholds differ between folds, so the threshold metrics are computed on the
        pooled decisions, and the ranking metrics on the pooled scores.
        """
        scores = self.out_of_fold(kind)
        out = []
        for repeat in range(self.repeats):
            folds = [f for f in self.folds if f.repeat == repeat + 1]
            thresholds = np.empty(len(self.case_ids))
            for fold in folds:
                chosen = fold.baseline_metrics if kind == "baseline" else fold.metrics
                thresholds[fold.test_index] = chosen.threshold
            out.append(pooled_classification_metrics(self.y_true, scores[repeat], thresholds))
        return out


def pooled_classification_metrics(y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray) -> Metrics:
    """Metrics of scores that were each judged against their own fold's threshold.

    Shifting every score by its threshold puts all decisions on one cut at 0 for the
    threshold metrics; the ranking and probability metrics use the scores themselves.
    """
    decided = classification_metrics(y_true, y_score - thresholds + 0.5, 0.5)
    ranked = classification_metrics(y_true, y_score, 0.5)
    return Metrics(
        **{
            **ranked.as_dict(),
            **{
                k: getattr(decided, k)
                for k in (
                    "accuracy",
                    "precision",
                    "recall",
                    "balanced_accuracy",
                    "sensitivity",
                    "specificity",
                    "ppv",
                    "npv",
                    "predicted_progression",
                )
            },
            "threshold": float(np.median(thresholds)),
        }
    )


def cross_validate(
    config: CLDCAConfig,
    samples: Sequence[Sample],
    schema: FeatureSchema,
    settings: TrainSettings,
    backbone_state: dict[str, Tensor] | None,
    device: torch.device,
    progress: Progress = no_progress,
) -> CrossValidation:
    """Repeated stratified k-fold CV of the model and of the logistic baseline on the same folds."""
    labels = [s.label for s in samples]
    k, note = plan_folds(labels, settings.folds)
    result = CrossValidation(
        variant=config.variant,
        case_ids=[s.case_id for s in samples],
        y_true=np.asarray(labels),
        folds_used=k,
        repeats=settings.repeats,
        baseline_name=LogisticBaseline.describe(config.variant.uses_image),
        notes=[note] if note else [],
    )
    for repeat in range(settings.repeats):
        fold_seed = settings.seed + 1000 * repeat
        for fold, test_index in enumerate(stratified_folds(labels, k, fold_seed)):
            test_set = set(test_index.tolist())
            train = [s for i, s in enumerate(samples) if i not in test_set]
            test = [samples[i] for i in test_index]
            label = f"{config.variant} " + (f"r{repeat + 1} " if settings.repeats > 1 else "")
            fitted = fit(
                config,
                train,
                schema,
                settings,
                backbone_state,
                device,
                seed=fold_seed + fold,
                progress=progress,
                description=f"{label}fold {fold + 1}/{k}",
            )
            y_score, raw = fitted.probabilities(test, schema, device)
            y_true = np.asarray([s.label for s in test])
            baseline = LogisticBaseline.fit(
                train, schema, fitted.normalization, config.variant.uses_image, settings.target_sensitivity
            )
            baseline_score = baseline.predict(test, schema)
            result.folds.append(
                FoldResult(
                    repeat=repeat + 1,
                    fold=fold + 1,
                    test_index=test_index,
                    case_ids=[s.case_id for s in test],
                    y_true=y_true,
                    y_score=y_score,
                    raw_score=raw,
                    metrics=classification_metrics(y_true, y_score, fitted.threshold),
                    baseline_score=baseline_score,
                    baseline_metrics=classification_metrics(y_true, baseline_score, baseline.threshold),
                    best_epoch=fitted.best_epoch,
                )
            )
    return result
