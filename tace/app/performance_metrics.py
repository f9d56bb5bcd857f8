"""Prometheus gauges of live performance and drift, so an existing alert rule can watch them.

The AUC's bootstrap takes a moment, so the figures are recomputed at most once
per ``max_age_seconds`` and served from memory between scrapes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import Engine

from tace.settings import Settings


class PerformanceCollector:
    def __init__(self, settings: Settings, engine: Engine, max_age_seconds: float = 300.0) -> None:
        self._settings = settings
        self._engine = engine
        self._max_age = max_age_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def _figures(self) -> dict[str, Any]:
        from tace.app.performance_view import performance_page

        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self._max_age:
                self._cached = (
                    now,
                    performance_page(
                        self._settings, self._engine, window="all", identifiers=False, plots=False
                    ),
                )
            return self._cached[1]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        figures = self._figures()
        linked = GaugeMetricFamily(
            "tace_outcomes_linked", "Outcomes scored against a model version", labels=["model_version"]
        )
        auc_low = GaugeMetricFamily(
            "tace_model_auc_lower", "Lower bound of the live AUC's bootstrap 95% CI", labels=["model_version"]
        )
        unlinked = GaugeMetricFamily("tace_outcomes_unlinked", "Outcomes waiting to be linked by an admin")
        psi = GaugeMetricFamily(
            "tace_input_drift_psi",
            "Population stability index of a clinical input vs training",
            labels=["feature"],
        )
        image_psi = GaugeMetricFamily(
            "tace_image_drift_psi",
            "Population stability index of a per-series image statistic vs training",
            labels=["statistic"],
        )
        for version in figures["versions"]:
            linked.add_metric([version["model_version"]], version["outcomes"])
            if version["auc"] is not None:
                auc_low.add_metric([version["model_version"]], version["auc"]["low"])
        unlinked.add_metric([], len(figures["unlinked"]))
        for feature in (figures["drift"] or {}).get("features", []):
            if feature["psi"] is not None:
                psi.add_metric([feature["feature"]], feature["psi"])
        for image in (figures["drift"] or {}).get("images", []):
            if image["psi"] is not None:
                image_psi.add_metric([image["statistic"]], image["psi"])
        yield linked
        yield auc_low
        yield unlinked
        yield psi
        yield image_psi
