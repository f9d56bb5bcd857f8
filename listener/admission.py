"""Who may hold what: connections still negotiating, and association slots.

A connection is checked against the allowed peer networks as soon as it is
accepted, before its A-ASSOCIATE-RQ is read. Until its request has passed the
AE-title checks it only holds a *pending* place, bounded in total and per peer
host, and bounded in time by the negotiation deadline (:mod:`listener.pdu_reader`).
Association slots (``dicom_max_associations``) go only to requests that passed
every check, so peers that connect and dawdle can never crowd out the senders
the gateway serves.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tace.logging import get_logger
from tace.metrics import metric

log = get_logger("tace.listener.admission")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Key = tuple[str, int]
REPORT_EVERY_SECONDS = 60.0


def pending_limits(slots: int) -> tuple[int, int]:
    """(total, per host) connections that may be negotiating at once."""
    return max(64, 4 * slots), max(8, slots)


@dataclass
class Admission:
    slots: int
    networks: Sequence[Network] = ()
    on_outside: Callable[[str, int], None] | None = None
    """Records a peer refused for its network (called at most once a minute per host)."""
    _pending: set[Key] = field(default_factory=set)
    _per_host: Counter[str] = field(default_factory=Counter)
    _held: set[Key] = field(default_factory=set)
    _reported: dict[tuple[str, str], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.max_pending, self.max_pending_per_host = pending_limits(self.slots)

    def admit(self, host: str, port: int) -> bool:
        with self._lock:
            if len(self._pending) >= self.max_pending or self._per_host[host] >= self.max_pending_per_host:
                busy = True
            else:
                busy = False
                self._pending.add((host, port))
                self._per_host[host] += 1
        if busy:
            metric("associations").labels(outcome="refused_busy").inc()
            if self._first_in_a_while(host, "busy"):
                log.warning("association.too_many_pending", peer=host, limit=self.max_pending_per_host)
        return not busy

    def refuse(self, host: str, port: int) -> bool:
        if not self.networks or _inside(host, self.networks):
            return False
        metric("associations").labels(outcome="rejected").inc()
        if self.on_outside is not None and self._first_in_a_while(host, "network"):
            self.on_outside(host, port)
        return True

    def abandoned(self, host: str, port: int) -> None:
        self.release(host, port)

    def take_slot(self, host: str, port: int) -> bool:
        """The request passed its checks: move it from pending to a slot, if one is free."""
        with self._lock:
            self._drop_pending((host, port))
            if len(self._held) >= self.slots:
                return False
            self._held.add((host, port))
            return True

    def release(self, host: str, port: int) -> None:
        with self._lock:
            self._drop_pending((host, port))
            self._held.discard((host, port))

    def _drop_pending(self, key: Key) -> None:
        if key in self._pending:
            self._pending.remove(key)
            self._per_host[key[0]] -= 1
            if self._per_host[key[0]] <= 0:
                del self._per_host[key[0]]

    def _first_in_a_while(self, host: str, what: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._reported.get((host, what))
            if last is not None and now - last < REPORT_EVERY_SECONDS:
                return False
            if len(self._reported) > 10_000:
                self._reported.clear()
            self._reported[(host, what)] = now
            return True


def _inside(host: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)
