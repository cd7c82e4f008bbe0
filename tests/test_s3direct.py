"""Object requests thumbfeat signs itself (thumbfeat.s3direct): signatures against botocore's,
addresses against boto3's, retries against a loopback store that counts requests, and a real S3
server (SeaweedFS) that checks every signature."""

from __future__ import annotations

import datetime
import hashlib
import itertools
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import boto3
import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from thumbfeat import s3direct, storage
from thumbfeat.s3direct import Target

from tests.faults import QuietServer
from tests.s3server import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer, seaweed_server
from tests.support import quiet_handler

# Keys that need URL-encoding: a space, non-ASCII letters, "+", "=", "%" and URL syntax.
AWKWARD_KEYS = ["run/thumbs/ab/plain.img", "run/thumbs/ab/with space.img",
                "run/thumbs/ab/ünïcødé-画像.img", "run/thumbs/ab/a+b=c.img",
                "run/thumbs/ab/100%?x=1&y#z~.img"]
WHEN = datetime.datetime(2026, 12, 1, 21, 30, 5)
AMZ_DATE = "20261201T213005Z"
_numbers = itertools.count(1)


def direct_target(bucket: str, region: str, endpoint: str | None) -> Target:
    target = Target.of(bucket, region, endpoint, {}, {})
    assert target is not None
    return target


@pytest.mark.parametrize("token", [None, "IQoJb3JpZ2luX2VjEJr//////////wEaCXVz+token=="])
@pytest.mark.parametrize("key", AWKWARD_KEYS)
@pytest.mark.parametrize(("method", "body"), [("PUT", b"thumbnail bytes"), ("PUT", b""),
                                              ("GET", b""), ("DELETE", b"")])
@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8333", "https://store.example:443/s3",
                                      None])
def test_the_signature_is_botocores(monkeypatch: pytest.MonkeyPatch, token: str | None, key: str,
                                    method: str, body: bytes, endpoint: str | None) -> None:
    secret = "wJalr/XUtnFEMI+K7MDENG=bPxRfi CYEXAMPLEKEY"
    region = "eu-west-1"
    target = direct_target("thumbfeat-test", region, endpoint)
    path = target.base + s3direct.quoted_key(key)
    payload = hashlib.sha256(body).hexdigest()
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: WHEN)
    request = AWSRequest(method=method, url=f"{target.scheme}://{target.host_header}{path}",
                         data=body, headers={"X-Amz-Content-SHA256": payload})
    S3SigV4Auth(Credentials("AKIDEXAMPLE", secret, token), "s3", region).add_auth(request)

    ours = s3direct.signed_headers(method, target.host_header, path, payload, AMZ_DATE,
                                   "AKIDEXAMPLE", s3direct.signing_key(secret, AMZ_DATE[:8],
                                                                       region), region, token)
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"]
    assert ours.get("x-amz-security-token") == request.headers.get("X-Amz-Security-Token")
    assert "UNSIGNED" not in ours["x-amz-content-sha256"]


class _Captured(Exception):
    """Stops a boto3 request once its address is known."""


def boto3_url(bucket: str, key: str, region: str, endpoint: str | None) -> str:
    """The URL boto3 sends a PutObject to (path-style for an endpoint of our own)."""
    config = Config(s3={"addressing_style": "path"}) if endpoint else Config()
    client = boto3.session.Session(aws_access_key_id="AK", aws_secret_access_key="SK",
                                   region_name=region).client("s3", endpoint_url=endpoint,
                                                              config=config)
    seen: list[str] = []

    def capture(request: AWSRequest, **_: object) -> None:
        seen.append(request.url)
        raise _Captured

    client.meta.events.register("before-send.s3.PutObject", capture)
    with pytest.raises(_Captured):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    return seen[0]


@pytest.mark.parametrize("key", AWKWARD_KEYS)
@pytest.mark.parametrize(("region", "endpoint"), [("us-east-1", "http://127.0.0.1:8333"),
                                                  ("eu-west-1", "https://store.example/s3"),
                                                  ("eu-west-1", None), ("us-east-2", None)])
