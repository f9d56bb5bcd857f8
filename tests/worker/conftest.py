from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.gateway import Gateway, quick_settings
from tests.support.orthanc import Orthanc
from tests.support.services import RedisServer


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


@pytest.fixture
def gateway(
    data_dir: Path, tmp_path: Path, redis_server: RedisServer, orthanc: Orthanc, demo_checkpoint: Path
) -> Iterator[Callable[..., Gateway]]:
    made: list[Gateway] = []

    def build(**settings: object) -> Gateway:
        defaults = quick_settings(
            demo_checkpoint, **{"broker_url": redis_server.url, "default_issuer": "HOSP", **settings}
        )
        instance = Gateway(data_dir=data_dir, log_dir=tmp_path, settings=defaults, orthanc=orthanc)
        made.append(instance)
        return instance

    yield build
    for instance in made:
        instance.close()
