"""`tace bench hl7`: ORU messages per second over one persistent MLLP connection.

Each message is acknowledged only after it is committed (raw bytes and parsed
observations), so the rate includes the database's durable commit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

START, END = b"\x0b", b"\x1c\r"
PANEL = (
    "OBX|{i}|NM|6690-2^WBC^LN||6.2|10*9/L|||||F|||20260114071500",
    "OBX|{i}|NM|718-7^HGB^LN||128|g/L|||||F|||20260114071500",
    "OBX|{i}|NM|777-3^PLT^LN||143|10*9/L|||||F|||20260114071500",
    "OBX|{i}|NM|1975-2^TBIL^LN||34.2|umol/L|||||F|||20260114072000",
    "OBX|{i}|NM|1751-7^ALB^LN||31|g/L|||||F|||20260114072000",
    "OBX|{i}|NM|6301-6^INR^LN||1.3|{{INR}}|||||F|||20260114072500",
)


def _message(number: int) -> bytes:
    observations = [line.format(i=index + 1) for index, line in enumerate(PANEL)]
    text = "\r".join(
        [
            f"MSH|^~\\&|BENCH|LAB|TACE|HOSP|20260114091500||ORU^R01^ORU_R01|B{number:08d}|P|2.5.1",
            f"PID|1||BENCH{number % 500:05d}^^^HOSP^MR",
            "OBR|1||FL1|24323-8^CMP^LN|||20260114073000",
            *observations,
        ]
    )
    return START + text.encode() + b"\r" + END


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _connect(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"tace hl7 did not listen on {port}") from None
            time.sleep(0.1)


def run_hl7_benchmark(messages: int = 2000, database_url: str | None = None) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tace-bench-hl7-") as tmp:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TACE_")}
        env.update({"TACE_DATA_DIR": tmp, "TACE_HL7_PORT": str(port), "TACE_LOG_LEVEL": "warning"})
        if database_url:
            env["TACE_DATABASE_URL"] = database_url
        server = subprocess.Popen(
            [sys.executable, "-m", "tace", "hl7"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(Path(tmp) / "hl7.log").open("ab"),
            start_new_session=True,
        )
        try:
            sock = _connect(port, time.monotonic() + 30)
            payloads = [_message(n) for n in range(messages)]
            sock.sendall(payloads[0])
            _read_ack(sock)
            start = time.perf_counter()
            for payload in payloads[1:]:
                sock.sendall(payload)
                ack = _read_ack(sock)
                if b"MSA|AA|" not in ack:
                    raise RuntimeError(f"unexpected ACK {ack[:200]!r}")
            elapsed = time.perf_counter() - start
            sock.close()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        backend = (
            "PostgreSQL"
            if database_url and database_url.startswith("postgres")
            else "SQLite (WAL, FULL sync)"
        )
        count = messages - 1
        yield f"{count} ORU^R01 messages of {len(PANEL)} OBX, one connection, ACK after commit, {backend}"
        yield f"{count / elapsed:.0f} messages/s, {elapsed / count * 1000:.2f} ms per message"


def _read_ack(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(END):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed while waiting for an ACK")
        data += chunk
    return data
