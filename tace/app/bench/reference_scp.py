"""The reference `tace bench ingest` is judged by: a bare pynetdicom C-STORE SCP with durable writes.

Each received dataset is written as received (``event.encoded_dataset()``, never
decoded) to ``<out>/<SOP Instance UID>.dcm`` and fsynced before the handler
answers 0x0000. No parsing, no checks, no database: the least a receiver that
keeps what it acknowledges can do with pynetdicom. It gets the same transport
tuning as ``tace listen`` (maximum PDU, DUL poll interval), so the ratio prices
the listener's own per-instance work, not a tuning difference.

python -m tace.app.bench.reference_scp PORT OUT_DIR [--max-pdu N]
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE

from listener import pynetdicom_internals as internals
from listener.server import DUL_POLL_SECONDS


def _store(event: evt.Event, out: Path) -> int:
    request = event.request
    assert isinstance(request, C_STORE), "bound to EVT_C_STORE only"
    path = out / f"{request.AffectedSOPInstanceUID}.dcm"
    with path.open("wb") as handle:
        handle.write(event.encoded_dataset())
        handle.flush()
        os.fsync(handle.fileno())
    return 0x0000


def _tune(event: evt.Event) -> None:
    internals.set_poll_delay(event.assoc, DUL_POLL_SECONDS)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-pdu", type=int, default=131072)
    options = parser.parse_args(args)
    options.out.mkdir(parents=True, exist_ok=True)
    ae = AE(ae_title="TACE")
    ae.maximum_pdu_size = options.max_pdu
    ae.maximum_associations = 64
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", options.port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, _store, [options.out]), (evt.EVT_CONN_OPEN, _tune)],
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    assert server is not None
    server.shutdown()


if __name__ == "__main__":
    main()
