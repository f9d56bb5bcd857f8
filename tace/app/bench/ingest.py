"""`tace bench ingest`: our listener against DCMTK storescp, same client, same data.

The same synthetic 512x512 series go to both receivers with DCMTK storescu
(``TCP_NODELAY=1``; storescp with ``--max-pdu 131072``, ours with the same
maximum PDU). storescp only writes files; ours fsyncs, renames, commits rows and
then answers, so the ratio is the price of durability plus Python.
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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tace.app.synthetic_ct import SeriesSpec, write_series

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
def _storescp(work: Path, port: int) -> Iterator[None]:
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
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


@contextmanager
def _ours(work: Path, port: int, processes: int, database_url: str | None) -> Iterator[None]:
    data = work / "tace-data"
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TACE_")}
    env.update(
        {
            "TACE_DATA_DIR": str(data),
            "TACE_DICOM_PORT": str(port),
            "TACE_DICOM_MAX_PDU": str(PDU),
            "TACE_LISTENER_PROCESSES": str(processes),
            "TACE_LOG_LEVEL": "warning",
            "TACE_MIN_FREE_BYTES": "0",
            "TACE_SERIES_QUIET_SECONDS": "3600",
            "TACE_DICOM_MAX_ASSOCIATIONS": "64",
        }
    )
    if database_url:
        env["TACE_DATABASE_URL"] = database_url
    process = subprocess.Popen(
        [sys.executable, "-m", "tace", "listen"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(work / "listener.log").open("ab"),
        start_new_session=True,
    )
    try:
        _wait_port(port)
        time.sleep(0.5 * processes)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _measure(
    start: Callable[[Path, int], AbstractContextManager[None]],
    folders: Sequence[Path],
    rounds: int,
    work: Path,
) -> Rate:
    instances = sum(len(list(f.glob("*.dcm"))) for f in folders)
    megabytes = sum(p.stat().st_size for f in folders for p in f.glob("*.dcm")) / 1e6
    times = []
    for round_index in range(rounds):
        round_dir = work / f"round-{round_index}"
        port = _free_port()
        with start(round_dir, port):
            times.append(_send(port, folders))
        shutil.rmtree(round_dir, ignore_errors=True)
    best = statistics.median(times)
    return Rate(instances / best, megabytes / best)


def run_ingest_benchmark(
    *,
    slices: int = 100,
    parallel: Sequence[int] = (1, 2, 4),
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
            f"{slices}-slice 512x512 CT series ({size_mb:.1f} MB), storescu with TCP_NODELAY=1, max PDU {PDU}"
        )
        yield f"{'receiver':<34} {'assocs':>6} {'inst/s':>8} {'MB/s':>7} {'ratio':>6}"
        total = len(parallel) * (1 + len(processes))
        done = 0
        for count in parallel:
            chosen = folders[:count]
            reference = _measure(_storescp, chosen, rounds, work)
            done += 1
            if progress:
                progress("measuring", done, total)
            yield (
                f"{'DCMTK storescp (no fsync)':<34} {count:>6} {reference.instances_per_second:>8.1f} "
                f"{reference.megabytes_per_second:>7.1f} {1.0:>6.2f}"
            )
            for procs in processes:
                ours = _measure(
                    partial(_ours, processes=procs, database_url=database_url), chosen, rounds, work
                )
                done += 1
                if progress:
                    progress("measuring", done, total)
                label = f"tace listen x{procs} (fsync+commit)"
                ratio = ours.instances_per_second / reference.instances_per_second
                yield (
                    f"{label:<34} {count:>6} {ours.instances_per_second:>8.1f} "
                    f"{ours.megabytes_per_second:>7.1f} {ratio:>6.2f}"
                )
