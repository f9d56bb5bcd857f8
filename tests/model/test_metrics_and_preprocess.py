from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model.config import PreprocessConfig
from model.metrics import calibration_bins, classification_metrics, roc_auc, roc_curve
from model.preprocess import preprocess_volume, select_slices


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pairs = [(a, b) for a, b in itertools.product(s[y == 1], s[y == 0])]
    return float(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]))


def test_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)
    assert roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s))
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    fpr, tpr = roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s))


def test_threshold_metrics_count_disease_control_as_positive() -> None:
    m = classification_metrics(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.6, 0.1]))
    assert (m.accuracy, m.precision, m.recall, m.n) == (0.5, 0.5, 0.5, 4)
    bins = calibration_bins(np.array([1, 0, 1, 1]), np.array([0.05, 0.05, 0.95, 0.95]))
    assert bins == [(0.05, 0.5, 2), (0.95, 1.0, 2)]


def test_window_scale_resize_three_channels() -> None:
    volume = torch.full((4, 64, 64), -1000.0)
    volume[:, 16:48, 16:48] = 60.0
    volume[0, 0, 0] = 3000.0
    out = preprocess_volume(volume, PreprocessConfig(window_center=60, window_width=400, image_size=32))
    assert out.shape == (4, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    assert out[1, 0, 16, 16] == pytest.approx(0.5)
    assert out[1, 0, 0, 0] == 0.0
    torch.testing.assert_close(out[:, 0], out[:, 2])


def test_long_series_are_evenly_subsampled() -> None:
    assert select_slices(10, None).tolist() == list(range(10))
    assert select_slices(100, 5).tolist() == [0, 25, 50, 74, 99]
    assert (
        preprocess_volume(torch.zeros(100, 8, 8), PreprocessConfig(image_size=8, max_slices=5)).shape[0] == 5
    )
