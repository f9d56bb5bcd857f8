"""`tace worker` warms the model up before it takes a job, so the first series is as fast as the rest."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.processes import start_until_ready_then_stop, tace_command, tace_env


def test_the_worker_runs_one_blank_series_before_it_is_ready(
    data_dir: Path, tmp_path: Path, demo_checkpoint: Path
) -> None:
    log = tmp_path / "worker.log"
    env = tace_env(
        data_dir=data_dir, log_format="json", model_checkpoint=demo_checkpoint, device="cpu", compile="off"
    )
    assert start_until_ready_then_stop(tace_command("worker", "--queues", "infer"), env, log, 180) == 0
    events = [json.loads(line)["event"] for line in log.read_text().splitlines() if line.strip()]
    warmed = [index for index, event in enumerate(events) if event == "model.warmed_up"]
    ready = next(index for index, event in enumerate(events) if "ready." in event)
    assert len(warmed) == 1 and warmed[0] < ready, events
    assert events.index("model.loaded") < warmed[0]
