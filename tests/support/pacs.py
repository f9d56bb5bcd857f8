"""A scriptable PACS (pynetdicom SCP): it answers C-STORE with the statuses a test plans.

Orthanc always accepts; testing the send stage's retry classes needs a peer that
refuses with 0xA700 or 0xC000 on demand, or answers slowly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage

from tests.support.services import free_port


@dataclass
class ScriptedPacs:
    plan: list[int] = field(default_factory=list)
    """Statuses for the next C-STOREs, in order; afterwards every C-STORE succeeds."""
    delay_seconds: float = 0.0
    port: int = field(default_factory=free_port)
    received: list[tuple[str, int]] = field(default_factory=list)
    stored: dict[str, Dataset] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: object | None = None

    @property
    def destination(self) -> str:
        return f"PACS@127.0.0.1:{self.port}"

    def _store(self, event: evt.Event) -> Dataset:
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        with self._lock:
            status = self.plan.pop(0) if self.plan else 0x0000
            uid = str(event.request.AffectedSOPInstanceUID)
            self.received.append((uid, status))
            if status == 0x0000:
                self.stored[uid] = event.dataset
        answer = Dataset()
        answer.Status = status
        if status:
            answer.ErrorComment = f"scripted refusal 0x{status:04X}"
        return answer

    def start(self) -> ScriptedPacs:
        ae = AE(ae_title="PACS")
        ae.add_supported_context(Comprehensive3DSRStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
            self._server = None
