"""An asyncio MLLP server: framed HL7 in, one ACK out per message, many per connection.

Framing is <VT> message <FS><CR>, and one frame holds one message. Bytes
outside a frame, a frame larger than the limit, a connection that stays silent
past the idle timeout, or one that takes longer than the message timeout from
the first byte after its last ACK to the end of the next frame (a slow drip
before the start block, inside the message or before the end block): each ends
that connection (after a NAK when there is a message to answer) and never
touches the others. Storing a message runs in a worker thread so the event loop
keeps serving every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hl7_clinical.ack import END_BLOCK, START_BLOCK, Ack, build_ack, frame
from hl7_clinical.oru import MessageError, read_header
from tace.logging import get_logger

log = get_logger("tace.hl7.mllp")

Handler = Callable[[bytes], tuple[Ack, object]]
_SKIPPABLE = b"\r\n\t "


@dataclass(frozen=True)
class MllpLimits:
    max_message_bytes: int = 1024 * 1024
    idle_timeout_seconds: float = 300.0
    message_timeout_seconds: float = 60.0


class MllpServer:
    def __init__(
        self,
        handler: Handler,
        *,
        host: str,
        port: int,
        limits: MllpLimits,
        ssl_context: ssl.SSLContext | None = None,
        workers: int = 1,
        facility: str = "",
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._limits = limits
        self._ssl = ssl_context
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hl7-store")
        self._facility = facility
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection,
            self._host,
            self._port,
            ssl=self._ssl,
            reuse_address=True,
            limit=self._limits.max_message_bytes + 16,
        )
        log.info("hl7.listening", port=self._port, tls=self._ssl is not None)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._executor.shutdown(wait=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        buffer = bytearray()
        message_started: float | None = None
        try:
            while True:
                timeout = self._limits.idle_timeout_seconds
                if message_started is not None:
                    remaining = message_started + self._limits.message_timeout_seconds - time.monotonic()
                    timeout = min(timeout, max(remaining, 0.0))
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), timeout)
                except TimeoutError:
                    event = "hl7.idle_timeout" if message_started is None else "hl7.message_timeout"
                    log.info(event, peer=str(peer), pending_bytes=len(buffer))
                    return
                if not chunk:
                    return
                if message_started is None:
                    message_started = time.monotonic()
                buffer += chunk
                keep_open, answered = await self._drain_frames(buffer, writer, peer)
                if not keep_open:
                    return
                if answered:
                    message_started = time.monotonic() if buffer else None
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("hl7.connection_lost", peer=str(peer), error=exc.__class__.__name__)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    async def _drain_frames(
        self, buffer: bytearray, writer: asyncio.StreamWriter, peer: object
    ) -> tuple[bool, int]:
        """Answer every complete frame in ``buffer``: (keep the connection open, frames answered)."""
        answered = 0
        while buffer:
            start = 0
            while start < len(buffer) and buffer[start] in _SKIPPABLE:
                start += 1
            if start:
                del buffer[:start]
            if not buffer:
                break
            if buffer[0] != START_BLOCK[0]:
                log.warning("hl7.unframed_data", peer=str(peer), bytes=len(buffer))
                return False, answered
            end = buffer.find(END_BLOCK)
            if end == -1:
                if len(buffer) > self._limits.max_message_bytes + 1:
                    await self._refuse_oversized(bytes(buffer[1:]), writer, peer)
                    return False, answered
                break
            message = bytes(buffer[1:end])
            del buffer[: end + len(END_BLOCK)]
            if len(message) > self._limits.max_message_bytes:
                await self._refuse_oversized(message, writer, peer)
                return False, answered
            loop = asyncio.get_running_loop()
            ack, _ = await loop.run_in_executor(self._executor, self._handler, message)
            writer.write(frame(ack))
            await writer.drain()
            answered += 1
        return True, answered

    async def _refuse_oversized(
        self, start_of_message: bytes, writer: asyncio.StreamWriter, peer: object
    ) -> None:
        log.warning("hl7.oversized", peer=str(peer), limit=self._limits.max_message_bytes)
        try:
            header = read_header(start_of_message)
        except MessageError:
            header = None
        text = f"message larger than {self._limits.max_message_bytes} bytes"
        writer.write(frame(build_ack(header, "AR", text, hl7_error="207", facility=self._facility)))
        await writer.drain()
