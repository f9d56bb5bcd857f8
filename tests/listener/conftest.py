from __future__ import annotations

import pytest

from tests.support.services import require_tool


@pytest.fixture
def dcmtk() -> None:
    require_tool("storescu", "/usr/bin/storescu")
