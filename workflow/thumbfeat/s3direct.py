"""Per-object S3 requests (PUT, GET, DELETE) signed here and sent over a plain connection pool.

Why this exists: every image stores two objects, and boto3's pipeline around one request
(events, parameter validation, serialisation, response parsing) costs about 1.8 ms of CPU,
where signing and sending the request needs a quarter of that. On a machine whose cores are the
bottleneck that CPU is the rate. So the per-image requests are signed with AWS Signature
Version 4 here (the payload's SHA-256 always signed, never UNSIGNED-PAYLOAD) and sent over
keep-alive connections of the standard library's http.client, while everything else (HEAD,
copies, listings, the credentials themselves) stays with boto3/botocore. http.client rather
than urllib3: half the CPU per request (BENCHMARKS.md, "One PUT's CPU").

What it supports, and nothing more (``Target.of`` says None for anything else, and the caller
then uses boto3): credentials as botocore's session finds them (variables, profiles, session
tokens, refreshable credentials, asked for again at every request so a refresh is seen); the
region as the SDK reads it; an endpoint from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``,
addressed path-style as the listings are; without one, AWS's virtual-hosted style
``https://<bucket>.s3.<region>.amazonaws.com`` for buckets whose name is a DNS label.
Retries follow boto3's standard mode: 5 attempts in all, on connection errors, 5xx answers and
throttling (429, SlowDown), waiting a jittered, doubling delay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import random
import re
import select
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
ATTEMPTS = 5
MAX_BACKOFF = 20.0
# boto3's standard mode: seconds before the first retry (then doubling), by kind of failure.
THROTTLED_BASE = 1.0
TRANSIENT_BASE = 0.05
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException",
                             "PriorRequestNotComplete"})
THROTTLED_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException",
})
MISSING_CODES = frozenset({"NoSuchKey", "NotFound"})
TIMEOUT = 60.0  # botocore's connect and read timeouts
# A bucket name usable as a host name label in AWS's virtual-hosted style (no dots: they would
# not match the wildcard certificate).
_DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
# Regions of AWS's main partition (amazonaws.com); others (China, isolated) stay with boto3.
_AWS_REGION = re.compile(r"(?!cn-)[a-z]{2}(-gov)?-[a-z]+-\d+")
# Configuration that changes where or how S3 is reached, which only boto3 honours.
_BOTO_ONLY_SETTINGS = ("endpoint_url", "services", "s3", "use_fips_endpoint",
                       "use_dualstack_endpoint", "ignore_configured_endpoint_urls")
_BOTO_ONLY_VARIABLES = ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT",
                        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
_ERROR_FIELD = re.compile(r"<(Code|Message)>([^<]*)</\1>")


class Failed(Exception):
    """A request that failed for good: the store's answer (status, code, message) or the last
    connection error. Carries no credential."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{code} (HTTP {status}): {message}" if status else message)
        self.status = status
        self.code = code

    @property
    def missing(self) -> bool:
        """Whether the store said the object is not there."""
        return self.code in MISSING_CODES or (self.status == 404 and not self.code)


class Elsewhere(Failed):
    """The bucket lives in another region than the one configured: boto3 follows it there
    (its redirects are not repeated here)."""


# --- Signing (pure) -------------------------------------------------------------------------


def quoted_key(key: str) -> str:
    """An object key as it appears in a request path and in the canonical request: UTF-8,
    every byte but the unreserved ones and ``/`` percent-encoded, once (S3 does not
    normalise paths)."""
    return quote(key, safe="/~")


