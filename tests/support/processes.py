"""Child processes that tests start, watch and kill."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def tace_env(**settings: object) -> dict[str, str]:
    """The current environment minus inherited TACE_ settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TACE_") or k.startswith("TACE_TEST")}
    if "TACE_REQUIRE_SERVICES" in os.environ:
        env["TACE_REQUIRE_SERVICES"] = os.environ["TACE_REQUIRE_SERVICES"]
    for key, value in settings.items():
        env[f"TACE_{key.upper()}"] = str(value)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def spawn(args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(
        list(args),
        env=env,
        cwd=REPO_ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def tace_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tace", *args]


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole process group: nothing gets to clean up."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_hard(process)
    return process.returncode


def start_until_ready_then_stop(
    args: Sequence[str], env: dict[str, str], log: Path, ready_seconds: float
) -> int:
    """Start a Celery worker, wait for its "ready." line, SIGTERM it and return its exit code.

    A worker that will not stop is killed, so a failing test leaves no process behind.
    """
    from tests.support.services import wait_until

    process = spawn(args, env, log)
    try:
        wait_until(
            lambda: "ready." in log.read_text(), ready_seconds, interval=0.5, what="the worker to start"
        )
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
