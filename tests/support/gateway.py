"""The whole gateway as real processes: listener, HL7 feed, workers, and Orthanc as the PACS."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tace.db import Job, JobEvent, make_engine
from tests.support.orthanc import Orthanc
from tests.support.processes import kill_hard, spawn, stop, tace_command, tace_env
from tests.support.services import free_port, wait_for_port, wait_until


def quick_settings(model_checkpoint: Path, **overrides: object) -> dict[str, object]:
    """Timings short enough for tests, the demo model on CPU, and labs optional."""
    return {
        "model_checkpoint": model_checkpoint,
        "device": "cpu",
        "release_grace_seconds": 1,
        "series_quiet_seconds": 30,
        "min_free_bytes": 0,
        "min_slices": 8,
        "job_stall_seconds": 4,
        "relay_interval_seconds": 0.2,
        "required_features": "none",
        **overrides,
    }


@dataclass
class Gateway:
    data_dir: Path
    log_dir: Path
    settings: dict[str, Any]
    orthanc: Orthanc | None = None
    dicom_port: int = field(default_factory=free_port)
    hl7_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _engine: Engine | None = None

    def env(self, **extra: Any) -> dict[str, str]:
        settings = {
            "data_dir": self.data_dir,
            "dicom_port": self.dicom_port,
            "hl7_port": self.hl7_port,
            "log_format": "json",
            **self.settings,
            **extra,
        }
        if self.orthanc is not None:
            settings.setdefault("destinations", self.orthanc.destination)
        return tace_env(**settings)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            url = self.settings.get("database_url") or f"sqlite:///{self.data_dir / 'tace.db'}"
            self._engine = make_engine(str(url))
        return self._engine

    def start(self, name: str, *args: str, port: int | None = None) -> subprocess.Popen[bytes]:
        process = spawn(tace_command(*args), self.env(), self.log_dir / f"{name}.log")
        self.processes[name] = process
        if port is not None:
            wait_for_port(port, timeout=60)
        return process

    def start_listener(self) -> None:
        self.start("listener", "listen", port=self.dicom_port)

    def start_hl7(self) -> None:
        self.start("hl7", "hl7", port=self.hl7_port)

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        return self.start(name, "worker", "--name", f"{name}@%h")

    def kill(self, name: str) -> None:
        kill_hard(self.processes.pop(name))

    def stop(self, name: str) -> None:
        stop(self.processes.pop(name))

    def job(self, job_id: int) -> sa.Row:
        with self.engine.connect() as connection:
            return connection.execute(sa.select(Job.__table__).where(Job.__table__.c.id == job_id)).one()

    def jobs(self) -> list[sa.Row]:
        with self.engine.connect() as connection:
            return list(connection.execute(sa.select(Job.__table__).order_by(Job.__table__.c.id)).all())

    def events(self, job_id: int) -> list[tuple[str, str | None]]:
        table = JobEvent.__table__
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(table).where(table.c.job_id == job_id).order_by(table.c.id)
            ).all()
        return [(str(r.state), r.detail) for r in rows]

    def wait_for_state(self, state: str, timeout: float, job_id: int | None = None) -> sa.Row:
        def check() -> sa.Row | None:
            for job in self.jobs():
                if (job_id is None or job.id == job_id) and str(job.state) == state:
                    return job
            return None

        return wait_until(
            check,
            timeout,
            what=f"a job in state {state} (jobs: {[(j.id, str(j.state), j.error) for j in self.jobs()]}; logs in {self.log_dir})",
        )

    def close(self) -> None:
        for process in self.processes.values():
            stop(process)
        self.processes.clear()
        if self._engine is not None:
            self._engine.dispose()
