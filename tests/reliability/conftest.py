from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pacs import ScriptedPacs
from tests.support.postgres_cluster import PostgresCluster


@pytest.fixture
def private_postgres() -> Iterator[PostgresCluster]:
    """In its own folder under /tmp: the server runs as the postgres user, who cannot enter pytest's."""
    root = Path(tempfile.mkdtemp(prefix="tace-pg-"))
    cluster = PostgresCluster(root).init()
    cluster.start()
    yield cluster
    cluster.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scripted_pacs() -> Iterator[ScriptedPacs]:
    pacs = ScriptedPacs().start()
    yield pacs
    pacs.stop()


@pytest.fixture
def gateway_factory(data_dir: Path, tmp_path: Path, demo_checkpoint: Path) -> Iterator:
    from tests.support.gateway import Gateway, quick_settings

    made: list[Gateway] = []

    def build(**settings: object) -> Gateway:
        defaults = quick_settings(demo_checkpoint, **settings)
        if not defaults.get("destinations"):
            defaults.pop("destinations", None)
        instance = Gateway(data_dir=data_dir, log_dir=tmp_path, settings=defaults)
        made.append(instance)
        return instance

    yield build
    for instance in made:
        instance.close()
