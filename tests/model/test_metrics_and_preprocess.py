from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model.calibration import fit_calibrator
from model.config import PreprocessConfig
from model.metrics import (
    average_precision,
    bootstrap_auc,
    calibration_bins,
    calibration_slope_intercept,
    classification_metrics,
    roc_auc,
    roc_curve,
    sensitivity_threshold,
    youden_threshold,
)
from model.preprocess import preprocess_volume, select_slices
from model.training import pooled_classification_metrics


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


# Four disease-control cases and two progressions; threshold 0.5 predicts progression for
# the cases at 0.3, 0.4 and 0.1. Counting progression as positive: TP 2, FN 0, FP 1, TN 3.
Y = np.array([1, 1, 1, 1, 0, 0])
P = np.array([0.9, 0.8, 0.6, 0.3, 0.4, 0.1])


def test_both_classes_metrics_against_hand_computed_values() -> None:
    m = classification_metrics(Y, P, threshold=0.5)
    assert (m.n, m.progressions, m.threshold) == (6, 2, 0.5)
    assert m.sensitivity == 1.0 and m.specificity == 0.75
    assert m.ppv == pytest.approx(2 / 3) and m.npv == 1.0
    assert m.balanced_accuracy == 0.875 and m.accuracy == pytest.approx(5 / 6)
    assert m.precision == 1.0 and m.recall == 0.75
    assert m.auc == 0.875  # 7 of the 8 (control, progression) pairs ranked right
    # Progression ranked by 1 - p: 0.9 (PD), 0.7, 0.6 (PD): 0.5 * 1 + 0.5 * 2/3.
    assert m.pr_auc == pytest.approx(0.5 + 1 / 3)
    assert m.brier == pytest.approx((0.01 + 0.04 + 0.16 + 0.49 + 0.16 + 0.01) / 6)
    assert m.predicted_progression == 0.5
    assert average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx(5 / 6)


def test_calibration_slope_and_intercept_against_hand_computed_values() -> None:
    # Predicted 0.1 and 0.9, observed 0.25 and 0.75: the logit must be halved, slope 0.5.
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.1] * 4 + [0.9] * 4)
    slope, intercept = calibration_slope_intercept(y, p)
    assert slope == pytest.approx(0.5, abs=1e-6) and intercept == pytest.approx(0.0, abs=1e-6)
    # Everyone predicted 0.2 where half have the event: intercept log(4) moves 0.2 to 0.5.
    _, intercept = calibration_slope_intercept(np.array([1, 1, 0, 0]), np.full(4, 0.2))
    assert intercept == pytest.approx(np.log(4.0), abs=1e-6)
    assert np.isnan(calibration_slope_intercept(np.array([1, 1]), np.array([0.3, 0.6]))[0])


def test_thresholds_are_chosen_by_the_documented_rules() -> None:
    # Youden's J: 0.75 at the cut between 0.4 and 0.6, the best of every midpoint.
    assert youden_threshold(Y, P) == pytest.approx(0.5)
    # Progression predicted below the threshold: both progressions (0.4, 0.1) need 0.5; one needs 0.2.
    assert sensitivity_threshold(Y, P, 1.0) == pytest.approx(0.5)
    assert sensitivity_threshold(Y, P, 0.5) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold(np.array([1, 1]), np.array([0.2, 0.4]))


def test_pooled_decisions_use_each_folds_own_threshold() -> None:
    y = np.array([1, 0, 1, 0])
    scores = np.array([0.6, 0.4, 0.9, 0.2])
    m = pooled_classification_metrics(y, scores, np.array([0.7, 0.3, 0.5, 0.5]))
    # 0.6 < 0.7: a control called progressive; 0.4 >= 0.3: a progression missed.
    assert (m.sensitivity, m.specificity) == (0.5, 0.5)
    assert m.auc == roc_auc(y, scores) == 1.0


def test_bootstrap_intervals_and_paired_differences() -> None:
    y = np.array([1] * 20 + [0] * 10)
    rng = np.random.default_rng(1)
    noisy = np.where(y == 1, 0.6, 0.4) + rng.normal(0, 0.2, 30)
    perfect = y * 0.5 + 0.25
    (a, b), (same, difference) = bootstrap_auc(y, [noisy, perfect], resamples=300, seed=0)
    assert a.low <= a.value <= a.high and a.high - a.low > 0.05
    assert (b.value, b.low, b.high) == (1.0, 1.0, 1.0)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    assert difference.value == pytest.approx(1.0 - a.value)
    assert 0.0 <= difference.low < difference.value < difference.high
    repeated, _ = bootstrap_auc(y, [np.stack([noisy, perfect])], resamples=50, seed=0)
    assert repeated[0].value == pytest.approx((a.value + 1.0) / 2)


def test_platt_and_isotonic_recalibration() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.05, 0.95, 4000)
    y = (rng.random(4000) < truth).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * np.log(truth / (1 - truth))))
    platt = fit_calibrator("platt", y, overconfident)
    assert platt.parameters["slope"] == pytest.approx(1 / 3, abs=0.05)
    assert np.abs(platt.apply(overconfident) - truth).mean() < 0.03
    isotonic = fit_calibrator("isotonic", y, overconfident)
    assert np.abs(isotonic.apply(overconfident) - truth).mean() < 0.05
    assert type(isotonic).from_dict(isotonic.to_dict()).apply(np.array([0.5])) == isotonic.apply(
        np.array([0.5])
    )


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


def test_degenerate_models_are_flagged() -> None:
    from model.metrics import Estimate
    from model.validation import degenerate_warnings

    everyone_controlled = classification_metrics(Y, P, threshold=0.05)
    assert everyone_controlled.predicted_progression == 0.0
    assert degenerate_warnings("CLDCA", [everyone_controlled], Estimate(0.875, 0.7, 1.0)) == [
        "DEGENERATE: CLDCA predicts disease control for 100% of cases; "
        "it does not tell the classes apart at its threshold"
    ]
    assert degenerate_warnings("CLDCA", [classification_metrics(Y, P)], Estimate(0.6, 0.45, 0.8)) == [
        "NOT BETTER THAN CHANCE: CLDCA's AUC 0.600 (95% CI 0.450-0.800) has a 95% CI that contains 0.5"
    ]
    assert degenerate_warnings("CLDCA", [classification_metrics(Y, P)], Estimate(0.875, 0.6, 1.0)) == []
    assert degenerate_warnings("CLDCA", [classification_metrics(Y, P)], Estimate(0.24, 0.09, 0.43)) == [
        "WORSE THAN CHANCE: CLDCA's AUC 0.240 (95% CI 0.090-0.430) lies below 0.5; "
        "on held-out cases its ranking is inverted"
    ]
