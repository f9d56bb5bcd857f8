"""The outcome of one attempt to deliver one object, whatever the protocol."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SendResult:
    """``transient`` failures are retried with backoff; others fail the job with ``detail``.

    ``status`` is the DICOM status of the object (C-STORE response status, or the
    STOW-RS FailureReason/WarningReason) when the peer gave one.
    """

    delivered: bool
    transient: bool
    status: int | None
    detail: str
