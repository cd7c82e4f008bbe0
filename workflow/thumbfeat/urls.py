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


def recorded_url(url: str) -> str:
    """``scheme://host[:port]/path#sha256=<digest of the whole URL>``."""
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:DIGEST_LENGTH]
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        bare = urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:  # a malformed URL (recorded as bad_url): keep only its digest
        bare = ""
    return f"{bare}#sha256={digest}"
