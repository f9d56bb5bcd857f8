"""Metric files shared by processes that have the same PID on different hosts (containers)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

# A service as it runs in a container: PID 1, its own host name, the shared data volume.
CONTAINER_SERVICE = textwrap.dedent(
    """
    import os, socket, sys
    from pathlib import Path

    socket.gethostname = lambda: sys.argv[2]
    os.getpid = lambda: 1
    from tace import metrics

    metrics.init(Path(sys.argv[1]))
    counter = metrics.metric("instances").labels(kind="ct")
    counter.inc()
    print("counted", flush=True)
    sys.stdin.readline()
    counter.inc()
    """
)


def _start(data_dir: Path, host: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process = subprocess.Popen(
        [sys.executable, "-c", CONTAINER_SERVICE, str(data_dir), host],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "counted"
    return process


def _finish(process: subprocess.Popen[str]) -> None:
    process.communicate("go\n", timeout=60)
    assert process.returncode == 0


def test_services_that_are_all_pid_1_keep_their_own_counts(tmp_path: Path) -> None:
    listener = _start(tmp_path, "listener-container")
    feed = _start(tmp_path, "hl7-container")
    _finish(listener)
    _finish(feed)

    folder = tmp_path / "metrics"
    assert sorted(p.name for p in folder.iterdir()) == [
        "counter_hl7-container-1.db",
        "counter_listener-container-1.db",
    ]
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    assert registry.get_sample_value("tace_instances_received_total", {"kind": "ct"}) == 4.0
