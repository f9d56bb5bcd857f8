"""`tace listen` as a real child process, and DICOM senders that talk to it."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.presentation import build_context
from sqlalchemy.engine import Engine

from tace.db import make_engine
from tests.support.processes import kill_hard, spawn, stop, tace_command, tace_env
from tests.support.services import free_port, wait_for_port

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"


@dataclass
class ListenerProcess:
    data_dir: Path
    log: Path
    settings: dict[str, object]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _engine: Engine | None = None

    @property
    def database_url(self) -> str:
        return str(self.settings.get("database_url") or f"sqlite:///{self.data_dir / 'tace.db'}")

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.database_url)
        return self._engine

    def start(self, *, wait: bool = True) -> ListenerProcess:
        env = tace_env(data_dir=self.data_dir, dicom_port=self.port, **self.settings)
        self.process = spawn(tace_command("listen"), env, self.log)
        if wait:
            wait_for_port(self.port, timeout=30)
        return self

    def stop(self) -> int:
        assert self.process is not None
        code = stop(self.process)
        self.process = None
        return code

    def kill(self) -> None:
        assert self.process is not None
        kill_hard(self.process)
        self.process = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def close(self) -> None:
        if self.process is not None:
            self.stop()
        if self._engine is not None:
            self._engine.dispose()


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    calling: str = "STORESCU",
    called: str = "TACE",
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu (not pynetdicom's app of the same name), Nagle off as in production."""
    return subprocess.run(
        [STORESCU, "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port), *map(str, files)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def scu(calling: str = "PYSCU", contexts: Sequence[str] = ()) -> AE:
    ae = AE(ae_title=calling)
    for uid in contexts:
        ae.add_requested_context(uid)
    return ae


def send_datasets(
    port: int, datasets: Sequence[Dataset | Path], *, calling: str = "PYSCU"
) -> list[Dataset | None]:
    """One association; the C-STORE status dataset of each send (None if the association died)."""
    ae = AE(ae_title=calling)
    classes = set()
    for item in datasets:
        if isinstance(item, Path):
            import pydicom

            meta = pydicom.dcmread(item, stop_before_pixels=True).file_meta
            classes.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        else:
            classes.add((str(item.SOPClassUID), str(item.file_meta.TransferSyntaxUID)))
    for sop_class, syntax in sorted(classes):
        ae.requested_contexts = [*ae.requested_contexts, build_context(sop_class, syntax)]
    assoc = ae.associate("127.0.0.1", port, ae_title="TACE")
    assert assoc.is_established, "association refused"
    statuses: list[Dataset | None] = []
    for item in datasets:
        if not assoc.is_established:
            statuses.append(None)
            continue
        statuses.append(assoc.send_c_store(item) or None)
    if assoc.is_established:
        assoc.release()
    return statuses
