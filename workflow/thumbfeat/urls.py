"""Image URLs outside of fetching them: which can be fetched at all, how messages show them, and
the form in which one is recorded beside its results.

The catalog warns before a run with the same checks that the fetcher applies (thumbfeat.fetch),
so a warning names exactly the images that will fail as ``bad_url``.

Catalog URLs may carry secrets (``user:password@`` or ``?token=...``), which stay in the catalog
and its snapshot and appear nowhere else. Rows and failure records keep the URL without them, with
a digest of the whole URL as its fragment, so any change of the URL (its query included) is
still noticed by comparing recorded forms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

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


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched at all, or None when it is worth trying."""
    if not url:
        return "the URL is empty"
    if any(ord(char) < 32 or ord(char) == 127 for char in url):
        return "the URL contains control characters"
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        return f"malformed URL ({exc})"
    scheme = parts.scheme.lower()
    if scheme in {"http", "https"}:
        return None if parts.hostname else "the URL has no host"
    if scheme == "file":
        return None
    if not scheme:
        return "not a URL (no scheme such as https://)"
    return f"unsupported URL scheme {scheme!r} (expected http, https or file)"


def display_url(url: str, limit: int = 120) -> str:
    """A URL fit for messages: no user or password, query and fragment replaced by '...', and
    nothing after the scheme of schemes that are not fetched."""
    try:
        parts = urlsplit(url)
        if parts.scheme and parts.scheme.lower() not in PLACE_SCHEMES:
            # javascript:, data: and the like can carry anything after the colon.
            return f"{parts.scheme}:..."
        netloc = parts.netloc.rsplit("@", 1)[-1]
        shown = urlunsplit((parts.scheme, netloc, parts.path, "...", "") if parts.query
                           else (parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        shown = url.split("?", 1)[0].split("#", 1)[0]
    return shown if len(shown) <= limit else shown[:limit] + "..."


def local_file_problem(url: str, roots: Sequence[str]) -> str | None:
    """Why a ``file:`` URL may not be read under ``roots``, or None when it may.

    The same check warns before a run (thumbfeat.catalog.url_warnings) and refuses at fetch time.
    """
    if not roots:
        return "file:// sources are not allowed by the configuration (set local_file_roots)"
    parts = urlsplit(url)
    if parts.netloc not in {"", "localhost"}:
        return f"file URL names a remote host {parts.hostname!r}"
    path = Path(unquote(parts.path)).resolve()
    if not any(path.is_relative_to(Path(root).resolve()) for root in roots):
        return "file is outside the allowed local_file_roots"
    return None
