"""Prometheus metrics shared by every process of one machine, plus gauges read from the database.

Each process (listener, HL7 feed, workers, API) counts its own events into
prometheus_client's multi-process files under ``<data>/metrics``; the API's
``/metrics`` adds them up. Counts that must be right across machines (jobs by
state, queue depth, series waiting) are read from the database at scrape time.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tace.storage import Storage

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from sqlalchemy.engine import Engine

_ENV = "PROMETHEUS_MULTIPROC_DIR"
_metrics: dict[str, Any] = {}
_lock = threading.Lock()

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def init(data_dir: Path) -> None:
    """Point this process at the shared metrics folder; call before the first metric is touched."""
    from prometheus_client import values

    folder = Storage(data_dir).root / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(_ENV, str(folder))
    values.ValueClass = values.MultiProcessValue(process_identifier)


def process_identifier() -> str:
    """Host name and PID, which name this process's metric files.

    prometheus_client names them by PID alone, but in the compose deployment every
    service is PID 1 of its own container and they all share the data volume: the
    listener, the feed and the workers would write into one another's files.
    """
    return f"{_host()}-{os.getpid()}"


@functools.cache
def _host() -> str:
    """Asked once: prometheus_client calls the identifier on every increment."""
    return socket.gethostname().replace("_", "-").replace(os.sep, "-") or "host"


def _define() -> dict[str, Any]:
    from prometheus_client import Counter, Histogram

    return {
        "associations": Counter("tace_associations", "DICOM associations by outcome", ["outcome"]),
        "instances": Counter("tace_instances_received", "C-STORE instances received", ["kind"]),
        "bytes": Counter("tace_received_bytes", "Bytes of instances stored"),
        "cstore": Counter("tace_cstore_responses", "C-STORE responses by status", ["status"]),
        "series": Counter("tace_series_completed", "Series completed", ["result"]),
        "stage": Histogram("tace_stage_seconds", "Job stage latency", ["stage"], buckets=LATENCY_BUCKETS),
        "sends": Counter(
            "tace_sr_sends",
            "Sends of SRs and EHR results by destination and outcome",
            ["destination", "outcome"],
        ),
        "hl7": Counter("tace_hl7_messages", "HL7 messages by ACK code", ["ack"]),
    }


def metric(name: str) -> Any:
    """The named metric, defined once per process even when threads ask at the same time."""
    if not _metrics:
        with _lock:
            if not _metrics:
                _metrics.update(_define())
    return _metrics[name]


class DatabaseCollector:
    """Gauges that must agree across machines, so they come from the record itself."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Any]:
        import sqlalchemy as sa
        from prometheus_client.core import GaugeMetricFamily

        from tace.db import Job, JobState, Series, SeriesState, table

        jobs = GaugeMetricFamily("tace_jobs", "Jobs by state", labels=["state"])
        depth = GaugeMetricFamily("tace_queue_depth", "Jobs waiting for a worker (received or queued)")
        receiving = GaugeMetricFamily("tace_series_receiving", "Series still receiving instances")
        jobs_table = table(Job)
        with self._engine.connect() as connection:
            counts: dict[str, int] = dict(
                connection.execute(
                    sa.select(jobs_table.c.state, sa.func.count()).group_by(jobs_table.c.state)
                ).all()
            )
            open_series = connection.execute(
                sa.select(sa.func.count()).where(table(Series).c.state == SeriesState.receiving)
            ).scalar_one()
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        depth.add_metric([], counts.get(JobState.received, 0) + counts.get(JobState.queued, 0))
        receiving.add_metric([], open_series)
        yield jobs
        yield depth
        yield receiving


def registry(engine: Engine) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry, multiprocess

    collected = CollectorRegistry()
    if os.environ.get(_ENV):
        multiprocess.MultiProcessCollector(collected)
    collected.register(DatabaseCollector(engine))
    return collected
