"""`tace hl7`: the MLLP listener wired to storage, with the site's identity rules."""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy.engine import Engine

from hl7_clinical.codes import CodeMap
from hl7_clinical.definitions import Definitions
from hl7_clinical.identity import IdentityRules
from hl7_clinical.intake import Hl7Intake, IntakePolicy
from hl7_clinical.mllp import MllpLimits, MllpServer
from hl7_clinical.outcomes import OutcomeCodes
from tace.logging import get_logger
from tace.outcomes import LinkWindow
from tace.settings import Settings
from tace.tls import server_tls_context

log = get_logger("tace.hl7")


def build_intake(settings: Settings, engine: Engine, definitions: Definitions) -> Hl7Intake:
    policy = IntakePolicy(
        identity=IdentityRules.from_settings(settings),
        refuse_processing_ids=frozenset(settings.hl7_refuse_processing_ids),
        facility=settings.ae_title,
        outcome_codes=OutcomeCodes(settings.outcome_obx_code, settings.outcome_tace_date_obx_code),
        link_window=LinkWindow(settings.outcome_link_min_weeks, settings.outcome_link_max_weeks),
    )
    return Hl7Intake(engine, CodeMap.load(definitions, settings.hl7_local_codes), definitions, policy)


def serve(settings: Settings, engine: Engine, definitions: Definitions, stop: threading.Event) -> None:
    """Run the MLLP server until ``stop`` is set; connections in flight finish their message."""
    intake = build_intake(settings, engine, definitions)
    workers = 1 if engine.dialect.name == "sqlite" else 4
    server = MllpServer(
        intake.handle,
        host=settings.bind_host,
        port=settings.hl7_port,
        limits=MllpLimits(
            settings.hl7_max_message_bytes,
            settings.hl7_idle_timeout_seconds,
            settings.hl7_message_timeout_seconds,
        ),
        ssl_context=server_tls_context(
            settings.hl7_tls_cert,
            settings.hl7_tls_key,
            settings.hl7_tls_ca,
            settings.hl7_tls_require_client_cert,
        ),
        workers=workers,
        facility=settings.ae_title,
    )

    async def run() -> None:
        await server.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, stop.wait)
        await server.stop()

    asyncio.run(run())
    log.info("hl7.stopped")
