"""Transport of jobs to workers: the Celery app, task names and publication.

The broker only carries job ids; workers re-read the rows. The default broker is
kombu's filesystem transport under the data dir, which needs no server; Redis is
the production broker. Neither is trusted to keep a message: the relay
(:mod:`tace.relay`) re-publishes whatever the database says was not done.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.exceptions import KombuError, OperationalError

from tace.db import Stage
from tace.settings import Settings
from tace.storage import Storage

TASK_INFER = "tace.infer"
TASK_SEND = "tace.send"
QUEUE_INFER = "infer"
QUEUE_SEND = "send"

ROUTE_FOR_STAGE: dict[Stage, tuple[str, str]] = {
    Stage.infer: (TASK_INFER, QUEUE_INFER),
    Stage.send: (TASK_SEND, QUEUE_SEND),
}


class BrokerUnavailable(Exception):
    """The message could not be handed to the broker; the job stays in the outbox."""


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith("filesystem://"):
        folder = Storage(settings.data_dir).broker_dir
        messages = folder / "messages"
        control = folder / "control"
        for directory in (messages, control):
            directory.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(messages),
            "data_folder_out": str(messages),
            "control_folder": str(control),
            "store_processed": False,
        }
    return {"visibility_timeout": settings.visibility_timeout_seconds}


def make_celery(settings: Settings) -> Celery:
    """The Celery app every process shares; workers register tasks on it by name."""
    serverless = settings.broker_url.startswith(("filesystem://", "memory://"))
    broker = (
        "filesystem://localhost/" if settings.broker_url.startswith("filesystem://") else settings.broker_url
    )
    app = Celery("tace", broker=broker, set_as_current=False)
    app.conf.update(
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE_INFER,
        task_routes={TASK_INFER: {"queue": QUEUE_INFER}, TASK_SEND: {"queue": QUEUE_SEND}},
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=not serverless,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    return app


class Publisher:
    """Hands job ids to the broker, turning every broker failure into one exception type."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def __call__(self, job_id: int, stage: Stage) -> None:
        task, queue = ROUTE_FOR_STAGE[stage]
        try:
            self._app.send_task(
                task,
                args=[job_id],
                queue=queue,
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2},
            )
        except (KombuError, OperationalError, OSError) as exc:
            raise BrokerUnavailable(f"broker refused job {job_id}: {exc}") from exc
