"""Every GPU figure of issue 16 in one run, each printed with the device it was measured on.

    python benchmarks/gpu_all.py                      # on a GPU box: about 6-8 minutes
    python benchmarks/gpu_all.py --device cpu --quick # the same steps on a CPU, small and fast

1. `tace bench model`: CLDCA vs ResNet-50, and the production predictor against the
   same run's best ResNet-50 (bf16 channels-last compiled) at its batch size (goal 4).
2. `tace bench pipeline`: stored 100-slice 512x512 series -> SR, per stage, with goal 3's
   CPU-side budgets.
3. `tace up` end to end (embedded defaults: SQLite, no broker server): DCMTK storescu sends
   a 100-slice series; the time from its last C-STORE answered to the SR on disk, for the
   first series after start and then steady.
4. A burst of series sent at once: series/s from the first SR to the last (the worker
   draining its queue) and from the first C-STORE to the last SR.

With --quick the model reads few slices at 64x64 so a CPU finishes in minutes; its
figures say what a CPU does with that reduced model, not what a GPU does.
Needs DCMTK's storescu (/usr/bin/storescu).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402
import torch  # noqa: E402

from tace.app.bench.pipeline import bench_checkpoint  # noqa: E402
from tace.app.synthetic_ct import SeriesSpec, phantom_hu, write_series  # noqa: E402
from tace.db import Job, Prediction, Series, make_engine  # noqa: E402

STORESCU = "/usr/bin/storescu"
SLICES = 100
SIZE = 512


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"CPU {model}, {len(os.sched_getaffinity(0))} cores"


def _tace(args: Sequence[str], label: str, env: dict[str, str]) -> None:
    print(f"\n== {label} on {DEVICE} ==\n$ tace {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "tace", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in result.stdout.splitlines():
        print(f"[{DEVICE}] {line}", flush=True)
    if result.returncode:
        print(f"[{DEVICE}] tace {args[0]} {args[1]} exited {result.returncode}", flush=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _series(work: Path, count: int, first_seed: int) -> list[tuple[str, list[Path]]]:
    """Distinct studies of 100 slices 512x512 (one job each), from one phantom to save time."""
    volume = phantom_hu(SLICES, SIZE, SIZE, seed=1)
    made = []
    for index in range(count):
        spec = SeriesSpec(
            slices=SLICES,
            rows=SIZE,
            columns=SIZE,
            seed=first_seed + index,
            patient_id=f"GPU{first_seed + index}",
        )
        made.append((spec.uids()[1], write_series(spec, work / f"series-{first_seed + index}", volume)))
    return made


def _send(port: int, paths: Sequence[Path]) -> float:
    """storescu the files over one association; the moment its last C-STORE was answered."""
    subprocess.run(
        [STORESCU, "-aec", "TACE", "127.0.0.1", str(port), *map(str, paths)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
    )
    return time.monotonic()


def _wait_for_srs(engine: sa.Engine, series_uids: Sequence[str], timeout: float) -> dict[str, float]:
    """Poll until each series has an SR on disk; the moment each was first seen."""
    series, job, prediction = Series.__table__, Job.__table__, Prediction.__table__
    query = (
        sa.select(series.c.series_instance_uid, prediction.c.sr_path)
        .select_from(
            series.join(job, job.c.series_id == series.c.id).join(prediction, prediction.c.job_id == job.c.id)
        )
        .where(series.c.series_instance_uid.in_(list(series_uids)))
    )
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(series_uids) and time.monotonic() < deadline:
        with engine.connect() as connection:
            for uid, sr_path in connection.execute(query):
                if uid not in seen and sr_path:
                    seen[uid] = time.monotonic()
        time.sleep(0.02)
    missing = set(series_uids) - set(seen)
    if missing:
        raise TimeoutError(f"{len(missing)} series had no SR after {timeout:.0f} s")
    return seen


def _wait_for_log(log: Path, event: str, timeout: float) -> None:
    """The worker logs ``event`` once its warm-up is done; the first series is timed from then on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and event in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"no {event} in {log} after {timeout:.0f} s")


