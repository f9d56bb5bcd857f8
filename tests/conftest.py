"""Fixtures every suite shares: data dirs, databases, brokers and synthetic CT."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tace.app.synthetic_ct import SeriesSpec, write_series
from tace.db import make_engine
from tace.schema import upgrade_schema
from tace.settings import Settings
from tests.support.listener import ListenerProcess
from tests.support.mllp import Hl7Listener
from tests.support.processes import spawn, stop, tace_command, tace_env
from tests.support.responses import recording
from tests.support.services import (
    RedisServer,
    free_port,
    postgres_database,
    shared_redis_url,
    wait_for_port,
)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings of the machine running the tests must not leak into them."""
    for key in list(os.environ):
        if (
            key.startswith("TACE_")
            and not key.startswith("TACE_TEST")
            and key not in ("TACE_REQUIRE_SERVICES",)
        ):
            monkeypatch.delenv(key)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def make_settings(data_dir: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        overrides.setdefault("data_dir", data_dir)
        return Settings(**overrides)

    return build


@pytest.fixture
def sqlite_engine(data_dir: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{data_dir / 'tace.db'}")
    upgrade_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """The same test on both backends the product supports."""
    name = "sqlite_engine" if request.param == "sqlite" else "postgres_engine"
    return request.getfixturevalue(name)


@pytest.fixture
def redis_url() -> str:
    return shared_redis_url()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), workdir=tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ct_series(tmp_path: Path) -> Callable[..., list[Path]]:
    """Write a synthetic CT series; keyword arguments are SeriesSpec fields."""
    counter = iter(range(1_000_000))

    def write(directory: Path | None = None, **spec: Any) -> list[Path]:
        target = directory or tmp_path / f"series-{next(counter)}"
        return write_series(SeriesSpec(**spec), target)

    return write


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small single-series demo checkpoint made once per test session (32 px, few cases and epochs).

    Single-phase (any one series), so the single-series paths stay tested; `tace
    model demo` makes the three-phase one.
    """
    from model.contract import LEGACY_PHASES
    from model.workflows import DemoRecipe, make_demo_checkpoint

    path = tmp_path_factory.mktemp("checkpoint") / "demo.safetensors"
    recipe = DemoRecipe(
        cases=24, slices=6, size=32, image_size=32, max_slices=8, epochs=3, phases=LEGACY_PHASES
    )
    make_demo_checkpoint(path, recipe=recipe)
    return path


@pytest.fixture(scope="session")
def three_phase_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo checkpoint reading arterial, portal venous and delayed as its three channels."""
    from model.contract import THREE_PHASES
    from model.workflows import DemoRecipe, make_demo_checkpoint

    path = tmp_path_factory.mktemp("checkpoint3") / "three-phase.safetensors"
    recipe = DemoRecipe(
        cases=24, slices=6, size=32, image_size=32, max_slices=8, epochs=3, phases=THREE_PHASES
    )
    make_demo_checkpoint(path, recipe=recipe)
    return path


@pytest.fixture
def start_listener(data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ListenerProcess]]:
    """Start `tace listen` with the given settings (quick completion timers by default)."""
    started: list[ListenerProcess] = []

    def start(**settings: object) -> ListenerProcess:
        settings.setdefault("series_quiet_seconds", 30)
        settings.setdefault("release_grace_seconds", 1)
        settings.setdefault("min_free_bytes", 0)
        settings.setdefault("log_format", "json")
        listener = ListenerProcess(
            data_dir=data_dir, log=tmp_path / f"listener-{len(started)}.log", settings=settings
        )
        started.append(listener)
        return listener.start()

    yield start
    for listener in started:
        listener.close()


@pytest.fixture
def start_hl7(data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Hl7Listener]]:
    processes = []
    engines = []

    def start(**settings: object) -> Hl7Listener:
        port = free_port()
        settings.setdefault("log_format", "json")
        env = tace_env(data_dir=data_dir, hl7_port=port, **settings)
        processes.append(spawn(tace_command("hl7"), env, tmp_path / f"hl7-{len(processes)}.log"))
        wait_for_port(port, timeout=30)
        url = settings.get("database_url") or f"sqlite:///{data_dir / 'tace.db'}"
        engine = make_engine(str(url))
        engines.append(engine)
        return Hl7Listener(port, data_dir, engine)

    yield start
    for process in processes:
        stop(process)
    for engine in engines:
        engine.dispose()


# --- the scan: no identifier from the test data may reach any log or non-phi response ----

TEST_IDENTIFIERS = (
    "SYN0001",
    "Synthetic^Patient",
    "19600101",
    "1960-01-01",
    "MRN4711",
    "Doe^Jane",
    "19570311",
    "1957-03-11",
    "MRN5555",
    "UP0001",
    "UP0002",
    "WEB0001",
    "Web^Patient",
    "MRN884211",
    "MRN6022",
    "Roe^Richard",
    "19490102",
    "NC0001",
    "MRN7033",
    "Poe^Edgar",
    "EXAMPLE1",
    "Example^Patient",
    "19580214",
)
PEER_LOGS = ("orthanc", "server.log")


def product_log_file(factory: pytest.TempPathFactory) -> Path:
    return factory.getbasetemp() / "in-process-product.log"


def api_responses_file(factory: pytest.TempPathFactory) -> Path:
    """Every admin API response and page that tests received without the phi role."""
    return factory.getbasetemp() / "api-responses.log"


@pytest.fixture(scope="session", autouse=True)
def _product_logs_to_a_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Code under test that runs in this process logs, redacted as in production, to a scanned file."""
    from tace.logging import configure_logging

    with product_log_file(tmp_path_factory).open("a") as stream:
        configure_logging("debug", "json", stream=stream)
        yield


@pytest.fixture(scope="session", autouse=True)
def _api_responses_to_a_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with recording(api_responses_file(tmp_path_factory)):
        yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The scan runs once, in the process that reports: under pytest-xdist the workers' temp dirs
    lie under the controller's, and a worker's exit status would not reach the summary."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or hasattr(session.config, "workerinput"):
        return
    base = factory.getbasetemp()
    leaks = []
    for path in base.rglob("*"):
        if (
            path.suffix not in (".log", ".out")
            or any(part in str(path) for part in PEER_LOGS)
            or not path.is_file()
        ):
            continue
        text = path.read_text(errors="replace")
        leaks.extend(f"{path}: {identifier}" for identifier in TEST_IDENTIFIERS if identifier in text)
    if leaks:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            "PATIENT IDENTIFIERS IN LOGS OR NON-PHI API RESPONSES:\n  " + "\n  ".join(leaks[:50]), red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
