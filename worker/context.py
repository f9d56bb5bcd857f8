"""What a worker process holds for its whole life: settings, database, model, pools.

The Predictor is loaded once per process and warmed up (compiled, one blank
series through it) before the Celery worker takes a job; a solo or thread pool
never forks after CUDA is touched.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

import model
from model.checkpoint import CheckpointError, read_meta
from model.predictor import Predictor
from model.training import Progress, no_progress
from model.workflows import DemoRecipe, make_demo_checkpoint
from tace.logging import get_logger
from tace.process import init_process
from tace.queue import Publisher, make_celery
from tace.settings import Settings
from tace.storage import Storage, atomic_write
from worker.prefetch import Prefetcher

log = get_logger("tace.worker")

DEMO_CHECKPOINT = "demo.safetensors"
DEMO_RECIPE = DemoRecipe()


def checkpoint_path(settings: Settings) -> Path:
    return settings.model_checkpoint or Storage(settings.data_dir).models_dir / DEMO_CHECKPOINT


def demo_cache_path() -> Path:
    """Where demo weights are kept between data dirs: the user's cache, keyed by what makes them.

    The key covers the recipe and the model package's code and schemas, so a
    changed network or schema never reuses weights trained for another.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(DEMO_RECIPE), sort_keys=True).encode())
    package = Path(model.__file__).parent
    for source in sorted([*package.rglob("*.py"), *package.rglob("*.yaml")]):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    return base / "tace" / f"demo-{digest.hexdigest()[:16]}.safetensors"


def ensure_checkpoint(settings: Settings, progress: Progress = no_progress) -> Path:
    """The configured checkpoint, or the demo one (flagged demo), made once per machine and user.

    Demo weights are trained on first use into the user's cache and copied into
    the data dir, so a new data dir (a test, a second gateway) starts in seconds.
    """
    path = checkpoint_path(settings)
    if settings.model_checkpoint is not None or path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent / ".demo.lock"):
        if not path.exists():
            cached = demo_cache_path()
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("model.demo_cache_unusable", path=str(cached.parent), error=str(exc))
                _train_demo(path, progress)
            else:
                with _locked(cached.parent / ".demo.lock"):
                    if not _usable_demo(cached):
                        _train_demo(cached, progress)
                with cached.open("rb") as source:
                    atomic_write(path, iter(lambda: source.read(1 << 20), b""), path.parent)
                log.info("model.demo_copied", source=str(cached), path=str(path))
    return path


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _usable_demo(path: Path) -> bool:
    try:
        return read_meta(path).demo
    except CheckpointError:
        return False


def _train_demo(path: Path, progress: Progress) -> None:
    log.warning("model.demo_training", path=str(path), note="no TACE_MODEL_CHECKPOINT: training demo weights")
    _, meta = make_demo_checkpoint(path, recipe=DEMO_RECIPE, progress=progress)
    log.warning("model.demo_ready", held_out_auc=meta.metrics["held_out"]["auc"], demo=True)


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
    prefetch: Prefetcher = field(init=False)
    publisher: Publisher = field(init=False)
    _predictor: Predictor | None = field(default=None, init=False)
    _loaded_from: tuple[Path, int, int] | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.storage = Storage(self.settings.data_dir)
        self.decode_pool = decode_pool(self.settings)
        self.prefetch = Prefetcher(self.decode_pool)
        self.publisher = Publisher(make_celery(self.settings))

    @property
    def predictor(self) -> Predictor:
        """The checkpoint's predictor, loaded again when the file is replaced.

        The listener selects studies for the checkpoint on disk; a worker still
        running the old one would refuse every study selected for the new one.
        """
        with self._lock:
            path = ensure_checkpoint(self.settings)
            stat = path.stat()
            source = (path, stat.st_size, stat.st_mtime_ns)
            if self._predictor is None or source != self._loaded_from:
                self._predictor = Predictor.load(
                    path, device=self.settings.device, compile_mode=self.settings.compile
                )
                self._loaded_from = source
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

    def warm_up(self) -> Predictor:
        """Load the model and run one blank series through it before the worker takes a job.

        With torch.compile the first forward pass takes tens of seconds; paid here,
        the first series after a start is as fast as the rest.
        """
        predictor = self.predictor
        seconds = predictor.warm_up()
        log.info(
            "model.warmed_up",
            seconds=round(seconds, 3),
            device=str(predictor.device),
            compiled=predictor.compiled,
            channels_last=predictor.channels_last,
            bf16=predictor.bf16 and predictor.device.type == "cuda",
        )
        return predictor
