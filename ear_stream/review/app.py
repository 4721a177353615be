"""The review station's web application (Starlette + server-side Jinja2 templates; no front-end build step).

Pages: ``/`` (products, counts, queue status) and ``/p/<product>`` (the review queue, keyboard-driven).
JSON: ``GET /api/p/<product>`` (counts, queue, thresholds), ``POST /api/p/<product>/label``
(``{"key", "label"}``) and ``POST /api/p/<product>/threshold`` (apply the F1-optimal threshold of the
reviewed items through ``inspect.thresholds.revise``: atomic, history kept, workers pick it up).
When a token is configured, every request needs it once (``?token=`` sets an HttpOnly, SameSite=Strict
cookie; ``Authorization: Bearer`` also works).
"""

from __future__ import annotations

import getpass
import json
import secrets
import threading
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..errors import EarStreamError
from ..inspect.thresholds import revise
from ..io.labels import Label, LabelStore
from ..model.artifact import MANIFEST_FILE, load_manifest
from ..stream.protocol import PRODUCT_RE
from .config import ReviewConfig
from .items import ProductView, ResultsView, find_image

HERE = Path(__file__).parent
COOKIE = "ear_review_token"


class TokenGate:
    """ASGI middleware: with a token set, a request without it gets 401 (a query token sets a cookie)."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.token is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:]
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            await PlainTextResponse("a token is needed: open the URL `ear-stream review` printed", 401)(
                scope, receive, send
            )
            return

        async def send_with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start" and request.query_params.get("token"):
                cookie: SimpleCookie = SimpleCookie()
                cookie[COOKIE] = self.token
                cookie[COOKIE].update({"httponly": True, "samesite": "Strict", "path": "/"})
                header = cookie.output(header="").strip().encode()
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", header)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


class Station:
    """State behind the routes: the configuration, the label store and one cached view per product."""

    def __init__(self, cfg: ReviewConfig) -> None:
        self.cfg = cfg
        self.store = LabelStore(cfg.labels)  # type: ignore[arg-type]
        self.results = ResultsView(cfg.results, self.store, cfg.passed_sample, cfg.seed)
        self.reviewer = cfg.reviewer or _login()
        self.views: dict[str, ProductView] = {}
        self.lock = threading.Lock()  # label writes and view updates, one at a time
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    # ------------------------------------------------------------------ helpers
    def view(self, product: str, fresh: bool = False) -> ProductView:
        if not PRODUCT_RE.fullmatch(product):
            raise LookupError(product)
        with self.lock:
            if fresh or product not in self.views:
                self.views[product] = self.results.product(product)
            return self.views[product]

    def model_dir(self, product: str) -> Path | None:
        if self.cfg.models is None:
            return None
        path = self.cfg.models / product  # product names are validated: no path traversal
        return path if (path / MANIFEST_FILE).is_file() else None

    def current(self, view: ProductView) -> tuple[str | None, float | None]:
        """(model_version, threshold) now in force: the model's manifest, else the newest result row's."""
        model = self.model_dir(view.product)
        if model is not None:
            m = load_manifest(model)
            return m.model_version, m.threshold
        if not view.items:
            return None, None
        newest = max(view.items.values(), key=lambda it: it.processed_at)
        return newest.model_version, newest.threshold

    def state(self, view: ProductView) -> dict[str, Any]:
        version, threshold = self.current(view)
        return {
            "product": view.product,
            "counts": view.counts(),
            "thresholds": view.threshold_view(version, threshold),
            "can_apply": self.model_dir(view.product) is not None,
            "queue": [it.to_json() for it in view.queue],
        }

    def queue_status(self) -> dict[str, Any] | None:
        if not self.cfg.redis_url:
            return None
        try:
            from ..stream.connection import connect
            from ..stream.protocol import StreamConfig
            from ..stream.status import stream_status

            status = stream_status(connect(self.cfg.redis_url), StreamConfig())
            return {"length": status["length"], "dlq": status["dlq"], "pending": status["group"].get("pending")}
        except Exception as exc:  # noqa: BLE001 - the page works without Redis; it says why the line is empty
            return {"error": f"{type(exc).__name__}: {exc}"}

    # ------------------------------------------------------------------ routes
    def index(self, request: Request) -> Response:
        return self.templates.TemplateResponse(
            request,
            "index.html",
            {"products": self.results.products(), "queue": self.queue_status(), "cfg": self.cfg},
        )

    def product_page(self, request: Request) -> Response:
        view = self.view(request.path_params["product"], fresh=True)
        state = self.state(view)
        return self.templates.TemplateResponse(
            request, "product.html", {"state": state, "state_json": script_json(state), "reviewer": self.reviewer}
        )

    def product_api(self, request: Request) -> Response:
        return JSONResponse(self.state(self.view(request.path_params["product"], fresh=True)))

    def heatmap(self, request: Request) -> Response:
        view = self.view(request.path_params["product"])
        row = view.rows.get(request.path_params["key"])
        if row is None or not row.get("heatmap"):
            return PlainTextResponse("no heatmap kept for this item", 404)
        return Response(row["heatmap"], media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    def image(self, request: Request) -> Response:
        view = self.view(request.path_params["product"])
        item = view.items.get(request.path_params["key"])
        path = None if item is None else find_image(self.cfg.images, view.product, item)
        if path is None:
            return PlainTextResponse("the original image was not kept (or is outside --images)", 404)
        return FileResponse(path)

    async def label(self, request: Request) -> Response:
        body = await request.json()
        view = self.view(request.path_params["product"])
        item = view.items.get(str(body.get("key")))
        if item is None:
            return JSONResponse({"error": "unknown item: reload the page"}, 404)
        label = Label(
            product=view.product,
            id=item.id,
            label=str(body.get("label")),
            flagged=item.flagged,
            score=item.score,
            threshold=item.threshold,
            model_version=item.model_version,
            reviewer=self.reviewer,
        )
        with self.lock:
            self.store.add(label)  # durable before the page moves on
            view.record(item.key, label.__dict__)
        return JSONResponse(self.state(view))

    def apply_threshold(self, request: Request) -> Response:
        view = self.view(request.path_params["product"])
        model = self.model_dir(view.product)
        if model is None:
            return JSONResponse({"error": "start the station with --models to change thresholds"}, 409)
        with self.lock:
            report = revise(model, "f1", None, labels_dir=self.cfg.labels)
        return JSONResponse({"report": report, **self.state(self.view(view.product, fresh=True))})


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element: ids come from producers, and "</script>" must not end it."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "reviewer"


async def _expected_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, 400)


async def _unknown(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("no such product", 404)


def create_app(cfg: ReviewConfig) -> Any:
    """The ASGI application for ``cfg`` (uvicorn serves it; tests start it on a free loopback port)."""
    station = Station(cfg)
    routes = [
        Route("/", station.index),
        Route("/p/{product}", station.product_page),
        Route("/p/{product}/heatmap/{key}.png", station.heatmap),
        Route("/p/{product}/image/{key}", station.image),
        Route("/api/p/{product}", station.product_api),
        Route("/api/p/{product}/label", station.label, methods=["POST"]),
        Route("/api/p/{product}/threshold", station.apply_threshold, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={EarStreamError: _expected_error, LookupError: _unknown})
    app.state.station = station
    return TokenGate(app, cfg.token)
