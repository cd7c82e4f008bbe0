"""Where results live: a local folder or a prefix in an S3 bucket, behind one small interface.

Every path under the results root is a string. A root starting with ``s3://`` is an object-store
prefix (``s3://bucket/prefix``); anything else is a local folder. The functions here take such
paths and do the same thing on both: ``put`` is atomic either way (a temporary file renamed into
place locally, a single PUT in a bucket: an object that exists is whole), ``get`` reads a whole
file or object, and a listing reads one folder or one prefix (one paginated LIST, never a request
per object). Local paths go through exactly the code they always went through.

The endpoint and credentials come from the usual places of the AWS SDK: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, or a profile. They are
never passed through the workflow, so they never appear in its params, logs or results.
The requests for single objects (put, get, delete) are signed and sent by thumbfeat itself
(s3direct: a fraction of boto3's CPU per request) wherever those settings allow; the rest, and
every request under settings only boto3 knows, go through boto3; listings through pyarrow.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from thumbfeat import atomic, s3direct

SCHEME = "s3://"
# Requests in flight per process: a batch job writes from all of its download threads at once.
MAX_CONNECTIONS = 64


class StorageError(OSError):
    """An object store cannot be reached or refuses a request (the message names the object)."""


def is_remote(path: str | Path) -> bool:
    """Whether ``path`` is in an object store rather than on a local file system."""
    return str(path).startswith(SCHEME)


def split(url: str) -> tuple[str, str]:
    """The bucket and key of ``s3://bucket/key``."""
    bucket, _, key = url[len(SCHEME):].partition("/")
    return bucket, key


def endpoint_url(environ: Mapping[str, str] = os.environ) -> str | None:
    """The S3 endpoint an S3-compatible store is reached at, as the AWS SDKs read it."""
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None


_clients: dict[int, Any] = {}
_filesystems: dict[int, Any] = {}


