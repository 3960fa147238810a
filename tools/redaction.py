"""Passwords out of everything Vigil prints or logs: one helper for URLs, one for free text.

:func:`redact_url` is for a URL Vigil is about to show (a setting, a store in an error message);
:func:`hide_passwords` is the safety net over text that may quote one (an exception's message, a
log record, an HTTP error body), and :class:`RedactingFilter` applies it to log records. The
CLI's error printer, the HTTP error bodies, ``config show``, ``doctor`` and the log handlers of
``vigil`` all go through these.
"""

from __future__ import annotations

import logging
import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["HIDDEN", "RedactingFilter", "hide_passwords", "install_log_redaction", "redact_url"]

HIDDEN = "***"
"""What a password is replaced by."""

# scheme://user:password@  (the user may be empty; the password ends at the last '@' before
# the host, so a password holding '@' or ':' unencoded is hidden whole).
_USERINFO = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@?#]*:)(?P<password>[^\s/?#]*)(?P<at>@)"
)


def hide_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it hidden.

    Args:
        text: Any text: an error message, a log line, a URL.

    Returns:
        The same text, each password replaced by ``***`` (the user and host kept).
    """
    if "://" not in text:
        return text
    return _USERINFO.sub(lambda m: f"{m['head']}{HIDDEN}{m['at']}", text)


def redact_url(url: str | URL) -> str:
    """A database or endpoint URL as it may be printed or logged: its password hidden.

    Args:
        url: A SQLAlchemy URL, or a plain connection string (``postgresql://``, ``https://``).

    Returns:
        The URL with its password replaced by ``***``; text that is no URL comes back with any
        ``user:password@`` in it hidden all the same.
    """
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        parsed = make_url(url)
    except ArgumentError:
        return hide_passwords(url)
    if parsed.password is None:
        return hide_passwords(url)  # keep the text as given (no re-quoting)
    return parsed.render_as_string(hide_password=True)


class RedactingFilter(logging.Filter):
    """A logging filter that hides passwords in a record's message and its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        message = record.getMessage()
        safe = hide_passwords(message)
        if safe != message:
            record.msg, record.args = safe, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = hide_passwords(formatted)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add a :class:`RedactingFilter` to every handler of ``logger`` (the root one by default).

    Idempotent: a handler that has one already is left alone.

    Args:
        logger: The logger whose handlers to guard.
    """
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
