"""Celery tasks: thin wrappers that hand a job id to the stage functions.

Tasks take only a job id and re-read everything from the database. Delivery is
at least once (``acks_late``, ``reject_on_worker_lost``, prefetch 1); the stage
functions claim the job with a lease first, so a duplicate message does nothing.
Nothing is retried by Celery itself: the job's state says what happens next and
the relay republishes it.
"""

from __future__ import annotations

from celery import Celery

from tace.queue import QUEUE_INFER, QUEUE_SEND, TASK_INFER, TASK_SEND, make_celery
from worker.context import WorkerContext
from worker.infer import run_infer
from worker.send import run_send


def build_app(context: WorkerContext) -> Celery:
    app = make_celery(context.settings)

    @app.task(name=TASK_INFER, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def infer(job_id: int) -> str:
        return run_infer(context, job_id).value

    @app.task(name=TASK_SEND, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def send(job_id: int) -> str:
        return run_send(context, job_id).value

    return app


def worker_arguments(
    queues: list[str], concurrency: int, loglevel: str, name: str, *, events: bool = False
) -> list[str]:
    """A solo pool for one job at a time (safe with CUDA: no fork), threads when asked for more.

    With ``events`` the worker sends task events and heartbeats, which monitors
    such as Flower need; without, it sends nothing nobody reads.
    """
    pool = "solo" if concurrency == 1 else "threads"
    unknown = [q for q in queues if q not in (QUEUE_INFER, QUEUE_SEND)]
    if unknown:
        raise ValueError(f"unknown queue(s) {', '.join(unknown)}; use infer and/or send")
    monitoring = ["--task-events"] if events else ["--without-heartbeat"]
    return [
        "worker",
        "--queues",
        ",".join(queues),
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        *monitoring,
        "--loglevel",
        loglevel.upper(),
        "--hostname",
        name,
    ]
