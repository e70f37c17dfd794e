"""Templates (Jinja2, every value escaped), their filters, and the console's CSRF guard."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jinja2
import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse

from chronik.server.console.data import format_seconds

__all__ = ["Csrf", "Renderer", "pretty_json"]

MAX_FORM_BYTES = 64 * 1024


def pretty_json(value: Any) -> str:
    """Indented JSON (non-JSON values shown as text: a console must not crash on them)."""
    from chronik.debugging import to_plain

    try:
        raw = msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError):
        raw = msgspec.json.encode(to_plain(value))
    return msgspec.json.format(raw, indent=2).decode()


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _ago(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = (datetime.now(UTC) - value).total_seconds()
    if seconds < 0:
        return "in " + format_seconds(-seconds)
    return format_seconds(seconds) + " ago"


def _duration(seconds: float | None) -> str:
    return "—" if seconds is None else format_seconds(max(seconds, 0.0))


def _number(value: int | None) -> str:
    return "—" if value is None else f"{value:,}".replace(",", "\u202f")


def _short(text: object, width: int = 80) -> str:
    s = str(text)
    return s if len(s) <= width else s[: width - 1] + "…"


class Renderer:
    """Renders the package's templates, with autoescaping on for every one of them."""

    def __init__(self, globals_: Mapping[str, Any]) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("chronik.server.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            json=pretty_json, when=_when, ago=_ago, duration=_duration, number=_number,
            short=_short,
        )  # fmt: skip
        self.env.globals.update(globals_)

    def page(
        self, request: Request, template: str, *, http_status: int = 200, **context: Any
    ) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")

        def link(path: str, **params: Any) -> str:
            query = {k: v for k, v in params.items() if v is not None and v != ""}
            return f"{base}{path}" + (f"?{urlencode(query)}" if query else "")

        html = self.env.get_template(template).render(
            base=base,
            api_root=base.removesuffix("/console"),
            link=link,
            path=request.url.path.removeprefix(base) or "/",
            **context,
        )
        headers = {
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        }
        return HTMLResponse(html, http_status, headers)


class Csrf:
    """Guards the console's forms: a POST must come from a page of this server (its
    ``Origin``, or else ``Referer``, names this host) and carry the token its form was
    given. The token is made anew by every server process."""

    def __init__(self) -> None:
        self.token = secrets.token_urlsafe(32)

    async def form(self, request: Request) -> dict[str, str]:
        """The POSTed form, once the request is known to come from the console.

        Raises:
            PermissionError: another origin, or no (or a wrong) token.
            ValueError: the form is too large or not url-encoded.
        """
        self._same_origin(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise ValueError("the form must be application/x-www-form-urlencoded")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise ValueError(f"the form is over {MAX_FORM_BYTES} bytes")
        fields = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not hmac.compare_digest(fields.get("csrf", ""), self.token):
            raise PermissionError("the form's token is missing or stale: reload the page")
        return fields

    @staticmethod
    def _same_origin(request: Request) -> None:
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise PermissionError(f"a request from another site ({site}) was refused")
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin is None:
            return  # not a browser's cross-site form (browsers send Origin): the token decides
        parts = urlsplit(origin)
        host = request.headers.get("host", "")
        if origin == "null" or parts.netloc != host:
            raise PermissionError(f"a request from another origin ({origin}) was refused")
