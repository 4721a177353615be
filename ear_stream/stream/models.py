"""The worker's models: one pipeline per product from ``MODELS_DIR/<product>/``, loaded on first use, hot-reloaded.

A threshold revision (``ear-stream threshold``) is applied to a copy of the pipeline in hand (sharing its
networks); new weights or a new config load a new pipeline. Either way the batch in flight keeps the object it
was decoded for. A reload that fails for any reason never stops good scoring: the model in hand keeps
scoring and the failure is kept in :attr:`ModelRegistry.reload_errors` (heartbeat, ``status``, a gauge) until a
reload works. :class:`BatchModels` is what one batch sees: each product looked up once, so a reload lands
between batches, never between the decoding and the scoring of the same entries.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from pathlib import Path

from ..errors import ConfigError, EarStreamError
from ..inspect.pipeline import Pipeline
from ..io.labels import weights_of
from ..model.artifact import MANIFEST_FILE, load_manifest
from ..model.config import DEFAULT_PRECISION, DEFAULT_RUNTIME
from .settings import WorkerConfig

log = logging.getLogger("ear_stream.stream.worker.models")  # a child of the worker's logger, as before the split


class UnknownProduct(EarStreamError, LookupError):
    """No ``MODELS_DIR/<product>/manifest.json``: the entry's dead letter is ``unknown_product``."""