def content_md5(data: bytes) -> str:
    """The Content-MD5 header of a PUT of ``data``.

    With it the store checks that the whole body arrived before it keeps the object. Without it,
    an S3-compatible store (SeaweedFS) keeps an empty object when the writer is killed between
    its request's headers and its body, even with the payload's SHA-256 signed; an empty
    thumbnail would then read as a failed download.
    """
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def signing_key(secret_key: str, day: str, region: str) -> bytes:
    """The day's key derived from the secret (the chain SigV4 defines)."""
    key = hmac.new(f"AWS4{secret_key}".encode(), day.encode(), hashlib.sha256).digest()
    for part in (region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signed_headers(method: str, host: str, path: str, payload_sha256: str, amz_date: str,
                   access_key: str, key: bytes, region: str,
                   token: str | None = None) -> dict[str, str]:
    """The headers that authenticate a request without a query string, ``key`` being
    signing_key(secret, amz_date[:8], region). Signs host, payload hash, date and session
    token: all a request of ours carries that the store must trust."""
    headers = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
    if token:
        headers["x-amz-security-token"] = token
    names = ";".join(headers)
    canonical = "\n".join((method, path, "",
                           "".join(f"{name}:{value.strip()}\n" for name, value in headers.items()),
                           names, payload_sha256))
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join((ALGORITHM, amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()))
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"{ALGORITHM} Credential={access_key}/{scope}, "
                                f"SignedHeaders={names}, Signature={signature}")
    return headers


# --- Where requests go (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a bucket's objects are reached: scheme, host (with a port unless the default),
    and the path before the key."""

    scheme: str
    host: str
    port: int | None
    base: str

    @staticmethod
    def of(bucket: str, region: str, endpoint: str | None,
           settings: Mapping[str, Any], environ: Mapping[str, str]) -> Target | None:
        """Where ``bucket`` is reached, or None where only boto3 knows (endpoints set in a
        profile, FIPS or dual-stack endpoints, S3 settings of a profile, a proxy, other AWS
        partitions, bucket names that are no host name)."""
        if any(settings.get(name) for name in _BOTO_ONLY_SETTINGS):
            return None
        if any(environ.get(name, "").strip().lower() not in ("", "false")
               for name in _BOTO_ONLY_VARIABLES):
            return None
        if endpoint:
            parts = urlsplit(endpoint)
            try:
                port = parts.port
            except ValueError:  # boto3 says what is wrong with it
                return None
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
                return None
            base = f"{parts.path.rstrip('/')}/{quoted_key(bucket)}/"
            target = Target(parts.scheme, parts.hostname, port, base)
        elif _DNS_BUCKET.fullmatch(bucket) and _AWS_REGION.fullmatch(region):
            target = Target("https", f"{bucket}.s3.{region}.amazonaws.com", None, "/")
        else:
            return None
        if _proxied(target.scheme, target.host, environ):
            return None
        return target

    @property
    def host_header(self) -> str:
        """The Host header as signed: the port only when it is not the scheme's default."""
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port in (None, default) else f"{host}:{self.port}"


def _proxied(scheme: str, host: str, environ: Mapping[str, str]) -> bool:
    """Whether the proxy variables send requests to ``host`` through a proxy (boto3 would)."""
    variables = {name.lower(): value for name, value in environ.items() if value}
    if not (variables.get(f"{scheme}_proxy") or variables.get("all_proxy")):
        return False
    for entry in variables.get("no_proxy", "").split(","):
        entry = entry.strip().lstrip(".").lower()
        if entry == "*" or (entry and (host == entry or host.endswith(f".{entry}"))):
            return False
    return True


def _error_fields(body: bytes) -> tuple[str, str]:
    """The code and message of an S3 error document (empty when there is none)."""
    fields = dict(_ERROR_FIELD.findall(body[:4096].decode("utf-8", "replace")))
    return fields.get("Code", ""), fields.get("Message", "")


