from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults import FaultServer
from tests.support import ImageServer


@pytest.fixture
def server() -> Iterator[ImageServer]:
    srv = ImageServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv
