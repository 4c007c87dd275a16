"""Keeping secrets out of every text pdsync stores or shows.

An error can carry what pdsync sent: a proxy or gateway that echoes the request headers puts
the API token in its reply body, and a base URL may hold a password. Every error text that
can reach a log line, the database, the CLI or a page goes through ``Redactor.text`` first.
"""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus

MASK = "[redacted]"

# scheme://user:password@host or scheme://user@host: the user part is hidden too, it is
# often the token itself. Up to the last @ before a space: a password may hold @ or /
# (hiding a path that holds an @ as well is the safe mistake).
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)\S*@")


def url_without_credentials(url: str) -> str:
    """``http://user:pass@host/path`` -> ``http://[redacted]@host/path``."""
    return _URL_CREDENTIALS.sub(rf"\1{MASK}@", url)


class Redactor:
    """Replaces the given secrets (and their URL-encoded forms) and URL credentials."""

    def __init__(self, *secrets: str | None) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            forms.update({secret, quote(secret, safe=""), quote_plus(secret), quote(secret)})
        # Longest first, so an encoded form is not half-replaced by a shorter one.
        self._forms = sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)

    def add(self, secret: str | None) -> None:
        self._forms = Redactor(secret, *self._forms)._forms

    def text(self, value: object) -> str:
        text = "" if value is None else str(value)
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return url_without_credentials(text)


def bad_header_value(value: str) -> str | None:
    """Why ``value`` cannot go into an HTTP header (None when it can).

    Control characters would let a value split the request (or make httpx raise with the
    value in its message); HTTP/1.1 headers are ASCII.
    """
    if not value.isascii():
        return "it has non-ASCII characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "it has control characters (a newline or a tab?)"
    return None
