"""Listening ports: whether one is free, and whether our own processes hold it.

Something answering on a port proves nothing about who answers: `tace up` once
declared itself ready while another program held its ports. Ownership is read
from the kernel instead (Linux ``/proc``): the listening socket's inode must be
one of the file descriptors of our process or of its descendants.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

_LISTEN = "0A"
_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


class PortUnavailable(Exception):
    """A port we must listen on cannot be bound; the message is one line naming the setting."""


def unavailable_message(port: int, setting: str, exc: OSError) -> str | None:
    """The one line for a bind failure an operator can fix, or None for other errors."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} is already in use by another program ({setting}): "
            f"stop that program or set {setting} to a free port"
        )
    if exc.errno == errno.EACCES:
        return f"port {port} needs privileges to listen on ({setting}): set {setting} to a port above 1023"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on port {port} ({setting}): the bind address is not on this machine"
    return None


def bind(host: str, port: int, setting: str) -> socket.socket:
    """A listening socket on (host, port), or :class:`PortUnavailable` with the setting to change."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        message = unavailable_message(port, setting, exc)
        if message is None:
            raise
        raise PortUnavailable(message) from None


def ensure_free(host: str, port: int, setting: str) -> None:
    """Raise :class:`PortUnavailable` unless a server of ours could listen on the port now.

    The probe binds without SO_REUSEPORT, so it also fails where another program
    shares the port through SO_REUSEPORT (our listener sets it for its own processes).
    """
    bind(host, port, setting).close()


def listening_inodes(port: int) -> set[int] | None:
    """Inodes of the sockets listening on ``port``; None where the kernel table cannot be read."""
    found: set[int] = set()
    readable = False
    for table in _TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(fields[9]))
    return found if readable else None


def process_tree(pid: int) -> set[int]:
    """``pid`` and all its descendants (the listener runs several receiving processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    tree, pending = set(), [pid]
    while pending:
        current = pending.pop()
        if current not in tree:
            tree.add(current)
            pending.extend(children.get(current, ()))
    return tree


def socket_inodes(pids: set[int]) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def holders(port: int, pid: int) -> tuple[bool, bool] | None:
    """(our process tree listens on the port, some other process does too), or None without /proc."""
    listening = listening_inodes(port)
    if listening is None:
        return None
    ours = listening & socket_inodes(process_tree(pid))
    return bool(ours), bool(listening - ours)


def answers(port: int) -> bool:
    """Something accepts connections on the loopback port (the check where /proc is missing)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
