from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tace.db import JobState, Stage
from tace.jobs import claim, finish
from tests.factories import add_jobs
from tests.support.processes import tace_env

COMMANDS = [
    "up",
    "listen",
    "hl7",
    "worker",
    "relay",
    "labs",
    "jobs",
    "model",
    "train",
    "evaluate",
    "bench",
    "api",
    "db",
    "predict",
]


def tace(*args: str, **settings: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tace", *args],
        env=tace_env(**settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_every_command() -> None:
    result = tace("--help")
    assert result.returncode == 0
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert set(COMMANDS) <= listed


@pytest.mark.parametrize(
    "group,subcommands",
    [
        ("jobs", ["list", "show", "replay"]),
        ("labs", ["import", "show"]),
        ("model", ["demo", "info", "cohort"]),
        ("db", ["upgrade"]),
        ("bench", ["model", "ingest", "hl7", "pipeline"]),
    ],
)
def test_every_group_and_subcommand_has_help(group: str, subcommands: list[str]) -> None:
    result = tace(group, "--help")
    assert result.returncode == 0
    for sub in subcommands:
        assert sub in result.stdout
        assert tace(group, sub, "--help").returncode == 0


def test_bad_setting_exits_2_with_one_line(data_dir: Path) -> None:
    result = tace("jobs", "list", data_dir=data_dir, dicom_port="0")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tace: error: TACE_DICOM_PORT='0': Input should be greater than or equal to 1"
    )


def test_jobs_list_and_show(data_dir: Path, sqlite_engine: Engine) -> None:
    failed, queued = add_jobs(sqlite_engine, 2)
    lease = claim(sqlite_engine, failed, Stage.infer, stall_seconds=60)
    assert lease is not None
    finish(sqlite_engine, lease, JobState.failed, error="volume: mixed orientation")

    listed = tace("jobs", "list", "--json", data_dir=data_dir)
    assert listed.returncode == 0, listed.stderr
    jobs = {job["id"]: job for job in json.loads(listed.stdout)}
    assert jobs[failed]["state"] == "failed"
    assert jobs[failed]["error"] == "volume: mixed orientation"
    assert jobs[queued]["state"] == "received"

    only_failed = json.loads(tace("jobs", "list", "--state", "failed", "--json", data_dir=data_dir).stdout)
    assert [job["id"] for job in only_failed] == [failed]

    table = tace("jobs", "list", data_dir=data_dir)
    assert "volume: mixed orientation" in table.stdout

    shown = json.loads(tace("jobs", "show", str(failed), "--json", data_dir=data_dir).stdout)
    assert [e["state"] for e in shown["events"]] == ["received", "running", "failed"]
    text = tace("jobs", "show", str(failed), data_dir=data_dir).stdout
    assert "failed" in text and "mixed orientation" in text


def test_jobs_errors(data_dir: Path, sqlite_engine: Engine) -> None:
    missing = tace("jobs", "show", "999", data_dir=data_dir)
    assert (missing.returncode, missing.stderr.strip()) == (1, "tace: error: no job 999")
    bad_state = tace("jobs", "list", "--state", "done", data_dir=data_dir)
    assert bad_state.returncode == 2
    assert "unknown state 'done'" in bad_state.stderr