def s3_filesystem(environ: Mapping[str, str] = os.environ) -> Any:
    """pyarrow's S3 file system, reaching the endpoint of the usual AWS variables.

    Credentials are left to the AWS SDK's own lookup (variables, profile), so they pass through
    nothing of the workflow's.
    """
    from pyarrow import fs

    options: dict[str, Any] = {"region": environ.get("AWS_REGION")
                               or environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = endpoint_url(environ)
    if endpoint:
        parts = urlsplit(endpoint)
        options.update(endpoint_override=parts.netloc or endpoint, scheme=parts.scheme or "https")
    return fs.S3FileSystem(**options)


def _listing_filesystem() -> Any:
    """This process's pyarrow S3 file system for listings.

    Listings use pyarrow (the AWS C++ SDK): it reads a LIST page of a thousand objects about ten
    times faster than boto3, which matters when the plan lists every shard at every parse.
    """
    return _for_this_process(_filesystems, s3_filesystem)


_sessions: list[Any] = []


def _session() -> Any:
    """The boto3 session clients are made from, kept across forks: a measuring process forked
    from a batch job inherits its loaded service description and makes its own client from it
    in milliseconds, where a new session would load it again (a fifth of a CPU second)."""
    if not _sessions:
        import boto3

        _sessions.append(boto3.session.Session())
    return _sessions[0]


# Making a client from a session is not safe from two threads at once (the writer thread and
# the caller may both make this process's first request).
_client_lock = threading.Lock()

_Made = TypeVar("_Made")


def _for_this_process(made: dict[int, _Made], make: Callable[[], _Made]) -> _Made:
    """What ``make`` returns, made once per process: a forked child makes its own, since it
    must not share its parent's connections."""
    pid = os.getpid()
    if pid not in made:
        with _client_lock:
            if pid not in made:
                made[pid] = make()
    return made[pid]


def client() -> Any:
    """This process's boto3 S3 client."""
    return _for_this_process(_clients, _new_client)


def _new_client() -> Any:
    from botocore.config import Config

    # Checksums only where S3 requires them: S3-compatible stores may keep the trailing
    # checksum of a streamed upload as part of the object. PUTs carry their Content-MD5
    # instead (s3direct.content_md5).
    config = Config(max_pool_connections=MAX_CONNECTIONS,
                    retries={"max_attempts": 5, "mode": "standard"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    return _session().client("s3", config=config)


_direct_clients: dict[int, s3direct.Client | None] = {}


def _direct_client() -> s3direct.Client | None:
    """This process's client for the per-object requests thumbfeat signs itself (see
    s3direct), or None when boto3 sends them all (no credentials found, or a profile that
    cannot be read: boto3 then says why)."""
    return _for_this_process(_direct_clients, _new_direct_client)


def _new_direct_client() -> s3direct.Client | None:
    """A direct client from the boto3 session: its credentials (asked for afresh at every
    request), region, profile settings and certificate bundle."""
    from botocore.exceptions import BotoCoreError
    from botocore.httpsession import get_cert_path

    session = _session()
    settings = session._session  # botocore's session: the profile and the resolved settings
    try:
        credentials = session.get_credentials()
        profile = settings.get_scoped_config()
        ca_bundle = settings.get_config_variable("ca_bundle") or get_cert_path(True)
    except BotoCoreError:
        return None
    if credentials is None:
        return None
    return s3direct.Client(credentials, session.region_name or "us-east-1", endpoint_url(),
                           profile, dict(os.environ), ca_bundle, MAX_CONNECTIONS)


def _request(method: str, bucket: str, key: str, body: bytes | None,
             boto3_request: Callable[[], Any]) -> Any:
    """One per-object request: signed by thumbfeat where it can (see s3direct), else, and
    for a bucket found to live in another region, by boto3. The direct answer's body, or
    what ``boto3_request`` returns."""
    direct = _direct_client()
    target = direct.target(bucket) if direct is not None else None
    if direct is not None and target is not None:
        try:
            return direct.send(method, target, key, body)
        except s3direct.Elsewhere:
            direct.leave(bucket)
    return boto3_request()


def forget_clients() -> None:
    """Drop this process's clients, so the next request reads the environment again."""
    _clients.clear()
    _direct_clients.clear()
    _filesystems.clear()
    _sessions.clear()


def _missing(error: Exception) -> bool:
    """Whether the store said the object is not there (from either client)."""
    if isinstance(error, s3direct.Failed):
        return error.missing
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    return code in {"404", "NoSuchKey", "NotFound"}


def _failed(action: str, url: str, error: Exception) -> StorageError:
    """One line naming the object and the store's answer (never the credentials)."""
    return StorageError(f"cannot {action} {url}: {error}")


class _Background:
    """This process's writer thread for writes_in_background, and the writes it has queued."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thumbfeat-put")
        self.pending: list[Future[None]] = []
        self.depth = 0


_background: _Background | None = None


@contextlib.contextmanager
def writes_in_background() -> Iterator[None]:
    """Within this block, puts and deletes in a bucket are sent by one background thread while
    the caller goes on computing; the block ends once every one of them is done, and raises the
    first that failed.

    A request waits on the store for longer than it computes: measuring the next image
    meanwhile hides that wait. One thread sends them in the order they were made, so an image's
    thumbnail is still stored before its row, and a failure record before its empty thumbnail.
    Local writes are not deferred.
    """
    global _background
    if _background is None or _background.pid != os.getpid():
        _background = _Background()
    background = _background
    background.depth += 1
    try:
        yield
    except BaseException:
        _finish(background)  # what was queued is still stored; the block's error wins
        raise
    failed = _finish(background)
    if failed is not None:
        raise failed


def _finish(background: _Background) -> BaseException | None:
    """Close one writes_in_background block: at the outermost, wait for every queued write and
    return the first failure."""
    background.depth -= 1
    if background.depth:
        return None
    pending, background.pending = background.pending, []
    errors = [future.exception() for future in pending]
    return next((error for error in errors if error is not None), None)


def _deferred(action: Callable[..., None], *args: Any) -> bool:
    """Queue ``action`` on the background writer when a writes_in_background block is open."""
    background = _background
    if background is None or background.depth == 0 or background.pid != os.getpid():
        return False
    background.pending.append(background.thread.submit(action, *args))
    return True


def put(path: str | Path, data: bytes) -> None:
    """Store ``data`` at ``path`` whole or not at all."""
    if not is_remote(path):
        atomic.write_bytes(path, data)
        return
    if not _deferred(_put_now, str(path), data):
        _put_now(str(path), data)


def _put_now(path: str, data: bytes) -> None:
    bucket, key = split(str(path))
    try:
        _request("PUT", bucket, key, data,
                 lambda: client().put_object(Bucket=bucket, Key=key, Body=data,
                                             ContentMD5=s3direct.content_md5(data)))
    except Exception as error:
        raise _failed("write", str(path), error) from error


def get(path: str | Path) -> bytes:
    """The whole content at ``path``; FileNotFoundError when there is none."""
    if not is_remote(path):
        return Path(path).read_bytes()
    bucket, key = split(str(path))
    try:
        data: bytes = _request("GET", bucket, key, None, lambda: client().get_object(
            Bucket=bucket, Key=key)["Body"].read())
        return data
    except Exception as error:
        if _missing(error):
            raise FileNotFoundError(2, "no such object", str(path)) from None
        raise _failed("read", str(path), error) from error


def delete(path: str | Path) -> None:
    """Remove ``path`` if it is there."""
    if not is_remote(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    if not _deferred(_delete_now, str(path)):
        _delete_now(str(path))


def _delete_now(path: str) -> None:
    bucket, key = split(str(path))
    try:
        _request("DELETE", bucket, key, None,
                 lambda: client().delete_object(Bucket=bucket, Key=key))
    except Exception as error:
        if not _missing(error):
            raise _failed("delete", str(path), error) from error


def modified(path: str | Path) -> float | None:
    """When ``path`` was last written (seconds), or None when it is not there.

    In a bucket this is one HEAD: for run-level files (the table, a snapshot), never for
    per-image objects, which are only ever listed.
    """
    if not is_remote(path):
        try:
            return os.stat(path).st_mtime
        except FileNotFoundError:
            return None
    bucket, key = split(str(path))
    try:
        answer = client().head_object(Bucket=bucket, Key=key)
    except Exception as error:
        if _missing(error):
            return None
        raise _failed("look up", str(path), error) from error
    return float(answer["LastModified"].timestamp())


def exists(path: str | Path) -> bool:
    """Whether ``path`` is there (one HEAD in a bucket: run-level files only)."""
    return modified(path) is not None


def move(source: str | Path, target: str | Path) -> bool:
    """Move ``source`` to ``target`` (a rename locally; a server-side copy, then a delete, in a
    bucket); False when ``source`` is gone."""
    if not is_remote(source):
        try:
            os.replace(source, target)
        except FileNotFoundError:
            return False
        return True
    bucket, key = split(str(source))
    target_bucket, target_key = split(str(target))
    try:
        client().copy_object(Bucket=target_bucket, Key=target_key,
                             CopySource={"Bucket": bucket, "Key": key})
    except Exception as error:
        if _missing(error):
            return False
        raise _failed("move", str(source), error) from error
    delete(source)
    return True


# Listings kept for the length of one parse (see listed_once), by folder URL.
_listed: dict[str, list[tuple[str, bool, Any]]] | None = None


@contextlib.contextmanager
def listed_once() -> Iterator[None]:
    """Within this block each remote folder is listed at most once.

    One parse reads some folders twice (the plan's feature shards, then the row inputs' times):
    listing them once keeps a parse at one LIST per shard prefix. Outside the block every
    listing is fresh, as it must be in a long-lived process.
    """
    global _listed
    outer = _listed
    _listed = {} if outer is None else outer
    try:
        yield
    finally:
        _listed = outer


def _entries(folder: str) -> list[tuple[str, bool, Any]]:
    """Name, whether a file (else a sub-prefix) and pyarrow's FileInfo of each entry directly
    under ``folder``: one LIST, read page by page. Times and sizes are read from the FileInfo
    only when asked for: most listings need names alone, and turning a time into a datetime
    and back costs more than the name, at a hundred thousand objects per parse."""
    key = folder.rstrip("/")
    if _listed is not None and key in _listed:
        return _listed[key]
    from pyarrow import fs

    selector = fs.FileSelector(key[len(SCHEME):], recursive=False, allow_not_found=True)
    try:
        infos = _listing_filesystem().get_file_info(selector)
    except Exception as error:
        raise _failed("list", folder, error) from error
    file_type = fs.FileType.File
    entries = [(info.base_name, info.type == file_type, info) for info in infos]
    if _listed is not None:
        _listed[key] = entries
    return entries


def listing(folder: str | Path) -> dict[str, float]:
    """Names of the files directly in ``folder`` with their modification times (seconds).

    Local: one directory read plus a stat per file. Remote: one paginated LIST, which carries
    every object's time (S3 keeps whole seconds).
    """
    if not is_remote(folder):
        found = {}
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return {}
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file():
                    found[entry.name] = entry.stat().st_mtime
        return found
    return {name: info.mtime.timestamp() if info.mtime else 0.0
            for name, is_file, info in _entries(str(folder)) if is_file}


def sizes(folder: str) -> dict[str, int]:
    """Sizes of the objects directly under a remote ``folder`` (one LIST)."""
    return {name: info.size or 0 for name, is_file, info in _entries(folder) if is_file}


def names(folder: str | Path) -> list[str]:
    """Names of the files directly in ``folder`` (locally, of every entry), one listing."""
    if not is_remote(folder):
        try:
            return os.listdir(folder)
        except FileNotFoundError:
            return []
    return [name for name, is_file, _ in _entries(str(folder)) if is_file]


def subfolders(folder: str | Path) -> list[str]:
    """Names of the folders (sub-prefixes) directly in ``folder``, one listing."""
    if not is_remote(folder):
        try:
            return [entry.name for entry in os.scandir(folder) if entry.is_dir()]
        except FileNotFoundError:
            return []
    return [name for name, is_file, _ in _entries(str(folder)) if not is_file]


def files(folder: str | Path, suffix: str) -> list[str]:
    """Paths of the finished files in ``folder`` whose names end with ``suffix`` (one listing;
    dot-named temporary files left out)."""
    return [f"{folder}/{name}" for name in sorted(names(folder))
            if name.endswith(suffix) and not name.startswith(".")]