def backoff(attempt: int, throttled: bool, draw: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based), as boto3's standard mode
    waits: a random share of a doubling delay, capped at 20 s."""
    base = THROTTLED_BASE if throttled else TRANSIENT_BASE
    return draw() * min(base * 2 ** (attempt - 1), MAX_BACKOFF)


# --- Sending --------------------------------------------------------------------------------


class _Pool:
    """Idle keep-alive connections to one host, shared by a process's threads (taking and
    giving back are single deque operations, which threads may interleave)."""

    def __init__(self, target: Target, context: ssl.SSLContext | None, size: int) -> None:
        self.target = target
        self.context = context
        self.size = size
        self.idle: deque[http.client.HTTPConnection] = deque()

    def take(self) -> http.client.HTTPConnection:
        """An idle connection the server has not closed meanwhile, else a new one."""
        while self.idle:
            try:
                connection = self.idle.pop()
            except IndexError:
                break
            if not _dropped(connection):
                return connection
            connection.close()
        if self.target.scheme == "https":
            return http.client.HTTPSConnection(self.target.host, self.target.port,
                                               timeout=TIMEOUT, context=self.context)
        return http.client.HTTPConnection(self.target.host, self.target.port, timeout=TIMEOUT)

    def give(self, connection: http.client.HTTPConnection) -> None:
        """Keep ``connection`` for the next request, unless enough are kept already."""
        if len(self.idle) < self.size:
            self.idle.append(connection)
        else:
            connection.close()


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle connection was closed by the server: its socket reads (an end of file,
    or bytes nobody asked for) or is gone."""
    sock = connection.sock
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Client:
    """Sends signed object requests to one store from one process (a forked child needs its
    own: a pool's sockets must not be shared)."""

    def __init__(self, credentials: Any, region: str, endpoint: str | None,
                 settings: Mapping[str, Any], environ: Mapping[str, str],
                 ca_bundle: str | None, connections: int) -> None:
        self.credentials = credentials
        self.region = region
        self.endpoint = endpoint
        self.settings = settings
        self.environ = environ
        self.ca_bundle = ca_bundle
        self.connections = connections
        self.targets: dict[str, Target | None] = {}
        self.pools: dict[Target, _Pool] = {}
        self.keys: tuple[str, str, bytes] | None = None
        self.sleep = time.sleep

    def target(self, bucket: str) -> Target | None:
        """Where ``bucket`` is reached, or None when boto3 must send its requests."""
        if bucket not in self.targets:
            self.targets[bucket] = Target.of(bucket, self.region, self.endpoint, self.settings,
                                             self.environ)
        return self.targets[bucket]

    def leave(self, bucket: str) -> None:
        """Send no more requests for ``bucket`` (boto3 does, from now on)."""
        self.targets[bucket] = None

    def pool(self, target: Target) -> _Pool:
        if target not in self.pools:
            context = (ssl.create_default_context(cafile=self.ca_bundle)
                       if target.scheme == "https" else None)
            self.pools.setdefault(target, _Pool(target, context, self.connections))
        return self.pools[target]

    def send(self, method: str, target: Target, key: str, body: bytes | None) -> bytes:
        """Send one request, retried as boto3's standard mode retries; the answer's body."""
        pool = self.pool(target)
        path = target.base + quoted_key(key)
        payload = hashlib.sha256(body or b"").hexdigest()
        checksum = content_md5(body) if body is not None else None
        for attempt in range(1, ATTEMPTS + 1):
            headers = self.sign(method, target.host_header, path, payload)
            if checksum is not None:
                headers["content-md5"] = checksum
            connection = pool.take()
            try:
                connection.request(method, path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                if attempt == ATTEMPTS:
                    raise Failed(None, "", f"cannot reach {target.scheme}://"
                                           f"{target.host_header}: {type(error).__name__}: "
                                           f"{error} ({ATTEMPTS} attempts)") from None
                self.sleep(backoff(attempt, False))
                continue
            if answer.will_close:
                connection.close()
            else:
                pool.give(connection)
            if answer.status < 300:
                return data
            code, message = _error_fields(data)
            region = answer.getheader("x-amz-bucket-region")
            if region and region != self.region:
                raise Elsewhere(answer.status, code or answer.reason, f"in region {region}")
            throttled = answer.status == 429 or code in THROTTLED_CODES
            if attempt < ATTEMPTS and (throttled or answer.status in TRANSIENT_STATUSES
                                       or code in TRANSIENT_CODES):
                self.sleep(backoff(attempt, throttled))
                continue
            raise Failed(answer.status, code or answer.reason, message)
        raise AssertionError("unreachable")

    def sign(self, method: str, host: str, path: str, payload: str) -> dict[str, str]:
        """Fresh credentials (a refreshable set renews itself here) and this second's
        signature."""
        credentials = self.credentials.get_frozen_credentials()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = amz_date[:8]
        if self.keys is None or self.keys[:2] != (day, credentials.secret_key):
            self.keys = (day, credentials.secret_key,
                         signing_key(credentials.secret_key, day, self.region))
        return signed_headers(method, host, path, payload, amz_date, credentials.access_key,
                              self.keys[2], self.region, credentials.token)
