"""Who may drive the station: one ASGI middleware in front of every route (docs/design.md, "Labels and the
review station").

A page on another origin must not write labels or change a threshold through a reviewer's browser. Another
port of localhost is another origin but the *same site*, so SameSite cookies still ride along; a DNS name
rebound to 127.0.0.1 is another origin whose requests reach the loopback socket. Hence, for every request:

* **Host** must be one of the station's own names for its port (:meth:`ReviewConfig.host_headers`), GETs
  included, else 400: a rebound name never gets a page, a JSON state or an image;
* with ``--token``, the token (query once, then an HttpOnly SameSite=Strict cookie per port, or
  ``Authorization: Bearer``), else 401;

and for every state-changing request (any method but GET/HEAD/OPTIONS):

* **Origin** (or, without one, the Referer's origin) equal to ``http://<Host>``, else 403;
* **Content-Type** ``application/json``, else 415: a form or a ``text/plain`` body is what another origin can
  send without a CORS preflight;
* the station's **CSRF token** (a per-process secret embedded in its pages) in ``X-CSRF-Token``, compared in
  constant time, else 403.

Every response, refusals included, carries the security headers (:data:`SECURITY_HEADERS`): a CSP without
inline script, nosniff, no framing, no cross-origin embedding of its images.
"""

from __future__ import annotations

import secrets
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from .config import ReviewConfig

#: the page loads its script, style and images from the station only; no inline script (the state is a
#: JSON data block, never executed), no plugins, no <base>, no framing
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.encode(), value.encode())
    for name, value in (
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    )
)
#: methods that change nothing (Starlette's routes accept nothing else without a body)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: the header the page's script sends the CSRF token in
CSRF_HEADER = "x-csrf-token"
JSON_TYPE = "application/json"


def cookie_name(port: int) -> str:
    """The token cookie of the station on ``port``: cookies ignore ports, so two stations keep two names."""
    return f"ear_review_token_{port}"


class Guard:
    """ASGI middleware: the checks of this module's docstring, then the application."""

    def __init__(self, app: Any, cfg: ReviewConfig, csrf_token: str) -> None:
        self.app, self.token, self.csrf_token = app, cfg.token, csrf_token
        self.hosts = cfg.host_headers()
        self.cookie = cookie_name(cfg.port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (the station has no websocket route)
            await self.app(scope, receive, send)
            return
        send = with_headers(send, SECURITY_HEADERS)
        request = Request(scope)
        refusal = self.refusal(request)
        if refusal is not None:
            status, reason = refusal
            await PlainTextResponse(reason, status)(scope, receive, send)
            return
        if self.token is not None and request.query_params.get("token"):
            send = with_headers(send, ((b"set-cookie", self.token_cookie()),))
        await self.app(scope, receive, send)

    def refusal(self, request: Request) -> tuple[int, str] | None:
        """(status, reason) of the first check the request fails, or None."""
        checks = [self.host_refusal, self.token_refusal]
        if request.method not in SAFE_METHODS:
            checks += [self.origin_refusal, self.type_refusal, self.csrf_refusal]
        for check in checks:
            refusal = check(request)
            if refusal is not None:
                return refusal
        return None

    def host_refusal(self, request: Request) -> tuple[int, str] | None:
        if request.headers.get("host", "").lower() in self.hosts:
            return None
        return 400, "unknown Host: open the station under the address `ear-stream review` printed (or --allow-host)"

    def token_refusal(self, request: Request) -> tuple[int, str] | None:
        if self.token is None:
            return None
        given = request.query_params.get("token") or request.cookies.get(self.cookie) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:]
        if secrets.compare_digest(given.encode(), self.token.encode()):
            return None
        return 401, "a token is needed: open the URL `ear-stream review` printed"

    def origin_refusal(self, request: Request) -> tuple[int, str] | None:
        own = f"http://{request.headers.get('host', '').lower()}"
        if request_origin(request) == own:
            return None
        return 403, "cross-origin request refused: only the station's own pages may change labels or thresholds"

    def type_refusal(self, request: Request) -> tuple[int, str] | None:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        return None if media == JSON_TYPE else (415, f"send {JSON_TYPE}")

    def csrf_refusal(self, request: Request) -> tuple[int, str] | None:
        given = request.headers.get(CSRF_HEADER, "")
        if secrets.compare_digest(given.encode(), self.csrf_token.encode()):
            return None
        return 403, "missing or stale CSRF token: reload the page"

    def token_cookie(self) -> bytes:
        cookie: SimpleCookie = SimpleCookie()
        cookie[self.cookie] = self.token or ""
        morsel = cookie[self.cookie]
        morsel["httponly"] = True
        morsel["samesite"] = "Strict"
        morsel["path"] = "/"
        return cookie.output(header="").strip().encode()


def request_origin(request: Request) -> str | None:
    """The origin a request says it comes from: its Origin header, else its Referer's scheme and host."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.lower()
    referer = request.headers.get("referer")
    if not referer:
        return None
    parts = urlsplit(referer)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else None


def with_headers(send: Send, headers: tuple[tuple[bytes, bytes], ...]) -> Send:
    """``send`` that adds ``headers`` to the response start."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return wrapped
