"""The review station's web application (Starlette + server-side Jinja2 templates; no front-end build step).

Pages: ``/`` (products, counts, queue status) and ``/p/<product>`` (the review queue, keyboard-driven).
JSON: ``GET /api/p/<product>`` (counts, queue, thresholds), ``POST /api/p/<product>/label``
(``{"key", "label"[, "mask"]}``, ``mask`` the brushed defect region as a base64 PNG) and ``POST /api/p/<product>/threshold`` in two steps: ``{}`` answers the proposal
(the F1-optimal threshold of the reviewed items, its false rejects and escapes there, its false-reject
rate on the model's held-out good images, and why it would be refused); ``{"confirm": true,
"threshold": T, "model_version": V}`` with the proposal's values applies it through
``inspect.thresholds.revise`` (atomic, history kept with the reviewer, workers pick it up).
Who may send these requests is :mod:`.guard`'s business (Host, token, Origin, JSON, CSRF token).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import threading
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..errors import ConfigError, EarStreamError
from ..inspect.threshold_policies import F1Policy
from ..inspect.thresholds import MAX_HELD_OUT_FRR, Refused, propose, revise
from ..io.labels import Label, LabelStore, Mask
from ..model.artifact import MANIFEST_FILE, load_manifest
from ..stream.protocol import PRODUCT_RE
from .config import ReviewConfig, login_name
from .guard import Guard
from .items import MAGIC, KeptImages, ProductView, ResultsView, find_image, read_inside

HERE = Path(__file__).parent
#: the largest request body the station reads (a label or a confirmation is a few dozen bytes)
MAX_BODY = 64 * 1024
#: ... and of a label with a brushed mask (a base64 PNG: a binary mask of a large frame is tens of kB)
MAX_LABEL_BODY = 8 * 1024 * 1024
#: the policy the station proposes and applies: F1-optimal on the items people reviewed
REVIEW_POLICY = F1Policy.name


class Station:
    """State behind the routes: the configuration, the label store and one cached view per product."""

    def __init__(self, cfg: ReviewConfig) -> None:
        self.cfg = cfg
        self.store = LabelStore(cfg.labels)  # type: ignore[arg-type]
        self.results = ResultsView(cfg.results, self.store, cfg.passed_sample, cfg.seed)
        self.kept = KeptImages(cfg.image_stores)
        self.reviewer = cfg.reviewer or login_name()
        #: this process's CSRF secret: in every page, required on every state change (a restart renews it)
        self.csrf_token = secrets.token_urlsafe(32)
        self.views: dict[str, ProductView] = {}
        self.lock = threading.Lock()  # label writes, threshold changes and view updates, one at a time
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescapes every .html

    # ------------------------------------------------------------------ helpers
    def view(self, product: str, fresh: bool = False) -> ProductView:
        if not PRODUCT_RE.fullmatch(product):
            raise LookupError("no such product")
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
            "min_labels_per_class": self.cfg.min_labels_per_class,
            "max_false_reject_rate_on_calibration": MAX_HELD_OUT_FRR,
            "queue": [it.to_json() for it in view.queue],
        }

    def page(self, request: Request, name: str, context: dict[str, Any]) -> Response:
        """A template with what every page needs (the CSRF token its script sends back)."""
        return self.templates.TemplateResponse(request, name, {**context, "csrf_token": self.csrf_token})

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
        context = {"products": self.results.products(), "queue": self.queue_status(), "cfg": self.cfg}
        return self.page(request, "index.html", context)

    def product_page(self, request: Request) -> Response:
        view = self.view(request.path_params["product"], fresh=True)
        state = self.state(view)
        return self.page(
            request, "product.html", {"state": state, "state_json": script_json(state), "reviewer": self.reviewer}
        )

    def product_api(self, request: Request) -> Response:
        return FiniteJSONResponse(self.state(self.view(request.path_params["product"], fresh=True)))

    def heatmap(self, request: Request) -> Response:
        view = self.view(request.path_params["product"])
        row = view.rows.get(request.path_params["key"])
        if row is None or not row.get("heatmap"):
            return PlainTextResponse("no heatmap kept for this item", 404)
        if not bytes(row["heatmap"]).startswith(MAGIC["image/png"]):
            return PlainTextResponse("the heatmap kept for this item is not a PNG", 415)
        return Response(row["heatmap"], media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    def image(self, request: Request) -> Response:
        """The item's original image: the one the line kept (exactly what it scored), else from ``--images``."""
        view = self.view(request.path_params["product"])
        key = request.path_params["key"]
        item, row = view.items.get(key), view.rows.get(key)
        kept = None if row is None else self.kept.read(row.get("image_uri"))
        if kept is not None:
            data, media = kept
            return Response(data, media_type=media, headers={"cache-control": "private, max-age=3600"})
        found = None if item is None else find_image(self.cfg.images, view.product, item)
        if found is None:
            return PlainTextResponse(
                "the original image was not kept, is outside --images or is not a raster image", 404
            )
        path, media = found
        data = read_inside(path, self.cfg.images, media)  # one open, checked: no swap between check and read
        if data is None:
            return PlainTextResponse("the original image is outside --images or is not a raster image", 404)
        return Response(data, media_type=media)

    async def label(self, request: Request) -> Response:
        body = await json_body(request, MAX_LABEL_BODY)
        return FiniteJSONResponse(await run_in_threadpool(self.store_label, request.path_params["product"], body))

    def store_label(self, product: str, body: dict[str, Any]) -> dict[str, Any]:
        view = self.view(product)
        item = view.items.get(str(body.get("key")))
        if item is None:
            raise LookupError("unknown item: reload the page")
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
        mask = brushed_mask(body.get("mask"))
        if mask is not None and label.label != "defect":
            raise ConfigError("a brushed region marks a defect: label the item defect, or clear the brush")
        with self.lock:
            self.store.add(label, mask)  # label and mask durable together, before the page moves on
            view.record(item.key, label.__dict__)
        return self.state(view)

    async def apply_threshold(self, request: Request) -> Response:
        body = await json_body(request)
        return FiniteJSONResponse(await run_in_threadpool(self.threshold_step, request.path_params["product"], body))

    def threshold_step(self, product: str, body: dict[str, Any]) -> dict[str, Any]:
        """The proposal (``confirm`` absent or false), or the confirmed proposal applied."""
        view = self.view(product)
        model = self.model_dir(view.product)
        if model is None:
            raise Refused("start the station with --models to change thresholds")
        labels, minimum = self.cfg.labels, self.cfg.min_labels_per_class
        with self.lock:
            if body.get("confirm") is not True:
                return {"proposal": propose(model, REVIEW_POLICY, None, labels_dir=labels, min_labels=minimum).report}
            expect = (str(body.get("model_version")), finite_number(body.get("threshold")))
            report = revise(
                model, REVIEW_POLICY, None, labels_dir=labels, min_labels=minimum, reviewer=self.reviewer, expect=expect
            )
        return {"report": report, **self.state(self.view(view.product, fresh=True))}


