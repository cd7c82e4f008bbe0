"""The form in which an image's source URL is recorded beside its results.

Catalog URLs may carry secrets (``user:password@`` or ``?token=...``), which stay in the catalog
and its snapshot and appear nowhere else. Rows and failure records keep the URL without them, with
a digest of the whole URL as its fragment, so any change of the URL (its query included) is
still noticed by comparing recorded forms.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

DIGEST_LENGTH = 16
DIGEST_MARK = "#sha256="


# Schemes whose host and path name a place to fetch from; anything else (``javascript:``, ...)
# is recorded by its scheme and digest alone, since its "path" may be any text.
PLACE_SCHEMES = frozenset({"http", "https", "file"})


def url_digest(url: str) -> str:
    """The digest of the whole URL that its recorded form ends with."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:DIGEST_LENGTH]


def recorded_url(url: str) -> str:
    """``scheme://host[:port]/path#sha256=<digest of the whole URL>``."""
    digest = url_digest(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        if parts.scheme.lower() in PLACE_SCHEMES:
            bare = urlunsplit((parts.scheme, host, parts.path, "", ""))
        else:
            bare = f"{parts.scheme}:" if parts.scheme.isalnum() else ""
    except ValueError:  # a malformed URL (recorded as bad_url): keep only its digest
        bare = ""
    return f"{bare}{DIGEST_MARK}{digest}"


def recorded_from(recorded: str, url: str) -> bool:
    """Whether ``recorded`` (a row's or failure record's source URL) was recorded from ``url``.

    Only the digests are compared: the plan asks this of every row when the catalog changes,
    and parsing a million URLs again would cost seconds at every parse.
    """
    _, mark, digest = recorded.rpartition(DIGEST_MARK)
    return bool(mark) and digest == url_digest(url)
