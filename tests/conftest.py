from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import FaultServer
from tests.s3server import SeaweedServer, seaweed_server
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


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A real S3 server (SeaweedFS) for the whole session, on ports chosen free for it."""
    yield from seaweed_server(Path(tmp_path_factory.mktemp("seaweedfs")))