class ModelRegistry:
    """One pipeline per product from ``MODELS_DIR/<product>/``, loaded on first use."""

    def __init__(
        self,
        models_dir: Path,
        device: str,
        dino_weights: Path | None,
        tile: int | None = None,
        tile_overlap: int | None = None,
        threshold: float | None = None,
        reload_every_s: float = 2.0,
        precision: str = DEFAULT_PRECISION,
        compile: bool = False,
        runtime: str = DEFAULT_RUNTIME,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.precision = precision
        self.compile = compile
        self.runtime = runtime
        self.device = device
        self.dino_weights = dino_weights
        self.tiling = (tile, tile_overlap)
        self.threshold = threshold
        self.reload_every_s = reload_every_s
        self._stamps: dict[str, tuple[float, tuple[int, int]]] = {}  # product → (last check, manifest stat)
        self._pipes: dict[str, Pipeline] = {}
        self._lock = threading.Lock()
        #: product → why its latest manifest did not load (the previous model keeps scoring); empty when all did
        self.reload_errors: dict[str, str] = {}
        self.reload_failures = 0

    @classmethod
    def for_worker(cls, cfg: WorkerConfig, models_dir: Path | None = None) -> ModelRegistry:
        """The registry a worker's settings describe (models folder, device, tiling, threshold, precision);
        ``models_dir`` another folder with the same settings (the candidates of ``--shadow``)."""
        return cls(
            models_dir or cfg.models_dir,
            cfg.device,
            cfg.dino_weights,
            cfg.tile,
            cfg.tile_overlap,
            cfg.threshold,
            cfg.reload_every_s,
            cfg.precision,
            cfg.compile,
            cfg.runtime,
        )

    def get(self, product: str) -> Pipeline:
        with self._lock:
            if product not in self._pipes:
                path = self.models_dir / product  # product names are validated: no path traversal
                if not is_product_dir(path):
                    raise UnknownProduct(f"no model for product {product!r} in {self.models_dir}")
                self._pipes[product] = self._load(path)
                self._stamps[product] = (time.monotonic(), self._stat(path))
            elif time.monotonic() - self._stamps[product][0] >= self.reload_every_s:
                self._maybe_reload(product)
            return self._pipes[product]

    def _load(self, path: Path) -> Pipeline:
        # resolved once: a product promoted by ``ear-stream promote`` is a link to one version's folder, swapped
        # atomically; manifest and weights must come from the same version even if the link moves meanwhile
        if self.runtime != DEFAULT_RUNTIME:  # an exported graph (exported on first use, cached per version)
            from ..export.live import runtime_pipeline

            return runtime_pipeline(path.resolve(), self.runtime, self.device, self.dino_weights, self.threshold,
                                    self.precision)  # fmt: skip
        return Pipeline.from_artifact(
            path.resolve(),
            self.device,
            self.dino_weights,
            *self.tiling,
            threshold=self.threshold,
            precision=self.precision,
            compile=self.compile,
        )

    def warm_up(self, batch_size: int) -> float:
        """Load every model in the folder and score blank batches (compilation, kernel selection) before the
        first read, so the first real entries do not pay for it; returns seconds. A model that fails to load
        is left for its entries to dead-letter as ``model_error``."""
        started = time.monotonic()
        for path in sorted(p for p in self.models_dir.iterdir() if is_product_dir(p)):
            try:
                pipe = self.get(path.name)
                seconds = pipe.warm_up((1, max(2, min(batch_size, 8))))
                log.info("%s: warmed up in %.1fs (%s)", path.name, seconds, pipe.precision.describe())
            except Exception as exc:  # noqa: BLE001 - any failure here is reported per entry later
                log.warning("%s: not warmed up (%s)", path.name, exc)
        return time.monotonic() - started

    @staticmethod
    def _stat(path: Path) -> tuple[int, int]:
        st = (path / MANIFEST_FILE).stat()
        return st.st_mtime_ns, st.st_size

    def _maybe_reload(self, product: str) -> None:
        """Pick up ``ear-stream threshold`` revisions (new thresholds only) or new weights or config (full reload).

        Whatever goes wrong reading the new manifest or weights — a half-written file, a hostile manifest, a
        weights file that does not fit — the model in hand keeps scoring; the failure is logged once per
        distinct error, counted, and shown in :attr:`reload_errors` (heartbeat, ``status``) until a reload works.
        """
        path = self.models_dir / product
        stat = self._stamps[product][1]
        try:
            stat = self._stat(path)
            if stat == self._stamps[product][1]:
                self._stamps[product] = (time.monotonic(), stat)
                return
            manifest = load_manifest(path)
            pipe = self._pipes[product]
            if weights_of(manifest.model_version) == weights_of(pipe.model_version):
                # a copy (sharing the networks) takes the new thresholds: the batch being scored with the old
                # object keeps one threshold and one version for all of its rows
                revised = copy.copy(pipe)
                revised.apply_thresholds(manifest, self.threshold)
                self._pipes[product] = revised
                log.info(
                    "%s: thresholds revised (image %.5g, version %s)", product, revised.threshold, revised.model_version
                )
            else:
                self._pipes[product] = self._load(path)
                log.info("%s: new model loaded (version %s)", product, self._pipes[product].model_version)
            if self.reload_errors.pop(product, None) is not None:
                log.info("%s: reloading works again", product)
        except Exception as exc:  # noqa: BLE001 - a bad model file never stops good scoring
            message = f"{type(exc).__name__}: {exc}"[:500]
            if self.reload_errors.get(product) != message:
                log.warning("%s: not reloading, the model in hand keeps scoring (%s)", product, message)
            self.reload_errors[product] = message
            self.reload_failures += 1
        self._stamps[product] = (time.monotonic(), stat)

    def known(self) -> list[str]:
        # the prefetch thread loads and reloads while the heartbeat reads: copy first (one C call, atomic under
        # the GIL; not the lock, which a loading model holds for seconds)
        return sorted(list(self._pipes))

    def errors(self) -> dict[str, str]:
        """A snapshot of :attr:`reload_errors`, taken like :meth:`known`'s."""
        return dict(self.reload_errors)


def is_product_dir(path: Path) -> bool:
    """A product's model: ``<product>/manifest.json``, the name not starting with a dot (``.candidates``,
    ``.versions`` and a promotion's temporary link are the folder's own)."""
    return not path.name.startswith(".") and (path / MANIFEST_FILE).is_file()


def check_models_dir(models_dir: Path) -> list[str]:
    """The products a worker can score (``MODELS/<product>/manifest.json``); a folder with none is refused.

    A worker started on one model's own folder, or on an empty or mistyped one, would read every entry and
    dead-letter all of them as ``unknown_product``: it says so in one line before it reads anything.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ConfigError(f"--models {models_dir} is not a folder (MODELS/<product>/ holds one model per product)")
    if (models_dir / MANIFEST_FILE).is_file():
        raise ConfigError(
            f"--models {models_dir} is one model's folder; pass the folder that holds it "
            f"({models_dir.parent}: MODELS/<product>/, the product being {models_dir.name!r})"
        )
    products = sorted(p.name for p in models_dir.iterdir() if is_product_dir(p))
    if not products:
        raise ConfigError(f"--models {models_dir} holds no model (MODELS/<product>/{MANIFEST_FILE}): nothing to score")
    return products


class BatchModels:
    """The pipelines of one batch: each product is looked up in the registry once, and what it gave is kept.

    A product whose model cannot be had keeps the exception (:class:`UnknownProduct`, or whatever loading
    raised), so every entry of it is dead-lettered with the same reason without loading it again.
    """

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        #: the products whose pipeline was found, and that pipeline: what the batch is scored with
        self.pipes: dict[str, Pipeline] = {}
        self._errors: dict[str, Exception] = {}

    def lookup(self, product: str) -> Pipeline | Exception:
        """The product's pipeline, or why there is none (the same answer for the rest of the batch)."""
        if product in self.pipes:
            return self.pipes[product]
        if product not in self._errors:
            try:
                self.pipes[product] = self._registry.get(product)
                return self.pipes[product]
            except Exception as exc:  # noqa: BLE001 - any failure to build a model is the entries' dead letter
                self._errors[product] = exc
        return self._errors[product]