def test_objects_are_addressed_as_boto3_addresses_them(monkeypatch: pytest.MonkeyPatch,
                                                        key: str, region: str,
                                                        endpoint: str | None) -> None:
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    target = direct_target("thumbfeat-test", region, endpoint)
    ours = f"{target.scheme}://{target.host_header}{target.base}{s3direct.quoted_key(key)}"
    assert ours == boto3_url("thumbfeat-test", key, region, endpoint)


def test_what_only_boto3_knows_stays_with_boto3() -> None:
    endpoint = "http://127.0.0.1:8333"
    assert Target.of("b-1", "us-east-1", "http://h:9000/store/", {}, {}) == Target(
        "http", "h", 9000, "/store/b-1/")
    assert Target.of("b-1", "eu-west-1", None, {}, {}) == Target(
        "https", "b-1.s3.eu-west-1.amazonaws.com", None, "/")
    assert Target.of("b-1", "us-east-1", endpoint, {}, {"AWS_USE_FIPS_ENDPOINT": "false"})
    assert Target.of("b-1", "eu-west-1", None, {}, {"HTTPS_PROXY": "http://proxy:3128",
                                                   "NO_PROXY": ".amazonaws.com"})
    assert Target.of("b-1", "eu-west-1", None, {}, {"HTTP_PROXY": "http://proxy:3128"})
    boto3_only = [
        ("b.dotted", "eu-west-1", None, {}, {}),  # no host name label: no certificate matches
        ("b-1", "cn-north-1", None, {}, {}),  # another partition
        ("b-1", "us-east-1", None, {"endpoint_url": "http://elsewhere"}, {}),
        ("b-1", "us-east-1", endpoint, {"s3": {"addressing_style": "virtual"}}, {}),
        ("b-1", "us-east-1", endpoint, {"use_fips_endpoint": "true"}, {}),
        ("b-1", "us-east-1", None, {}, {"AWS_USE_DUALSTACK_ENDPOINT": "true"}),
        ("b-1", "eu-west-1", None, {}, {"HTTPS_PROXY": "http://proxy:3128"}),
        ("b-1", "eu-west-1", endpoint, {}, {"all_proxy": "http://proxy:3128"}),
        ("b-1", "eu-west-1", "ftp://127.0.0.1", {}, {}),
    ]
    for bucket, region, endpoint_url, settings, environ in boto3_only:
        assert Target.of(bucket, region, endpoint_url, settings, environ) is None, bucket


def test_retries_wait_as_boto3_standard_mode_waits() -> None:
    assert s3direct.backoff(1, False, lambda: 1.0) == pytest.approx(0.05)
    assert s3direct.backoff(3, False, lambda: 1.0) == pytest.approx(0.2)
    assert s3direct.backoff(2, True, lambda: 0.5) == pytest.approx(1.0)
    assert s3direct.backoff(9, True, lambda: 1.0) == 20.0
    assert s3direct.backoff(4, True, lambda: 0.0) == 0.0


# --- A loopback store answering from a script ------------------------------------------------


