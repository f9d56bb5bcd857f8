"""The outbox relay against real brokers and real Celery workers.

Each test runs the relay in-process and Celery workers as child processes, on
the serverless default broker (kombu filesystem) and on a real Redis.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, func, select

from tace.db import Job, JobEvent, JobState, Stage
from tace.queue import BrokerUnavailable, Publisher, make_celery
from tace.relay import Relay
from tace.settings import Settings
from tace.storage import Storage
from tests.factories import add_jobs
from tests.support.processes import kill_hard, spawn, stop, tace_env
from tests.support.services import RedisServer, wait_until

STALL_SECONDS = 2.0

pytestmark = pytest.mark.slow


class Harness:
    """Relay thread + worker processes sharing one data dir, database and broker."""

    def __init__(self, settings: Settings, engine: Engine, log_dir: Path) -> None:
        self.settings = settings
        self.engine = engine
        self.log_dir = log_dir
        self.publisher = Publisher(make_celery(settings))
        self.relay = Relay(engine, self.publisher, stall_seconds=settings.job_stall_seconds)
        self.workers: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_relay(self) -> None:
        self._thread = threading.Thread(target=self.relay.run, args=(self._stop, 0.1), daemon=True)
        self._thread.start()

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        environment = tace_env(
            data_dir=self.settings.data_dir,
            database_url=self.settings.effective_database_url,
            broker_url=self.settings.broker_url,
            job_stall_seconds=self.settings.job_stall_seconds,
        )
        environment.update(env)
        worker = spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.support.lease_worker",
                "worker",
                "-Q",
                "infer",
                "--pool",
                "solo",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            environment,
            self.log_dir / f"worker-{len(self.workers)}.log",
        )
        self.workers.append(worker)
        return worker

    def states(self, job_ids: list[int]) -> dict[int, JobState]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(Job.id, Job.state).where(col(Job.id).in_(job_ids)))
            return {job_id: JobState(state) for job_id, state in rows}

    def completions(self, job_ids: list[int]) -> dict[int, int]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(JobEvent.job_id, func.count())
                .where(JobEvent.state == JobState.sent, col(JobEvent.job_id).in_(job_ids))
                .group_by(JobEvent.job_id)
            )
            return dict(rows.all())

    def wait_all_sent(self, job_ids: list[int], timeout: float) -> None:
        wait_until(
            lambda: all(s == JobState.sent for s in self.states(job_ids).values()),
            timeout,
            what=f"jobs {job_ids} to be sent (now {self.states(job_ids)}); logs in {self.log_dir}",
        )

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        for worker in self.workers:
            stop(worker)


@pytest.fixture(params=["filesystem", "redis"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def harness_factory(
    make_settings: Callable[..., Settings], sqlite_engine: Engine, tmp_path: Path
) -> Iterator[Callable[[str], Harness]]:
    made: list[Harness] = []

    def build(broker_url: str) -> Harness:
        settings = make_settings(broker_url=broker_url, job_stall_seconds=STALL_SECONDS)
        harness = Harness(settings, sqlite_engine, tmp_path)
        made.append(harness)
        return harness

    yield build
    for harness in made:
        harness.close()


def _broker_url(kind: str, request: pytest.FixtureRequest) -> tuple[str, RedisServer | None]:
    if kind == "filesystem":
        return "filesystem://", None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url, server


def _break_filesystem_broker(settings: Settings) -> Callable[[], None]:
    """Replace the message folder by a file, as a lost mount would; returns the repair."""
    messages = Storage(settings.data_dir).broker_dir / "messages"
    aside = messages.with_name("messages.aside")
    messages.rename(aside)
    messages.write_text("not a directory")

    def repair() -> None:
        messages.unlink()
        aside.rename(messages)

    return repair


def test_job_committed_while_broker_is_down_is_published_when_it_is_back(
    broker_kind: str, harness_factory: Callable[[str], Harness], request: pytest.FixtureRequest
) -> None:
    url, redis = _broker_url(broker_kind, request)
    harness = harness_factory(url)
    if redis is not None:
        redis.stop()
        repair = redis.start
    else:
        repair = _break_filesystem_broker(harness.settings)

    job_ids = add_jobs(harness.engine, 3)
    outage = harness.relay.run_once()
    assert outage.broker_errors == 1 and outage.published == 0
    with pytest.raises(BrokerUnavailable):
        harness.publisher(job_ids[0], Stage.infer)
    assert set(harness.states(job_ids).values()) == {JobState.received}

    repair()
    harness.start_relay()
    harness.start_worker()
    harness.wait_all_sent(job_ids, timeout=60)
    assert harness.completions(job_ids) == {job_id: 1 for job_id in job_ids}


def test_job_whose_worker_was_killed_is_republished_and_completes_once(
    broker_kind: str, harness_factory: Callable[[str], Harness], request: pytest.FixtureRequest
) -> None:
    url, _ = _broker_url(broker_kind, request)
    harness = harness_factory(url)
    job_ids = add_jobs(harness.engine, 2)
    harness.start_relay()
    doomed = harness.start_worker(TEST_FIRST_ATTEMPT_SECONDS="600")
    data_dir = harness.settings.data_dir
    first_marker = wait_until(
        lambda: next(iter(data_dir.glob("running-*-1")), None), 60, what="a first attempt to start"
    )
    killed_job = int(first_marker.name.split("-")[1])
    kill_hard(doomed)

    harness.start_worker(TEST_FIRST_ATTEMPT_SECONDS="0.1")
    harness.wait_all_sent(job_ids, timeout=90)
    assert harness.completions(job_ids) == {job_id: 1 for job_id in job_ids}
    with harness.engine.connect() as connection:
        killed = connection.execute(select(Job).where(Job.id == killed_job)).one()
    assert killed.lost_leases == 1
    assert killed.attempts == 2
    assert killed.publish_count >= 2


def test_duplicate_deliveries_to_parallel_workers_complete_each_job_once(
    harness_factory: Callable[[str], Harness], request: pytest.FixtureRequest
) -> None:
    server: RedisServer = request.getfixturevalue("redis_server")
    harness = harness_factory(server.url)
    job_ids = add_jobs(harness.engine, 6)
    for job_id in job_ids:
        for _ in range(3):
            harness.publisher(job_id, Stage.infer)
    harness.start_worker(TEST_FIRST_ATTEMPT_SECONDS="0.3")
    harness.start_worker(TEST_FIRST_ATTEMPT_SECONDS="0.3")
    harness.wait_all_sent(job_ids, timeout=60)
    assert harness.completions(job_ids) == {job_id: 1 for job_id in job_ids}
