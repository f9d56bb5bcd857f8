"""A private PostgreSQL server that a test may stop and start (the shared one must stay up)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.services import free_port, missing, wait_for_port


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresCluster:
    root: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def init(self) -> PostgresCluster:
        binaries = _binaries()
        if binaries is None or (shutil.which("runuser") is None and os.geteuid() == 0):
            missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        assert binaries is not None
        self._bin = binaries
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        result = self._run(
            str(binaries / "initdb"), "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres"
        )
        if result.returncode != 0:
            missing(f"initdb failed: {result.stderr.strip()[:300]}")
        return self

    def start(self) -> None:
        result = self._run(
            str(self._bin / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on",
            "start",
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed: {result.stderr} {(self.root / 'server.log').read_text()[-500:]}"
            )
        wait_for_port(self.port)

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", mode, "-w", "stop")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (self.root / "data" / "postmaster.pid").exists():
            time.sleep(0.1)
