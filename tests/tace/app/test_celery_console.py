"""A worker asked for JSON logs writes JSON lines only: no Celery banner, no bare shutdown notice."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from celery.apps import worker as celery_worker

from tace.app import celery_console
from tests.support.processes import spawn, start_until_ready_then_stop, tace_command, tace_env
from tests.support.services import wait_until


def test_the_celery_internals_we_replace_are_still_there() -> None:
    assert callable(celery_worker.safe_say)
    assert "safe_say(f'worker: {how} shutdown (MainProcess)'" in Path(celery_worker.__file__).read_text()
    assert celery_console.json_only(["worker", "--pool", "solo"]) == ["--quiet", "worker", "--pool", "solo"]


def test_worker_output_is_json_lines_only(data_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    env = tace_env(data_dir=data_dir, log_format="json")
    assert start_until_ready_then_stop(tace_command("worker", "--queues", "send"), env, log, 120) == 0
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events][-1] == "worker: Warm shutdown (MainProcess)"


def test_a_worker_started_with_events_lets_a_monitor_see_its_tasks(
    data_dir: Path, tmp_path: Path, redis_url: str
) -> None:
    from celery.events import EventReceiver

    from tace.queue import QUEUE_SEND, TASK_SEND, make_celery
    from tace.settings import Settings

    log = tmp_path / "worker.log"
    settings = Settings(data_dir=data_dir, broker_url=redis_url)
    process = spawn(
        tace_command("worker", "--queues", "send", "--events", "--name", "monitored@%h"),
        tace_env(data_dir=data_dir, broker_url=redis_url, log_format="json"),
        log,
    )
    app = make_celery(settings)
    seen: list[str] = []
    try:
        wait_until(lambda: "ready." in log.read_text(), 120, interval=0.5, what="the worker to start")
        with app.connection_for_read() as connection:
            receiver = EventReceiver(
                connection, handlers={"*": lambda event: seen.append(event["type"])}, app=app
            )
            deadline = time.monotonic() + 120
            sent = False
            for _ in receiver.itercapture(limit=None, timeout=60, wakeup=True):
                if seen and not sent:
                    # The receiver's queue is bound once the worker's events reach it; a task
                    # sent before could run and report before anyone listened.
                    app.send_task(TASK_SEND, args=[999_999], queue=QUEUE_SEND)
                    sent = True
                if "task-succeeded" in seen or "task-failed" in seen or time.monotonic() > deadline:
                    break
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    assert "task-received" in seen and "task-started" in seen, seen
