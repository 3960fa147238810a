"""The console's login: an API token exchanged for a signed, HTTP-only session cookie, and CSRF.

A visitor signs in with a token of ``VIGIL_API_TOKENS`` (compared with every token in constant
time, as the HTTP API does); the cookie then carries the user's name and a random CSRF token,
signed with ``itsdangerous`` and dated, so that it expires after ``console_session_s``. Every
form carries the CSRF token in a hidden field and every POST is refused (403) unless it matches
the cookie's. An anonymous visitor gets a cookie too (no user, a CSRF token) so that the login
form itself is protected.

The signing key is ``console_secret``; unset, one is generated once into ``<home>/console_secret``
(mode 0600) and read from there afterwards, so sessions survive a restart.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

from agent.settings import Settings
from tools.errors import ConfigError

__all__ = ["COOKIE", "Session", "SessionCodec", "console_secret", "user_for_token"]

COOKIE = "vigil_console"
_SALT = "vigil-console-session"


@dataclass(frozen=True)
class Session:
    """What the cookie holds: the signed-in user (None: anonymous) and the CSRF token."""

    user: str | None
    csrf: str

    def csrf_ok(self, given: str | None) -> bool:
        """True when ``given`` is this session's CSRF token (constant-time comparison)."""
        return bool(given) and hmac.compare_digest(str(given).encode(), self.csrf.encode())


def console_secret(settings: Settings) -> str:
    """The key that signs session cookies: the setting, else a generated one kept in ``home``.

    Raises:
        ConfigError: The generated key's file cannot be written (``console_secret`` names the
            setting to set instead).
    """
    if settings.console_secret:
        return settings.console_secret
    path = Path(settings.home) / "console_secret"
    try:
        if path.is_file():
            kept = path.read_text(encoding="utf-8").strip()
            if kept:
                return kept
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(fresh)
        return fresh
    except FileExistsError:  # another process wrote it first: use theirs
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            "console_secret", str(path), f"cannot keep a generated key ({exc}); set it"
        ) from None


def user_for_token(settings: Settings, token: str) -> str | None:
    """The user an API token belongs to, or None (compared with every token, in constant time)."""
    given = token.strip().encode()
    user = None
    for known, name in settings.api_tokens.items():
        if hmac.compare_digest(given, known.encode()):
            user = name
    return user if given else None


class SessionCodec:
    """Signs sessions into cookie values and reads them back.

    Args:
        secret: The signing key.
        max_age_s: A cookie older than this is ignored (the visitor signs in again).
    """

    def __init__(self, secret: str, max_age_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT)
        self.max_age_s = max_age_s

    def dumps(self, session: Session) -> str:
        """The cookie value of ``session``."""
        return str(self._serializer.dumps({"u": session.user, "c": session.csrf}))

    def loads(self, value: str | None) -> Session | None:
        """The session in a cookie value; None when missing, forged, malformed or expired."""
        if not value:
            return None
        try:
            data = self._serializer.loads(value, max_age=self.max_age_s)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        user = data.get("u")
        return Session(user=user if isinstance(user, str) and user else None, csrf=data["c"])

    @staticmethod
    def anonymous() -> Session:
        """A fresh session with nobody signed in."""
        return Session(user=None, csrf=secrets.token_urlsafe(24))

    @staticmethod
    def signed_in(user: str) -> Session:
        """A fresh session for ``user`` (a new CSRF token: no fixation across the login)."""
        return Session(user=user, csrf=secrets.token_urlsafe(24))
