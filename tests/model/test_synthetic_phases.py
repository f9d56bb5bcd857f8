"""The multi-phase synthetic cohort: its label lies in the enhancement pattern, not in one phase."""

from __future__ import annotations

import numpy as np

from model.metrics import roc_auc
from model.synthetic import make_phase_cohort


def test_wash_in_minus_wash_out_separates_the_classes_better_than_the_portal_phase() -> None:
    cohort = make_phase_cohort(200, seed=1, slices=4, size=24)
    labels = np.array([case.label for case in cohort])
    assert 0.35 < labels.mean() < 0.65
    window = (-140.0, 260.0)  # the default HU window every channel gets
    arterial = np.array([case.phase_volumes["arterial"].clip(*window).mean() for case in cohort])
    portal = np.array([case.phase_volumes["portal_venous"].clip(*window).mean() for case in cohort])
    contrast_auc = roc_auc(labels, arterial - portal)
    portal_auc = max(roc_auc(labels, portal), roc_auc(labels, -portal))
    assert contrast_auc >= portal_auc + 0.1, (contrast_auc, portal_auc)
    case = cohort[0]
    assert case.stacked().shape == (4, 3, 24, 24)
    np.testing.assert_array_equal(case.stacked()[:, 2], case.phase_volumes["delayed"])
