"""A Celery worker module that follows the job protocol but does no real work.

The relay tests need a worker that can be killed mid-task; the real worker
(``worker``) needs a model and DICOM. This one claims, heartbeats, sleeps, and
finishes the job as ``sent``: exactly the lease protocol the real tasks follow.
The first attempt of a job sleeps ``TEST_FIRST_ATTEMPT_SECONDS``, later ones
``TEST_TASK_SECONDS``, so a test can kill the worker during the first.
"""

from __future__ import annotations

import os
import time

from tace.db import JobState, Stage, make_engine
from tace.jobs import Heartbeat, claim, finish
from tace.queue import TASK_INFER, make_celery
from tace.settings import load_settings

settings = load_settings()
engine = make_engine(settings.effective_database_url)
app = make_celery(settings)


@app.task(name=TASK_INFER)
def infer(job_id: int) -> None:
    lease = claim(engine, job_id, Stage.infer, stall_seconds=settings.job_stall_seconds)
    if lease is None:
        return
    marker = settings.data_dir / f"running-{job_id}-{lease.attempt}"
    marker.write_text(str(os.getpid()))
    seconds = float(
        os.environ.get("TEST_FIRST_ATTEMPT_SECONDS" if lease.attempt == 1 else "TEST_TASK_SECONDS", "0.1")
    )
    with Heartbeat(engine, lease, interval_seconds=settings.job_stall_seconds / 4):
        time.sleep(seconds)
    finish(engine, lease, JobState.sent, detail=f"done by pid {os.getpid()}")
