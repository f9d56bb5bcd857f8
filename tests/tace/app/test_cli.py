from __future__ import annotations

import json
import socket
import subprocess
import sys
from contextlib import closing
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
    "series",
    "outcomes",
    "cohort",
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
        ("model", ["demo", "info", "cohort", "performance"]),
        ("outcomes", ["import", "unlinked", "link"]),
        ("cohort", ["export"]),
        ("db", ["upgrade"]),
        ("bench", ["model", "ingest", "hl7", "pipeline"]),
        ("series", ["classify"]),
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


@pytest.mark.parametrize(
    "command,setting",
    [("listen", "TACE_DICOM_PORT"), ("hl7", "TACE_HL7_PORT"), ("api", "TACE_API_PORT")],
)
def test_a_port_in_use_is_one_line_naming_the_setting_and_exit_2(
    data_dir: Path, command: str, setting: str
) -> None:
    with closing(socket.create_server(("127.0.0.1", 0))) as taken:
        port = taken.getsockname()[1]
        result = tace(command, data_dir=data_dir, **{setting.removeprefix("TACE_").lower(): port})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"tace: error: port {port} is already in use by another program ({setting}): "
        f"stop that program or set {setting} to a free port"
    )


def test_commands_that_read_a_gateway_name_the_data_dir_they_did_not_find(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for command in (["jobs", "list"], ["jobs", "show", "1"], ["labs", "show", "P1"]):
        result = subprocess.run(
            [sys.executable, "-m", "tace", *command],
            env={**tace_env(), "HOME": str(home)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, command
        assert result.stderr.strip().startswith(
            f"tace: error: no gateway data in {home / '.local/share/tace'} (TACE_DATA_DIR)"
        ), result.stderr
    assert not home.exists() and list(tmp_path.iterdir()) == [], "a command created a data dir"


def test_the_default_data_dir_does_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    env = {**tace_env(), "HOME": str(tmp_path / "home")}
    made = subprocess.run(
        [sys.executable, "-m", "tace", "db", "upgrade"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = subprocess.run(
        [sys.executable, "-m", "tace", "jobs", "list"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (listed.returncode, listed.stdout.strip()) == (0, "no jobs")
    assert (tmp_path / "home/.local/share/tace/tace.db").is_file()
    assert list(elsewhere.iterdir()) == []


def test_every_command_says_what_it_does_with_the_data_dir() -> None:
    import typer

    from tace.app.cli import app
    from tace.app.cli.base import DATA_DIR_USE

    def leaves(command: object, prefix: str) -> list[str]:
        sub = getattr(command, "commands", None)
        found = [prefix] if prefix and (not sub or getattr(command, "invoke_without_command", False)) else []
        for name, child in (sub or {}).items():
            found += leaves(child, f"{prefix} {name}".strip())
        return found

    assert sorted(leaves(typer.main.get_command(app), "")) == sorted(DATA_DIR_USE)


def test_misspelled_required_features_stop_with_a_suggestion(data_dir: Path) -> None:
    result = tace("jobs", "list", data_dir=data_dir, required_features="albumine,afp")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tace: error: TACE_REQUIRED_FEATURES: 'albumine' is not a feature of the schema cldca-43 "
        "(did you mean albumin?); the names are listed in model/schemas/cldca43.yaml"
    )


def test_unknown_tace_variables_are_warned_about(data_dir: Path, sqlite_engine: Engine) -> None:
    result = tace("jobs", "list", data_dir=data_dir, dicom_portt="104", frobnicate="1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "tace: warning: TACE_DICOM_PORTT is not a setting and is ignored (did you mean TACE_DICOM_PORT?)",
        "tace: warning: TACE_FROBNICATE is not a setting and is ignored",
    ]
