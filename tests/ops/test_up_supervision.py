"""`tace up` as a supervisor: ports taken, children that keep dying, and its own death by SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tace.app import ports
from tests.support.processes import REPO_ROOT, tace_command, tace_env
from tests.support.services import free_port, wait_until
from tests.support.stow import TOKEN, multipart
from tests.support.up import Up

pytestmark = pytest.mark.slow


def _children(pid: int) -> dict[str, int]:
    """The services `tace up` runs now, by command (listen, hl7, worker, api)."""
    found = {}
    for child in ports.process_tree(pid) - {pid}:
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tace" in argv and argv.index(b"tace") + 1 < len(argv):
            found[argv[argv.index(b"tace") + 1].decode()] = child
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _free(port: int) -> bool:
    try:
        ports.ensure_free("0.0.0.0", port, "TACE_TEST")
    except ports.PortUnavailable:
        return False
    return True


def test_up_stops_with_one_line_naming_the_setting_when_a_port_is_taken(
    data_dir: Path, demo_checkpoint: Path
) -> None:
    with closing(socket.create_server(("127.0.0.1", 0))) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            tace_command("up"),
            env=tace_env(
                data_dir=data_dir,
                model_checkpoint=demo_checkpoint,
                dicom_port=free_port(),
                hl7_port=port,
                api_port=free_port(),
            ),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"tace: error: port {port} is already in use by another program (TACE_HL7_PORT): "
        "stop that program or set TACE_HL7_PORT to a free port"
    )
    assert "ready" not in result.stdout
    assert not (data_dir / "logs").exists(), "services were started although a port was taken"


def test_readiness_counts_only_sockets_of_our_own_process_tree(tmp_path: Path) -> None:
    with closing(socket.create_server(("127.0.0.1", 0))) as ours:
        port = ours.getsockname()[1]
        assert ports.holders(port, os.getpid()) == (True, False)
        stranger = subprocess.Popen(["sleep", "60"])
        try:
            assert ports.holders(port, stranger.pid) == (False, True)
        finally:
            stranger.kill()
            stranger.wait()
    assert ports.holders(port, os.getpid()) == (False, False)


def test_a_child_that_keeps_dying_is_restarted_with_backoff_then_up_gives_up(
    start_up: Callable[..., Up],
) -> None:
    up = start_up()
    assert up.process is not None
    killed: list[int] = []
    deadline = time.monotonic() + 240
    while up.process.poll() is None and time.monotonic() < deadline:
        api = _children(up.process.pid).get("api")
        if api is not None and api not in killed:
            os.kill(api, signal.SIGKILL)
            killed.append(api)
        time.sleep(0.1)
    code = up.process.wait(timeout=60)
    output = up.output.read_text()
    assert code == 1, output[-3000:]
    assert len(killed) == 5
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    died = [e for e in events if e["event"] == "service.died"]
    assert [(e["service"], e["restart_in_seconds"], e["failures"]) for e in died] == [
        ("api", 1.0, 1),
        ("api", 2.0, 2),
        ("api", 4.0, 3),
        ("api", 8.0, 4),
    ]
    assert all(e["exit"] == "signal SIGKILL" for e in died)
    last = output.strip().splitlines()[-1]
    assert last.startswith(
        "tace: error: api failed 5 times in a row within 60 s of starting; gave up. "
        "Last: api stopped with signal SIGKILL"
    ), last
    assert "service.stopped" in output, "the other services were not stopped in order"
    for port in (up.dicom_port, up.hl7_port, up.api_port):
        assert _free(port)
    up.process = None


def test_children_stop_and_free_the_ports_when_up_is_killed(start_up: Callable[..., Up]) -> None:
    up = start_up()
    assert up.process is not None
    children = _children(up.process.pid)
    assert set(children) == {"listen", "hl7", "worker", "api"}
    os.kill(up.process.pid, signal.SIGKILL)
    up.process.wait(timeout=30)
    up.process = None
    wait_until(
        lambda: all(_gone(pid) for pid in children.values()),
        120,
        interval=0.5,
        what=f"the children {children} to stop after their supervisor was killed",
    )
    for port in (up.dicom_port, up.hl7_port, up.api_port):
        assert _free(port)


def test_up_with_a_stow_token_starts_stow_rs_which_stores_what_it_is_sent(
    start_up: Callable[..., Up], ct_series: Callable[..., list[Path]]
) -> None:
    port = free_port()
    up = start_up(stow_token=TOKEN, stow_port=port)
    assert up.process is not None
    assert set(_children(up.process.pid)) == {"listen", "hl7", "worker", "api", "stow"}
    (file,) = ct_series(slices=1, rows=64, columns=64)
    body, content_type = multipart([("application/dicom", file.read_bytes())])
    response = httpx.post(
        f"http://127.0.0.1:{port}/dicomweb/studies",
        content=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type},
        timeout=30,
    )
    assert response.status_code == 200
    assert up.interrupt() == 0
    assert _free(port)
