"""`tace bench ingest`: our listener against the reference it is judged by, and against DCMTK.

The same synthetic 512x512 series go with DCMTK storescu (``TCP_NODELAY=1``,
one series per association, all associations at once) to three receivers, each
with a maximum PDU of 131072:

* the reference: a bare pynetdicom C-STORE handler that writes and fsyncs the
  raw bytes, no database (:mod:`tace.app.bench.reference_scp`);
* DCMTK storescp, which only writes files (no fsync);
* ``tace listen`` with 1..N receiving processes: it checks, fsyncs, renames,
  commits rows and only then answers.

Every run of ours also shows which processes served: the receivers found in the
process list under ``tace listen``, and the receiver named by each association
record. The last line is the scaling of N processes with N associations over
one process with one association.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import sqlalchemy as sa

from tace.app.synthetic_ct import SeriesSpec, write_series
from tace.db import Association, make_engine, table

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
PDU = 131072


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


@dataclass(frozen=True)
class Rate:
    instances_per_second: float
    megabytes_per_second: float


def _send(port: int, folders: Sequence[Path]) -> float:
    """Wall seconds for one storescu per folder, all at once."""
    env = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}
    start = time.perf_counter()
    senders = [
        subprocess.Popen(
            [STORESCU, "-aec", "TACE", "127.0.0.1", str(port), *sorted(map(str, folder.glob("*.dcm")))],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for folder in folders
    ]
    for sender in senders:
        _, err = sender.communicate(timeout=600)
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace').strip().splitlines()[-1:]}")
    return time.perf_counter() - start


@contextmanager
def _storescp(work: Path, port: int) -> Iterator[Served]:
    out = work / "storescp-out"
    out.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [STORESCP, "--fork", "--max-pdu", str(PDU), "-od", str(out), str(port)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_port(port)
        yield Served()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


@contextmanager
def _reference(work: Path, port: int) -> Iterator[Served]:
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tace.app.bench.reference_scp", str(port), str(work / "out")]
    process = subprocess.Popen(
        [*command, "--max-pdu", str(PDU)],
        stdout=subprocess.DEVNULL,
        stderr=(work / "reference.log").open("ab"),
        start_new_session=True,
    )
    try:
        _wait_port(port)
        yield Served()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@dataclass
class Served:
    """Which processes were up and which served, for one round of ``tace listen``."""

    receivers: list[int] = field(default_factory=list)
    associations: dict[str, int] = field(default_factory=dict)

    @property
    def serving_processes(self) -> int:
        return len(self.associations)

    def describe(self) -> str:
        by = ", ".join(
            f"{name.rsplit(':', 1)[-1]} ({count})" for name, count in sorted(self.associations.items())
        )
        return f"receivers {', '.join(map(str, self.receivers))}; associations served by pid {by}"


def _children(pid: int) -> list[int]:
    """Receivers under ``pid`` in the process list (multiprocessing's resource tracker left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return sorted(found)


@contextmanager
def _ours(work: Path, port: int, processes: int, database_url: str | None) -> Iterator[Served]:
    data = work / "tace-data"
    work.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{data / 'tace.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TACE_")}
    env.update(
        {
            "TACE_DATA_DIR": str(data),
            "TACE_DATABASE_URL": url,
            "TACE_DICOM_PORT": str(port),
            "TACE_DICOM_MAX_PDU": str(PDU),
            "TACE_LISTENER_PROCESSES": str(processes),
            "TACE_LOG_LEVEL": "warning",
            "TACE_LOG_FORMAT": "json",
            "TACE_MIN_FREE_BYTES": "0",
            "TACE_SERIES_QUIET_SECONDS": "3600",
            "TACE_DICOM_MAX_ASSOCIATIONS": "64",
        }
    )
    log = work / "listener.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "tace", "listen"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        start_new_session=True,
    )
    served = Served()
    try:
        _wait_port(port)
        if processes > 1:
            _wait_receivers(process.pid, processes)
        yield served
        served.receivers = _children(process.pid) if processes > 1 else [process.pid]
        served.associations = _served_by(url)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _wait_receivers(pid: int, count: int, timeout: float = 60.0) -> None:
    """Until ``count`` receivers run and have had time to bind (spawned processes import first)."""
    deadline = time.monotonic() + timeout
    while len(_children(pid)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} receivers did not start")
        time.sleep(0.2)
    time.sleep(3.0)


def _served_by(url: str) -> dict[str, int]:
    engine = make_engine(url)
    associations = table(Association)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(associations.c.listener, sa.func.count()).group_by(associations.c.listener)
            ).all()
    finally:
        engine.dispose()
    return {str(listener): int(count) for listener, count in rows}


@dataclass(frozen=True)
class Round:
    rate: float
    served: Served


