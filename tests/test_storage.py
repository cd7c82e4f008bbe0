"""The results root as a local folder or an S3 prefix, against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from thumbfeat import layout, storage

from tests.s3server import BUCKET, SECRET_KEY, SeaweedServer

_prefixes = itertools.count(1)


@pytest.fixture
def aws_env(s3: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedServer]:
    """The standard AWS variables pointing at the test server, for code running in this process."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    storage.forget_clients()
    yield s3
    storage.forget_clients()


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh results root of each kind."""
    if request.param == "local":
        return str(tmp_path / "results")
    request.getfixturevalue("aws_env")
    return f"s3://{BUCKET}/storage-{next(_prefixes)}"


def test_put_get_delete_behave_alike(root: str) -> None:
    path = f"{root}/thumbs/ab/x.img"
    assert not storage.exists(path)
    with pytest.raises(FileNotFoundError):
        storage.get(path)
    storage.put(path, b"bytes")
    assert storage.exists(path)
    assert storage.get(path) == b"bytes"
    storage.put(path, b"")
    assert storage.get(path) == b""
    storage.delete(path)
    storage.delete(path)  # deleting what is gone is fine: every operation is idempotent
    assert not storage.exists(path)


def test_listing_names_files_and_folders(root: str) -> None:
    for name in ("a.json", "b.json", ".c.json.tmp"):
        storage.put(f"{root}/batches/{name}", b"{}")
    storage.put(f"{root}/batches/sub/d.json", b"{}")
    listing = storage.listing(f"{root}/batches")
    assert set(listing) >= {"a.json", "b.json"}
    assert "d.json" not in listing and "sub/d.json" not in listing
    assert all(when > 0 for when in listing.values())
    assert storage.subfolders(f"{root}/batches") == ["sub"]
    assert storage.listing(f"{root}/nothing-here") == {}
    assert sorted(layout.manifest_keys(root)) == ["a", "b"]


def test_present_ids_lists_each_shard_once_and_never_looks_at_an_object(aws_env: SeaweedServer,
                                                                       ) -> None:
    root = f"s3://{BUCKET}/storage-{next(_prefixes)}"
    ids = [f"img{i}" for i in range(40)]
    for image_id in ids:
        storage.put(layout.thumb_path(root, image_id, "tag-a"), b"x")
    shards = {layout.shard_of(i) for i in ids}
    before = aws_env.requests()
    assert layout.present_ids(root, layout.stage_dir(layout.THUMBS, "tag-a"),
                              layout.THUMB_SUFFIX) == set(ids)
    after = aws_env.requests()
    assert after["LIST"] - before["LIST"] == 1 + len(shards)
    assert after["HEAD"] == before["HEAD"]
    assert after["GET"] == before["GET"]


def test_thumbnails_of_other_settings_are_found_by_listing_alone(aws_env: SeaweedServer) -> None:
    root = f"s3://{BUCKET}/storage-{next(_prefixes)}"
    for image_id in ("a1", "a2", "a3"):
        storage.put(layout.thumb_path(root, image_id, "256px-jpeg-q85"), b"x")
    storage.put(layout.thumb_path(root, "b1", "512px-jpeg-q85"), b"x")
    # A thumbnail of results written before thumbnails had settings: right under thumbs/.
    storage.put(f"{root}/{layout.THUMBS}/{layout.shard_of('c1')}/c1{layout.THUMB_SUFFIX}", b"x")
    before = aws_env.requests()
    assert layout.thumbs_made_elsewhere(root, "512px-jpeg-q85") == {"a1", "a2", "a3", "c1"}
    assert layout.thumbs_made_elsewhere(root, "256px-jpeg-q85") == {"b1", "c1"}
    spent = aws_env.requests() - before
    assert set(spent) == {"LIST"}, spent


def test_within_a_parse_each_prefix_is_listed_once(aws_env: SeaweedServer) -> None:
    root = f"s3://{BUCKET}/storage-{next(_prefixes)}"
    storage.put(f"{root}/batches/a.json", b"{}")
    before = aws_env.requests()
    with storage.listed_once():
        assert storage.names(f"{root}/batches") == ["a.json"]
        storage.put(f"{root}/batches/b.json", b"{}")
        assert storage.names(f"{root}/batches") == ["a.json"]
    assert aws_env.requests()["LIST"] - before["LIST"] == 1
    # Outside the block a listing is fresh again.
    assert sorted(storage.names(f"{root}/batches")) == ["a.json", "b.json"]


def test_modified_and_move(root: str) -> None:
    source, target = f"{root}/features/ab/x.parquet", f"{root}/quarantine/features/ab/x.parquet"
    assert storage.modified(source) is None
    assert not storage.move(source, target)
    if not storage.is_remote(root):
        Path(source).parent.mkdir(parents=True)
        Path(target).parent.mkdir(parents=True)
    storage.put(source, b"row")
    assert storage.modified(source) is not None
    assert storage.move(source, target)
    assert not storage.exists(source)
    assert storage.get(target) == b"row"


def test_a_long_listing_is_read_page_by_page(aws_env: SeaweedServer) -> None:
    root = f"s3://{BUCKET}/storage-{next(_prefixes)}"
    client = aws_env.client()
    key = root.split("/", 3)[3]
    for i in range(1205):
        client.put_object(Bucket=BUCKET, Key=f"{key}/features/00/i{i}.parquet", Body=b"")
    before = aws_env.requests()
    names = storage.names(f"{root}/features/00")
    assert len(names) == 1205
    assert aws_env.requests()["LIST"] - before["LIST"] == 2


def test_a_store_error_names_the_object_and_no_credential(aws_env: SeaweedServer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url = "s3://no-such-bucket-here/results/thumbs/ab/x.img"
    with pytest.raises(storage.StorageError) as error:
        storage.put(url, b"x")
    assert url in str(error.value)
    assert SECRET_KEY not in str(error.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage.forget_clients()
    with pytest.raises(storage.StorageError) as error:
        storage.get(url)
    assert SECRET_KEY not in str(error.value)


def test_remote_and_local_paths_are_told_apart() -> None:
    assert storage.is_remote("s3://bucket/prefix")
    assert not storage.is_remote("results")
    assert not storage.is_remote(Path("s3:/bucket"))
    assert storage.split("s3://bucket/a/b.json") == ("bucket", "a/b.json")
    assert storage.endpoint_url({"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://b"}
                                ) == "http://b"
    assert storage.endpoint_url({"AWS_ENDPOINT_URL": "http://a"}) == "http://a"
    assert storage.endpoint_url({}) is None


def test_writes_in_background_are_sent_in_order_and_done_when_the_block_ends(
        aws_env: SeaweedServer) -> None:
    root = f"s3://{BUCKET}/storage-{next(_prefixes)}"
    paths = [f"{root}/thumbs/t/{i % 7:02x}/x{i}.img" for i in range(40)]
    with storage.writes_in_background():
        for number, path in enumerate(paths):
            storage.put(path, b"first %d" % number)
        # Later writes to the same objects, and a delete, land after the earlier ones.
        for number, path in enumerate(paths[:10]):
            storage.put(path, b"second %d" % number)
        storage.delete(paths[-1])
    assert [storage.get(p) for p in paths[:10]] == [b"second %d" % n for n in range(10)]
    assert [storage.get(p) for p in paths[10:-1]] == [b"first %d" % n for n in range(10, 39)]
    assert not storage.exists(paths[-1])


def test_a_failed_background_write_fails_the_block(aws_env: SeaweedServer) -> None:
    good = f"s3://{BUCKET}/storage-{next(_prefixes)}/a.json"
    with (pytest.raises(storage.StorageError, match="no-such-bucket-here"),
          storage.writes_in_background()):
        storage.put("s3://no-such-bucket-here/x.json", b"{}")
        storage.put(good, b"{}")
    # The writes queued beside the failed one were still made.
    assert storage.get(good) == b"{}"
    # The block closed: the next write is made at once again.
    storage.put(good, b"[]")
    assert storage.get(good) == b"[]"


class CuttingProxy:
    """A loopback proxy to the S3 server that passes each request's headers on, waits a moment
    (for "100 Continue" where the request asked for it), then closes the connection before any
    of the body: a writer killed in the middle of a PUT, as the store sees it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                address = (self.upstream.hostname, self.upstream.port)
                with socket.create_connection(address, timeout=10) as upstream:
                    upstream.sendall(head.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
                    # A PUT asking "Expect: 100-continue" is answered at once; any other waits
                    # for its body.
                    upstream.settimeout(0.3)
                    with contextlib.suppress(TimeoutError):
                        upstream.recv(1024)
                self.cut += 1

    def close(self) -> None:
        self.listener.close()


def test_a_put_cut_before_its_body_leaves_no_object(aws_env: SeaweedServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = CuttingProxy(aws_env.endpoint)
    root = f"s3://{BUCKET}/storage-{next(_prefixes)}"
    try:
        for attempt in range(3):
            path = f"{root}/thumbs/ab/cut{attempt}.jpg"
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
            storage.forget_clients()
            with pytest.raises(storage.StorageError, match=f"cut{attempt}.jpg"):
                storage.put(path, b"\xff\xd8 thumbnail bytes " * 500)
            # Straight from the store: no object, where an empty one would pass for a failed
            # download.
            monkeypatch.setenv("AWS_ENDPOINT_URL", aws_env.endpoint)
            storage.forget_clients()
            assert not storage.exists(path)
    finally:
        proxy.close()
    assert proxy.cut >= 3