class ScriptedStore:
    """A loopback stand-in for an S3 store: each object's requests are answered from its
    script, a list of (status, error code), (status, error code, the bucket's region) or
    "reset" (the connection is reset once the request is read), then with 200. Every request
    is recorded: method, path, payload hash and user agent."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[tuple[int, str] | tuple[int, str, str] | str]] = {}
        self.seen: list[tuple[str, str, str, str]] = []
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.httpd = QuietServer(("127.0.0.1", 0),
                                 quiet_handler(self.answer, ("PUT", "GET", "DELETE")))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        with self.lock:
            self.seen.append((handler.command, handler.path,
                              handler.headers.get("x-amz-content-sha256", ""),
                              handler.headers.get("User-Agent", "")))
            script = self.scripts.get(handler.path, [])
            step = script.pop(0) if script else (200, "")
            if step[0] == 200 and handler.command == "PUT":
                self.objects[handler.path] = body
        if step == "reset":
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
            handler.connection.close()
            handler.close_connection = True
            return
        status, code, *region = step
        reply = b""
        if status == 200 and handler.command == "GET":
            reply = self.objects.get(handler.path, b"")
        elif status >= 300:
            reply = (f"<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>scripted "
                     f"{code}</Message></Error>").encode()
        handler.send_response(status)
        if region:
            handler.send_header("x-amz-bucket-region", region[0])
        handler.send_header("Content-Length", str(len(reply)))
        handler.end_headers()
        handler.wfile.write(reply)

    def requests_for(self, path: str) -> list[tuple[str, str, str, str]]:
        with self.lock:
            return [request for request in self.seen if request[1] == path]


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedStore]:
    scripted = ScriptedStore()
    scripted.thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", scripted.endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage.forget_clients()
    try:
        yield scripted
    finally:
        storage.forget_clients()
        scripted.httpd.shutdown()
        scripted.httpd.server_close()


@pytest.mark.parametrize("failure", [(503, "SlowDown"), (500, "InternalError"), (429, "TooMany"),
                                     (400, "RequestTimeout"), "reset"])
def test_a_failed_put_is_sent_again_with_its_payload_signed(store: ScriptedStore,
                                                            failure: tuple[int, str] | str,
                                                            ) -> None:
    for round_number in range(3):
        key = f"run/thumbs/ab/r{round_number}-{next(_numbers)}.img"
        path = f"/{BUCKET}/{key}"
        data = b"thumbnail %d" % round_number
        store.scripts[path] = [failure, failure] if round_number == 2 else [failure]
        storage.put(f"s3://{BUCKET}/{key}", data)
        seen = store.requests_for(path)
        assert len(seen) == (3 if round_number == 2 else 2)
        assert {payload for _, _, payload, _ in seen} == {hashlib.sha256(data).hexdigest()}
        assert store.objects[path] == data


def test_a_failed_get_and_delete_are_sent_again(store: ScriptedStore) -> None:
    for round_number in range(3):
        key = f"run/features/ab/r{round_number}-{next(_numbers)}.parquet"
        path, url = f"/{BUCKET}/{key}", f"s3://{BUCKET}/{key}"
        storage.put(url, b"row")
        store.scripts[path] = ["reset", (500, "InternalError")]
        assert storage.get(url) == b"row"
        store.scripts[path] = [(503, "SlowDown")]
        storage.delete(url)
        assert [method for method, *_ in store.requests_for(path)] == [
            "PUT", "GET", "GET", "GET", "DELETE", "DELETE"]


def test_five_failed_attempts_give_one_error_naming_the_object(store: ScriptedStore) -> None:
    for round_number in range(3):
        key = f"run/thumbs/ab/r{round_number}-{next(_numbers)}.img"
        path, url = f"/{BUCKET}/{key}", f"s3://{BUCKET}/{key}"
        store.scripts[path] = [(500, "InternalError")] * 5
        with pytest.raises(storage.StorageError) as error:
            storage.put(url, b"x")
        assert len(store.requests_for(path)) == 5
        assert url in str(error.value) and "InternalError" in str(error.value)
        assert SECRET_KEY not in str(error.value)
        store.scripts[path] = ["reset"] * 5
        with pytest.raises(storage.StorageError, match="5 attempts") as error:
            storage.put(url, b"x")
        assert len(store.requests_for(path)) == 10
        assert url in str(error.value)


def test_a_refusal_or_a_missing_object_is_asked_once(store: ScriptedStore) -> None:
    for round_number in range(3):
        key = f"run/thumbs/ab/r{round_number}-{next(_numbers)}.img"
        path, url = f"/{BUCKET}/{key}", f"s3://{BUCKET}/{key}"
        store.scripts[path] = [(403, "AccessDenied")]
        with pytest.raises(storage.StorageError, match="AccessDenied"):
            storage.put(url, b"x")
        store.scripts[path] = [(404, "NoSuchKey")]
        with pytest.raises(FileNotFoundError):
            storage.get(url)
        store.scripts[path] = [(404, "NoSuchKey")]
        storage.delete(url)  # what is gone needs no deleting
        assert len(store.requests_for(path)) == 3


def test_a_bucket_in_another_region_is_left_to_boto3(store: ScriptedStore) -> None:
    for round_number in range(3):
        bucket = f"moved-{round_number}-{next(_numbers)}"
        first, second = f"/{bucket}/run/a.img", f"/{bucket}/run/b.img"
        store.scripts[first] = [(301, "PermanentRedirect", "eu-west-1")]
        storage.put(f"s3://{bucket}/run/a.img", b"a")
        storage.put(f"s3://{bucket}/run/b.img", b"b")
        storage.put(f"s3://{BUCKET}/run/c{round_number}.img", b"c")
        agents = [agent for *_, agent in store.requests_for(first) + store.requests_for(second)]
        assert len(agents) == 3
        assert "Boto3" not in agents[0] and "Boto3" in agents[1] and "Boto3" in agents[2]
        assert store.objects[first] == b"a" and store.objects[second] == b"b"
        # Other buckets are still reached directly.
        assert "Boto3" not in store.requests_for(f"/{BUCKET}/run/c{round_number}.img")[0][3]


# --- A real S3 server that checks signatures --------------------------------------------------


@pytest.fixture(scope="module")
def checking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """SeaweedFS knowing one identity, the test keys: a wrong signature is refused."""
    yield from seaweed_server(Path(tmp_path_factory.mktemp("seaweedfs-keyed")),
                              checks_signatures=True)


@pytest.fixture
def checking_env(checking: SeaweedServer,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedServer]:
    for name, value in checking.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    storage.forget_clients()
    yield checking
    storage.forget_clients()


def test_a_server_checking_signatures_takes_ours_for_every_key(checking_env: SeaweedServer,
                                                                ) -> None:
    direct = storage._direct_client()
    assert direct is not None and direct.target(BUCKET) is not None  # requests signed here
    folder = f"s3://{BUCKET}/keys-{next(_numbers)}"
    for number, key in enumerate(AWKWARD_KEYS):
        url = f"{folder}/{key.rsplit('/', 1)[1]}"
        data = b"object %d" % number
        storage.put(url, data)
        assert storage.get(url) == data
        assert checking_env.read(url.split("/", 3)[3]) == data  # boto3 finds it at that key
    storage.put(f"{folder}/empty.img", b"")
    assert storage.get(f"{folder}/empty.img") == b""
    assert sorted(storage.names(folder)) == sorted(
        [key.rsplit("/", 1)[1] for key in AWKWARD_KEYS] + ["empty.img"])
    for name in storage.names(folder):
        storage.delete(f"{folder}/{name}")
        with pytest.raises(FileNotFoundError):
            storage.get(f"{folder}/{name}")
    assert storage.names(folder) == []


def test_a_wrong_secret_gives_one_clear_error(checking_env: SeaweedServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "tf-wrong-secret-5be0c1"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    storage.forget_clients()
    for round_number in range(3):
        url = f"s3://{BUCKET}/wrong-{next(_numbers)}/thumbs/ab/x{round_number}.img"
        with pytest.raises(storage.StorageError) as error:
            storage.put(url, b"x")
        message = str(error.value)
        assert message.startswith(f"cannot write {url}: SignatureDoesNotMatch (HTTP 403)")
        assert "\n" not in message
        assert wrong not in message and SECRET_KEY not in message
        with pytest.raises(storage.StorageError, match="SignatureDoesNotMatch"):
            storage.get(url)
        # Through the background writer: the block raises the first refusal, once.
        with pytest.raises(storage.StorageError, match="SignatureDoesNotMatch"), \
                storage.writes_in_background():
            for number in range(5):
                storage.put(f"{url}.{number}", b"x")
    assert checking_env.objects("wrong-") == {}
