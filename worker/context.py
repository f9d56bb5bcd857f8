"""What a worker process holds for its whole life: settings, database, model, pools.

The Predictor is loaded once per process, on first use, after the Celery worker
has started (a solo or thread pool: no fork happens after CUDA is touched).
"""

from __future__ import annotations

import fcntl
import multiprocessing
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from model.predictor import Predictor
from tace.logging import get_logger
from tace.process import init_process
from tace.queue import Publisher, make_celery
from tace.settings import Settings
from tace.storage import Storage

log = get_logger("tace.worker")

DEMO_CHECKPOINT = "demo.safetensors"


def checkpoint_path(settings: Settings) -> Path:
    return settings.model_checkpoint or Storage(settings.data_dir).models_dir / DEMO_CHECKPOINT


def ensure_checkpoint(settings: Settings) -> Path:
    """The configured checkpoint, or the demo one, trained once on first start (flagged demo)."""
    path = checkpoint_path(settings)
    if settings.model_checkpoint is not None or path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".demo.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            from model.workflows import make_demo_checkpoint

            log.warning(
                "model.demo_training", path=str(path), note="no TACE_MODEL_CHECKPOINT: training demo weights"
            )
            _, meta = make_demo_checkpoint(path)
            log.warning("model.demo_ready", held_out_auc=meta.metrics["held_out"]["auc"], demo=True)
    return path


def decode_pool(settings: Settings) -> Executor:
    """Threads by default; processes (forkserver, safe once CUDA is initialised) to use every core."""
    if settings.worker_decode_processes > 0:
        return ProcessPoolExecutor(
            settings.worker_decode_processes,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=init_process,
            initargs=(settings,),
        )
    return ThreadPoolExecutor(settings.worker_decode_threads, thread_name_prefix="decode")


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    storage: Storage = field(init=False)
    decode_pool: Executor = field(init=False)
    publisher: Publisher = field(init=False)
    _predictor: Predictor | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.storage = Storage(self.settings.data_dir)
        self.decode_pool = decode_pool(self.settings)
        self.publisher = Publisher(make_celery(self.settings))

    @property
    def predictor(self) -> Predictor:
        with self._lock:
            if self._predictor is None:
                path = ensure_checkpoint(self.settings)
                self._predictor = Predictor.load(path, device=self.settings.device)
                meta = self._predictor.meta
                log.info(
                    "model.loaded",
                    model=meta.model_name,
                    version=meta.version,
                    demo=meta.demo,
                    device=str(self._predictor.device),
                    sha256=self._predictor.checkpoint_sha256[:16],
                )
            return self._predictor
