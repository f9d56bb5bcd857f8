"""The baseline every report compares CLDCA with: a regularised logistic regression.

On a site's hundred cases a deep network has to earn its complexity. The
baseline sees the same folds, the same encoded clinical features (normalization
fitted on the training fold) and, when the model uses images, the mean ResNet-50
feature over the slices; its threshold follows the same rule on its own training
scores. L2 penalty with scikit-learn's default strength on standardized inputs
and balanced class weights: a plain, well-understood model, not a tuned rival.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from model.metrics import choose_threshold
from model.schema import FeatureSchema, Normalization

if TYPE_CHECKING:
    from model.training import Sample

C = 1.0


def baseline_matrix(
    samples: Sequence[Sample], schema: FeatureSchema, normalization: Normalization, uses_image: bool
) -> np.ndarray:
    rows = []
    for sample in samples:
        clinical = schema.encode(sample.clinical, normalization).values.astype(np.float64)
        if uses_image:
            if sample.pooled is None:
                raise ValueError(f"case {sample.case_id}: no pooled image features for the baseline")
            clinical = np.concatenate([clinical, sample.pooled.astype(np.float64)])
        rows.append(clinical)
    return np.stack(rows)


@dataclass(frozen=True)
class LogisticBaseline:
    pipeline: Pipeline
    normalization: Normalization
    uses_image: bool
    threshold: float

    @staticmethod
    def describe(uses_image: bool) -> str:
        inputs = "clinical features" + (" and mean ResNet-50 slice features" if uses_image else "")
        return f"logistic regression (L2, C={C:g}, balanced class weights) on the standardized {inputs}"

    @classmethod
    def fit(
        cls,
        samples: Sequence[Sample],
        schema: FeatureSchema,
        normalization: Normalization,
        uses_image: bool,
        target_sensitivity: float | None,
    ) -> LogisticBaseline:
        x = baseline_matrix(samples, schema, normalization, uses_image)
        y = np.asarray([s.label for s in samples])
        pipeline = make_pipeline(
            StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=5000)
        )
        pipeline.fit(x, y)
        training = pipeline.predict_proba(x)[:, 1]
        return cls(pipeline, normalization, uses_image, choose_threshold(y, training, target_sensitivity))

    def predict(self, samples: Sequence[Sample], schema: FeatureSchema) -> np.ndarray:
        """Probability of disease control."""
        x = baseline_matrix(samples, schema, self.normalization, self.uses_image)
        return self.pipeline.predict_proba(x)[:, 1]
