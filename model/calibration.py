"""Post-hoc recalibration of the probability of disease control (Platt or isotonic).

Class weighting trains the network on balanced classes, so its raw probabilities
are not the site's event rates; a calibrator fitted on held-out predictions maps
them back. It travels in the checkpoint and the predictor applies it before the
decision threshold, which is chosen on the calibrated scale.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class CalibrationMethod(enum.StrEnum):
    platt = "platt"
    isotonic = "isotonic"


def _logit(probability: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Calibrator:
    method: CalibrationMethod
    parameters: dict[str, Any] = field(default_factory=dict)

    def apply(self, probability: np.ndarray) -> np.ndarray:
        p = np.asarray(probability, dtype=np.float64)
        if self.method is CalibrationMethod.platt:
            a, b = self.parameters["intercept"], self.parameters["slope"]
            return 1.0 / (1.0 + np.exp(-(a + b * _logit(p))))
        return np.interp(p, self.parameters["x"], self.parameters["y"])

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method.value, **self.parameters}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        parameters = {k: v for k, v in data.items() if k != "method"}
        return cls(CalibrationMethod(data["method"]), parameters)


def fit_calibrator(
    method: CalibrationMethod | str, y_true: np.ndarray, probability: np.ndarray
) -> Calibrator:
    """Fit on predictions the network did not train on (a held-out split)."""
    method = CalibrationMethod(method)
    y = np.asarray(y_true, dtype=np.float64)
    if y.min() == y.max():
        raise ValueError("calibration needs held-out cases of both classes")
    if method is CalibrationMethod.platt:
        return Calibrator(method, _platt(y, np.asarray(probability, dtype=np.float64)))
    from sklearn.isotonic import IsotonicRegression

    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(probability, y)
    return Calibrator(method, {"x": isotonic.X_thresholds_.tolist(), "y": isotonic.y_thresholds_.tolist()})


def _platt(y: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """Platt's sigmoid on the logit, with his smoothed targets so separated data stays finite."""
    positives, negatives = y.sum(), len(y) - y.sum()
    target = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    x = np.column_stack([np.ones(len(y)), _logit(probability)])
    beta = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, x.T @ (target - p))
        beta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return {"intercept": float(beta[0]), "slope": float(beta[1])}