def end_to_end(options: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    print(f"\n== tace up end to end on {DEVICE} ==", flush=True)
    checkpoint = bench_checkpoint(work, model_slices=options.model_slices, image_size=options.image_size)
    singles = _series(work, options.latency_series, 1000)
    burst = _series(work, options.burst, 2000)
    port = _free_port()
    data = work / "data"
    env = {k: v for k, v in env.items() if not k.startswith("TACE_")}
    env.update(
        {
            "TACE_DATA_DIR": str(data),
            "TACE_MODEL_CHECKPOINT": str(checkpoint),
            "TACE_DEVICE": options.device,
            "TACE_REQUIRED_FEATURES": "none",
            "TACE_RELEASE_GRACE_SECONDS": str(options.grace),
            "TACE_SERIES_QUIET_SECONDS": "30",
            "TACE_MIN_FREE_BYTES": "0",
            "TACE_LOG_LEVEL": "info",
            "TACE_DICOM_PORT": str(port),
            "TACE_HL7_PORT": str(_free_port()),
            "TACE_API_PORT": str(_free_port()),
        }
    )
    started = time.monotonic()
    up = subprocess.Popen(
        [sys.executable, "-m", "tace", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=(work / "up.log").open("ab"),
        start_new_session=True,
        text=True,
    )
    try:
        assert up.stdout is not None
        for line in up.stdout:
            if line.strip() == "ready":
                break
        print(f"[{DEVICE}] tace up ready (ports held) in {time.monotonic() - started:.1f} s", flush=True)
        _wait_for_log(data / "logs" / "worker.log", "model.warmed_up", options.timeout)
        print(
            f"[{DEVICE}] worker warmed up (model loaded, compiled when on CUDA, one blank series) "
            f"{time.monotonic() - started:.1f} s after start",
            flush=True,
        )
        engine = make_engine(f"sqlite:///{data / 'tace.db'}")
        latencies = []
        for uid, paths in singles:
            answered = _send(port, paths)
            latencies.append(_wait_for_srs(engine, [uid], options.timeout)[uid] - answered)
        steady = ", ".join(f"{value:.2f}" for value in latencies[1:])
        print(
            f"[{DEVICE}] last C-STORE answered -> SR on disk, {SLICES}-slice series, release grace "
            f"{options.grace:g} s included: first after start {latencies[0]:.2f} s; then {steady} s "
            f"(steady median {statistics.median(latencies[1:] or latencies):.2f} s)",
            flush=True,
        )
        begun = time.monotonic()
        for _, paths in burst:
            _send(port, paths)
        sent = time.monotonic()
        seen = _wait_for_srs(engine, [uid for uid, _ in burst], options.timeout)
        first, last = min(seen.values()), max(seen.values())
        drain = (len(burst) - 1) / (last - first) if len(burst) > 1 and last > first else float("nan")
        print(
            f"[{DEVICE}] burst of {len(burst)} series sent in {sent - begun:.1f} s: "
            f"{drain:.2f} series/s from first SR to last (queue draining), "
            f"{len(burst) / (last - begun):.2f} series/s from first C-STORE to last SR",
            flush=True,
        )
        engine.dispose()
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="small model input and few series (a CPU check)")
    parser.add_argument("--decode-processes", type=int, default=max((os.cpu_count() or 2) - 2, 0))
    options = parser.parse_args()
    quick = options.quick
    options.model_slices = 4 if quick else None
    options.image_size = 64 if quick else 224
    options.latency_series = 3
    options.burst = 3 if quick else 30
    options.grace = 1.0
    options.timeout = 600.0
    global DEVICE
    DEVICE = device_name(options.device)
    print(f"device: {DEVICE}; torch {torch.__version__}; python {platform.python_version()}", flush=True)
    env = dict(os.environ)
    env.setdefault("TACE_DATA_DIR", tempfile.mkdtemp(prefix="tace-gpu-all-home-"))
    model = (
        ["--slices", "8", "--image-size", "64", "--seconds", "1"]
        if quick
        else ["--batches", "64", "--seconds", "2"]
    )
    _tace(["bench", "model", "--device", options.device, *model], "model", env)
    pipeline = ["--series", "2", "--model-slices", "4"] if quick else ["--series", "8"]
    processes = ["--decode-processes", str(options.decode_processes)] if not quick else []
    _tace(["bench", "pipeline", "--device", options.device, *pipeline, *processes], "pipeline", env)
    work = Path(tempfile.mkdtemp(prefix="tace-gpu-all-"))
    try:
        end_to_end(options, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


DEVICE = "unknown"

if __name__ == "__main__":
    sys.exit(main())
