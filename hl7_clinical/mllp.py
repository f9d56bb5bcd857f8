"""An asyncio MLLP server: framed HL7 in, one ACK out per message, many per connection.

Framing is <VT> message <FS><CR>. Bytes outside a frame, a frame larger than
the limit, a connection that stays silent past the idle timeout: each ends that
connection (after a NAK when there is a message to answer) and never touches
the others. Storing a message runs in a worker thread so the event loop keeps
serving every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hl7_clinical.ack import END_BLOCK, START_BLOCK, build_ack, frame
from hl7_clinical.oru import MessageError, read_header
from tace.logging import get_logger

log = get_logger("tace.hl7.mllp")

Handler = Callable[[bytes], tuple[str, object]]
_SKIPPABLE = b"\r\n\t "


@dataclass(frozen=True)
class MllpLimits:
    max_message_bytes: int = 1024 * 1024
    idle_timeout_seconds: float = 300.0


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
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), self._limits.idle_timeout_seconds)
                except TimeoutError:
                    log.info("hl7.idle_timeout", peer=str(peer))
                    return
                if not chunk:
                    return
                buffer += chunk
                if not await self._drain_frames(buffer, writer, peer):
                    return
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("hl7.connection_lost", peer=str(peer), error=exc.__class__.__name__)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    async def _drain_frames(self, buffer: bytearray, writer: asyncio.StreamWriter, peer: object) -> bool:
        """Answer every complete frame in ``buffer``; False when the connection must close."""
        while buffer:
            start = 0
            while start < len(buffer) and buffer[start] in _SKIPPABLE:
                start += 1
            if start:
                del buffer[:start]
            if not buffer:
                return True
            if buffer[0] != START_BLOCK[0]:
                log.warning("hl7.unframed_data", peer=str(peer), bytes=len(buffer))
                return False
            end = buffer.find(END_BLOCK)
            if end == -1:
                if len(buffer) > self._limits.max_message_bytes + 1:
                    await self._refuse_oversized(bytes(buffer[1:]), writer, peer)
                    return False
                return True
            message = bytes(buffer[1:end])
            del buffer[: end + len(END_BLOCK)]
            if len(message) > self._limits.max_message_bytes:
                await self._refuse_oversized(message, writer, peer)
                return False
            loop = asyncio.get_running_loop()
            ack, _ = await loop.run_in_executor(self._executor, self._handler, message)
            writer.write(frame(ack))
            await writer.drain()
        return True

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
