"""Sustained load on `tace up` with Redis and PostgreSQL: throughput, latency, memory, lost work.

    python benchmarks/bench_load.py [--senders 4] [--minutes 3] [--slices 24] [--size 128]

N senders (DCMTK storescu, TCP_NODELAY=1) each send a fresh synthetic series over
and over for M minutes. The gateway runs as users run it (`tace up`), on Redis and
PostgreSQL. Reported: instances/s received, series/s turned into SRs, latency from
the last instance received to the SR stored (p50/p95), the resident memory of each
service over time, and whether any acknowledged instance or completed series was
lost. Needs DCMTK, a Redis and a PostgreSQL (URLs below).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
import redis
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.workflows import DemoRecipe, make_demo_checkpoint  # noqa: E402
from tace.app.synthetic_ct import SeriesSpec, write_series  # noqa: E402
from tace.db import Instance, Job, Prediction, Series, make_engine  # noqa: E402


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _children(pid: int) -> dict[str, int]:
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            name = next(
                (part.decode() for part in cmdline if part.decode() in ("listen", "hl7", "worker", "api")),
                None,
            )
            if name:
                found[name] = int(child)
    return found


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tace-load-"))
    database = f"tace_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(options.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    database_url = options.postgres.rsplit("/", 1)[0] + f"/{database}"
    redis.Redis.from_url(options.redis).flushdb()
    checkpoint = work / "demo.safetensors"
    print("training a small demo checkpoint...", flush=True)
    make_demo_checkpoint(
        checkpoint, recipe=DemoRecipe(cases=32, slices=6, size=64, image_size=64, max_slices=16, epochs=3)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TACE_")}
    env.update(
        {
            "TACE_DATA_DIR": str(work / "data"),
            "TACE_DATABASE_URL": database_url,
            "TACE_BROKER_URL": options.redis,
            "TACE_MODEL_CHECKPOINT": str(checkpoint),
            "TACE_REQUIRED_FEATURES": "none",
            "TACE_RELEASE_GRACE_SECONDS": "1",
            "TACE_MIN_FREE_BYTES": "0",
            "TACE_MIN_SLICES": "8",
            "TACE_LOG_LEVEL": "warning",
            "TACE_DEVICE": "cpu",
            "TACE_DICOM_PORT": "11612",
            "TACE_HL7_PORT": "12612",
            "TACE_API_PORT": "18612",
            "TACE_DICOM_MAX_ASSOCIATIONS": "64",
        }
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "tace", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=(work / "up.log").open("ab"),
        start_new_session=True,
        text=True,
    )
    assert up.stdout is not None
    for line in up.stdout:
        if line.strip() == "ready":
            break
    print(f"gateway ready; {options.senders} senders for {options.minutes} min", flush=True)

    acknowledged_instances = 0
    sent_series: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + options.minutes * 60
    sender_errors: list[str] = []

    def sender(index: int) -> None:
        nonlocal acknowledged_instances
        round_number = 0
        while time.monotonic() < deadline:
            folder = work / f"s{index}-{round_number}"
            seed = index * 100_000 + round_number
            spec = SeriesSpec(
                slices=options.slices,
                rows=options.size,
                columns=options.size,
                seed=seed,
                series_number=round_number + 1,
                patient_id=f"LOAD{index:02d}",
            )
            paths = write_series(spec, folder)
            result = subprocess.run(
                ["/usr/bin/storescu", "-aec", "TACE", "127.0.0.1", "11612", *map(str, paths)],
                env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
            )
            if result.returncode == 0:
                with lock:
                    acknowledged_instances += len(paths)
                    sent_series.append(spec.uids()[1])
            else:
                output = (result.stderr + result.stdout).strip().splitlines()
                sender_errors.append(f"storescu exit {result.returncode}: {' | '.join(output[-3:])}")
            shutil.rmtree(folder, ignore_errors=True)
            round_number += 1

    memory: dict[str, list[float]] = {}
    started = time.monotonic()
    threads = [threading.Thread(target=sender, args=(n,)) for n in range(options.senders)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for name, pid in _children(up.pid).items():
            rss = _rss_mb(pid)
            if rss is not None:
                memory.setdefault(name, []).append(rss)
        time.sleep(5)
    sending_seconds = time.monotonic() - started

    engine = make_engine(database_url)
    job, series, prediction = Job.__table__, Series.__table__, Prediction.__table__
    wait_until = time.monotonic() + 300
    while time.monotonic() < wait_until:
        with engine.connect() as connection:
            done = connection.execute(
                sa.select(sa.func.count()).select_from(job).where(job.c.state.in_(["sent", "failed"]))
            ).scalar_one()
        if done >= len(sent_series):
            break
        time.sleep(2)
    finished = time.monotonic() - started
    with engine.connect() as connection:
        instances = connection.execute(
            sa.select(sa.func.count()).select_from(Instance.__table__)
        ).scalar_one()
        rows = connection.execute(
            sa.select(
                series.c.series_instance_uid,
                series.c.last_received_at,
                job.c.state,
                job.c.finished_at,
                prediction.c.created_at,
            )
            .select_from(
                series.join(job, job.c.series_id == series.c.id).outerjoin(
                    prediction, prediction.c.job_id == job.c.id
                )
            )
            .where(job.c.state != "superseded")
        ).all()
    os.killpg(up.pid, signal.SIGTERM)
    up.wait(timeout=180)

    sent = [r for r in rows if str(r.state) == "sent"]
    latencies = [(r.finished_at - r.last_received_at).total_seconds() for r in sent if r.finished_at]
    lost_series = set(sent_series) - {r.series_instance_uid for r in sent}
    print()
    print(
        f"senders {options.senders}, {options.minutes} min, series of {options.slices} x {options.size}^2, "
        f"Redis + PostgreSQL, CPU worker"
    )
    print(
        f"instances acknowledged {acknowledged_instances}, stored {instances}: "
        f"{acknowledged_instances / sending_seconds:.1f} instances/s"
    )
    print(
        f"series sent {len(sent_series)}, SRs stored {len(sent)}: {len(sent) / finished:.2f} series/s to SR"
    )
    if latencies:
        print(
            f"last instance -> SR stored: p50 {statistics.median(latencies):.1f} s, "
            f"p95 {_percentile(latencies, 0.95):.1f} s (queueing included: the CPU worker is the bottleneck)"
        )
    for name, samples in sorted(memory.items()):
        warm = samples[len(samples) // 4]
        growth = (samples[-1] - warm) / warm * 100 if len(samples) > 1 else 0.0
        print(
            f"memory {name:<7} first {samples[0]:7.1f} MB  after warm-up {warm:7.1f} MB  "
            f"last {samples[-1]:7.1f} MB  max {max(samples):7.1f} MB  ({growth:+.1f}% since warm-up)"
        )
    print(
        f"lost: {len(lost_series)} series, {max(acknowledged_instances - instances, 0)} instances; "
        f"sender errors {len(sender_errors)}"
    )
    for error in sender_errors[:3]:
        print(f"  sender error: {error}")
    with psycopg.connect(options.postgres, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    shutil.rmtree(work, ignore_errors=True)
    return 0 if not lost_series and instances >= acknowledged_instances else 1


if __name__ == "__main__":
    sys.exit(main())