async def json_body(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON object, read up to ``limit`` bytes (the guard checked its content type)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ConfigError(f"a request body of more than {limit} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack
        raise ConfigError("the request body is not JSON (or nested too deeply)") from None
    if not isinstance(body, dict):
        raise ConfigError("the request body is a JSON object")
    return body


def brushed_mask(value: Any) -> Mask | None:
    """The page's brushed region (a base64 PNG, 255 where brushed) as a validated :class:`Mask`, or None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError("a brushed mask is a base64 PNG string")
    try:
        data = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise ConfigError("a brushed mask is a base64 PNG string") from None
    return Mask.from_png(data)


def finite_number(value: Any) -> float:
    """A confirmed threshold: a finite JSON number, nothing else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"confirm with the proposal's threshold (a number), got {str(value)[:40]!r}")
    try:
        number = float(value)  # 10**400 is a JSON number too large for a float
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"confirm with the proposal's threshold (a finite number), got {str(value)[:40]}")
    return number


def finite_json(value: Any) -> Any:
    """``value`` with NaN and ±inf as null: results written by other tools (or a region's stats) may hold them,
    and JSON has no such numbers (``JSON.parse`` refuses them, starlette's encoder raises)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


class FiniteJSONResponse(JSONResponse):
    """Every JSON answer of the station: non-finite numbers become null (:func:`finite_json`)."""

    def render(self, content: Any) -> bytes:
        return super().render(finite_json(content))


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element: ids come from producers, and "</script>" must not end it."""
    text = json.dumps(finite_json(value), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


async def _expected_error(request: Request, exc: Exception) -> Response:
    return FiniteJSONResponse({"error": str(exc)}, 400)


async def _refused(request: Request, exc: Exception) -> Response:
    return FiniteJSONResponse({"error": str(exc)}, 409)


async def _unknown(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/api/"):
        return FiniteJSONResponse({"error": str(exc.args[0]) if exc.args else "not found"}, 404)
    return PlainTextResponse("no such product", 404)


def build_app(cfg: ReviewConfig) -> tuple[Any, Station]:
    """The guarded ASGI application for ``cfg`` and the station behind it (tests read its CSRF token)."""
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
    handlers = {Refused: _refused, EarStreamError: _expected_error, LookupError: _unknown}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return Guard(app, cfg, station.csrf_token), station


def create_app(cfg: ReviewConfig) -> Any:
    """The ASGI application for ``cfg`` (uvicorn serves it; tests start it on a free loopback port)."""
    return build_app(cfg)[0]
