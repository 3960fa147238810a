"""The console's web plumbing: templates, the session of a request, forms and CSRF, errors.

Every console route runs through :class:`ConsoleRoute`, which turns Vigil's errors into an HTML
page with the API's status codes (404 unknown, 403 not allowed, 409 wrong state, 400 bad
configuration, 503 try again) instead of the API's JSON. A page that needs a user raises
:class:`NeedLogin` when nobody is signed in; the route answers with a redirect to the login page.
"""

from __future__ import annotations

import functools
import math
import urllib.parse
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from agent.console.session import COOKIE, Session, SessionCodec
from agent.report import inline_markdown
from agent.settings import Settings
from tools.errors import (
    ApprovalError,
    ConfigError,
    NotFoundError,
    RetryableError,
    StateError,
    VigilError,
)

__all__ = ["PREFIX", "ConsoleRoute", "Forbidden", "NeedLogin", "Web", "forget_compiled_templates"]

PREFIX = "/console"


class NeedLogin(Exception):
    """Nobody is signed in; the route redirects to the login page."""


class Forbidden(Exception):
    """A POST without the session's CSRF token."""


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _clock(value: datetime | None) -> str:
    """A time of today to the second (when a page's figures were computed)."""
    if value is None:
        return "—"
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%H:%M:%S UTC")


def _ms(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:g} %"


@functools.cache
def _environment() -> Environment:
    """The templates, shared by every app of the process (they depend on no setting), so each
    is compiled once."""
    env = Environment(
        loader=PackageLoader("agent.console", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["pct"] = _pct
    env.filters["clock"] = _clock
    env.filters["ms"] = _ms
    env.filters["md"] = inline_markdown
    env.globals["prefix"] = PREFIX
    return env


def forget_compiled_templates() -> None:
    """Drop the compiled templates, as a new process starts without them (the benchmark)."""
    _environment.cache_clear()


class Web:
    """Renders pages and reads sessions and forms.

    Args:
        settings: Cookie flags and refresh interval.
        codec: Signs and reads the session cookie.
    """

    def __init__(self, settings: Settings, codec: SessionCodec) -> None:
        self.settings = settings
        self.codec = codec
        self.env = _environment()

    def compile_all(self) -> None:
        """Compile every template now (Jinja keeps them), so that no first page pays for it."""
        for name in self.env.list_templates(extensions=["j2"]):
            self.env.get_template(name)

    # -- sessions -----------------------------------------------------------------------------

    def session(self, request: Request) -> tuple[Session, bool]:
        """The request's session and whether it is new (its cookie must be set)."""
        found = self.codec.loads(request.cookies.get(COOKIE))
        if found is not None:
            return found, False
        cached = getattr(request.state, "console_session", None)
        if isinstance(cached, Session):
            return cached, True
        fresh = self.codec.anonymous()
        request.state.console_session = fresh
        return fresh, True

    def user(self, request: Request) -> str:
        """The signed-in user (NeedLogin when nobody is)."""
        session, _ = self.session(request)
        if session.user is None:
            raise NeedLogin
        return session.user

    def set_cookie(self, response: Response, session: Session) -> None:
        """Store ``session`` in the response's cookie (HTTP-only, SameSite=Lax)."""
        response.set_cookie(
            COOKIE,
            self.codec.dumps(session),
            max_age=self.codec.max_age_s,
            httponly=True,
            samesite="lax",
            secure=self.settings.console_secure_cookie,
            path="/",
        )

    async def form(self, request: Request) -> dict[str, str]:
        """The POSTed form (URL-encoded), after its CSRF token was checked (Forbidden if not).

        A field given twice keeps its last value.
        """
        body = (await request.body()).decode("utf-8", errors="replace")
        fields = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
        session, _ = self.session(request)
        if not session.csrf_ok(fields.pop("csrf", None)):
            raise Forbidden
        return fields

    # -- rendering ----------------------------------------------------------------------------

    def page(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """A whole page (or a fragment) rendered with the session's user and CSRF token."""
        session, new = self.session(request)
        html = self.env.get_template(template).render(
            user=session.user,
            csrf=session.csrf,
            refresh_s=self.settings.console_refresh_s,
            notice=request.query_params.get("notice", ""),
            path=request.url.path,
            **context,
        )
        response = HTMLResponse(html, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        # No other site may frame a page with decision buttons on it (clickjacking).
        response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if new:
            self.set_cookie(response, session)
        return response

    def error(self, request: Request, status: int, title: str, message: str) -> HTMLResponse:
        """An error page."""
        return self.page(request, "error.html.j2", status, title=title, message=message)

    @staticmethod
    def svg(document: str | None) -> Markup | None:
        """A chart from :mod:`agent._svg`, inline (its texts were escaped when drawn)."""
        return Markup(document) if document else None


def redirect(url: str, notice: str = "") -> RedirectResponse:
    """A 303 to ``url`` with an optional notice shown on the page."""
    if notice:
        sep = "&" if "?" in url else "?"
        url = f"{url}{sep}{urllib.parse.urlencode({'notice': notice})}"
    return RedirectResponse(url, status_code=303)


_STATUS: list[tuple[type[VigilError], int, str]] = [
    (NotFoundError, 404, "Not found"),
    (ApprovalError, 403, "Not allowed"),
    (StateError, 409, "Not now"),
    (ConfigError, 400, "Invalid"),
    (RetryableError, 503, "Busy, try again"),
]


class ConsoleRoute(APIRoute):
    """A route whose Vigil errors, missing login and bad CSRF become HTML answers."""

    web: Web | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        web = type(self).web

        async def guarded(request: Request) -> Response:
            assert web is not None, "ConsoleRoute.web is set by install_console"
            try:
                return await handler(request)
            except NeedLogin:
                target = urllib.parse.quote(request.url.path)
                return RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)
            except Forbidden:
                return web.error(
                    request, 403, "Forbidden", "The form's CSRF token is missing or stale."
                )
            except VigilError as exc:
                for kind, status, title in _STATUS:
                    if isinstance(exc, kind):
                        return web.error(request, status, title, str(exc))
                return web.error(request, 500, "Error", str(exc))

        return guarded