def _measure(
    start: Callable[[Path, int], AbstractContextManager[Served]],
    folders: Sequence[Path],
    rounds: int,
    work: Path,
) -> tuple[Rate, list[Round]]:
    instances = sum(len(list(f.glob("*.dcm"))) for f in folders)
    megabytes = sum(p.stat().st_size for f in folders for p in f.glob("*.dcm")) / 1e6
    times = []
    measured = []
    for round_index in range(rounds):
        round_dir = work / f"round-{round_index}"
        port = _free_port()
        with start(round_dir, port) as served:
            seconds = _send(port, folders)
        times.append(seconds)
        measured.append(Round(instances / seconds, served))
        shutil.rmtree(round_dir, ignore_errors=True)
    best = statistics.median(times)
    return Rate(instances / best, megabytes / best), measured


def run_ingest_benchmark(
    *,
    slices: int = 100,
    parallel: Sequence[int] = (1, 2),
    processes: Sequence[int] = (1, 2),
    rounds: int = 3,
    database_url: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Iterator[str]:
    for tool in (STORESCU, STORESCP):
        if not Path(tool).exists():
            raise FileNotFoundError(f"{tool} not found: install DCMTK (Debian package dcmtk)")
    with tempfile.TemporaryDirectory(prefix="tace-bench-") as tmp:
        work = Path(tmp)
        folders = []
        for index in range(max(parallel)):
            folder = work / f"series-{index}"
            write_series(SeriesSpec(slices=slices, seed=1000 + index, series_number=100 + index), folder)
            folders.append(folder)
            if progress:
                progress("synthetic series", index + 1, max(parallel))
        size_mb = sum(p.stat().st_size for p in folders[0].glob("*.dcm")) / 1e6
        yield (
            f"{slices}-slice 512x512 CT series ({size_mb:.1f} MB) per association, storescu with "
            f"TCP_NODELAY=1, max PDU {PDU}, {os.cpu_count()} CPUs, median of {rounds} rounds"
        )
        yield f"{'receiver':<38} {'assocs':>6} {'inst/s':>8} {'MB/s':>7} {'vs ref':>7} {'vs DCMTK':>8}"
        total = len(parallel) * (2 + len(processes))
        done = 0
        ours_rates: dict[tuple[int, int], float] = {}
        ours_rounds: dict[tuple[int, int], list[Round]] = {}
        for count in parallel:
            chosen = folders[:count]
            reference, _ = _measure(_reference, chosen, rounds, work)
            dcmtk, _ = _measure(_storescp, chosen, rounds, work)
            done += 2
            if progress:
                progress("measuring", done, total)
            ref, dc = reference.instances_per_second, dcmtk.instances_per_second
            yield _row("pynetdicom write+fsync (reference)", count, reference, ref, dc)
            yield _row("DCMTK storescp (no fsync)", count, dcmtk, ref, dc)
            for procs in processes:
                ours, measured = _measure(
                    partial(_ours, processes=procs, database_url=database_url), chosen, rounds, work
                )
                ours_rates[(procs, count)] = ours.instances_per_second
                ours_rounds[(procs, count)] = measured
                done += 1
                if progress:
                    progress("measuring", done, total)
                yield _row(f"tace listen x{procs} (checks+fsync+commit)", count, ours, ref, dc)
                for index, one in enumerate(measured, start=1):
                    yield f"    round {index}: {one.rate:6.1f} inst/s; {one.served.describe()}"
        yield from _scaling(ours_rates, ours_rounds, processes)


def _scaling(
    rates: dict[tuple[int, int], float], rounds: dict[tuple[int, int], list[Round]], processes: Sequence[int]
) -> Iterator[str]:
    """N processes with N associations over one with one; rounds where the kernel put the
    associations on fewer processes (SO_REUSEPORT hashes each connection) are shown apart."""
    single = rates.get((1, 1))
    for procs in processes:
        if procs == 1 or not single or (procs, procs) not in rates:
            continue
        spread = [r.rate for r in rounds[(procs, procs)] if r.served.serving_processes == procs]
        shared = [r.rate for r in rounds[(procs, procs)] if r.served.serving_processes < procs]
        line = (
            f"scaling: tace listen x{procs} with {procs} associations / x1 with 1 association "
            f"= {rates[(procs, procs)] / single:.2f} (median of all rounds)"
        )
        if spread:
            ratio = statistics.median(spread) / single
            line += f"; {ratio:.2f} in the {len(spread)} round(s) served by {procs}"
        if shared:
            ratio = statistics.median(shared) / single
            line += f"; {ratio:.2f} in the {len(shared)} round(s) on fewer"
        yield line


def _row(label: str, count: int, rate: Rate, reference: float, dcmtk: float) -> str:
    return (
        f"{label:<38} {count:>6} {rate.instances_per_second:>8.1f} {rate.megabytes_per_second:>7.1f} "
        f"{rate.instances_per_second / reference:>7.2f} {rate.instances_per_second / dcmtk:>8.2f}"
    )
