"""Allow-lists of hosts the daemon may send a request to on someone else's say-so.

Three kinds of URL reach the daemon from outside: a provider's output URL (to
download), a job's input image URL (handed to the provider), and a job's callback
URL (POSTed to). Each is an SSRF hole unless its host is one the operator listed.
An entry is `host` or `host:port`, matched over https only; `http://host[:port]`
admits plain http for that host too (a private network, or loopback in tests).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from typing import Final

import attrs

_HTTP = "http://"
_HTTPS = "https://"
_PRINTABLE: Final = re.compile(r"[!-~]+")


@attrs.frozen
class HostList:
    """Hosts, each with the schemes allowed for it; empty allows nothing."""

    entries: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def parse(cls, raw: Iterable[str], *, schemes: Iterable[str] = ("https",)) -> HostList:
        """Entries as configured: `host`, `host:port` or `http://host[:port]`, any case.

        `schemes` are those a bare entry allows; an `http://` entry adds http.
        """
        entries: set[tuple[str, str]] = set()
        for entry in raw:
            text = entry.strip().lower().rstrip("/")
            if not text:
                continue
            if text.startswith(_HTTP):
                host = text.removeprefix(_HTTP)
                entries.update({("http", host), ("https", host)})
                continue
            host = text.removeprefix(_HTTPS)
            entries.update((scheme, host) for scheme in schemes)
        return cls(frozenset(entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def problem(self, url: str, *, setting: str) -> str | None:
        """Why a request to `url` is refused (naming the `setting` to change), or None.

        A URL with whitespace, a control character or anything beyond printable
        ASCII is refused outright: URL parsers disagree about those (an HTTP client
        may refuse the very URL this check let through).
        """
        if not _PRINTABLE.fullmatch(url):
            return "it holds whitespace, a control character or non-ASCII text"
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port
        except ValueError:
            return "its port is not a number"
        if parts.scheme not in {"http", "https"} or not host:
            return f"it is not an http(s) URL with a host (scheme {parts.scheme or 'none'!r})"
        if parts.username is not None or parts.password is not None:
            return "it carries credentials"
        with_port = f"{host}:{port}" if port is not None else host
        if (parts.scheme, host) in self.entries or (parts.scheme, with_port) in self.entries:
            return None
        return f"{parts.scheme}://{with_port} is not on {setting}"


def origin(url: str) -> str:
    """`scheme://host[:port]` of a URL, without credentials, path or query.

    What a log line, a page or a CSP source may show of a URL whose path and query
    can carry someone's secrets (a callback's token, a presigned signature).
    """
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
