"""Settings of a stream worker: one serialisable dataclass shared by ``worker``, ``cluster`` and the Ray actors.

Pure data with no heavy imports, so the CLI builds its options (and their
defaults) from these fields without loading torch or redis.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.limits import DEFAULT_MAX_PIXELS, FRAME_MAX_ASPECT, FRAME_MIN_STD
from ..model.config import DEFAULT_PRECISION, DEFAULT_RUNTIME
from .protocol import StreamConfig

if TYPE_CHECKING:
    from ..io.keeping import KeepPolicy

#: scores and frames kept per product for drift, the score ratio that (when significant) raises the alert, and
#: the shift of the frames' image statistics, in held-out spreads, that raises it (``stream.drift``)
DEFAULT_DRIFT_WINDOW = 1000
DEFAULT_DRIFT_ALERT = 1.5
DEFAULT_DRIFT_SHIFT = 1.0
#: share of passed items whose original image is kept with ``--keep-images`` (the review sample; flagged ones
#: are all kept): 1 in 100, enough to find escapes in review, small next to the flagged ones on a real line
DEFAULT_KEEP_PASSED = 0.01
#: what happens to a claim check's object once its row is durable (``stream.payloads``)
PAYLOAD_AFTER = ("delete", "keep")
#: how a producer picks the shard of an entry (``stream.shards``): in turn, or by product (one shard per product)
SPREAD_CHOICES = ("round-robin", "product")


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerConfig:
    redis_url: str
    models_dir: Path
    out_dir: Path
    name: str = field(default_factory=default_worker_name)
    stream: StreamConfig = field(default_factory=StreamConfig)
    batch_size: int = 32
    device: str = "auto"
    dino_weights: Path | None = None
    #: per-run tiling of native-resolution models (None: each model's own)
    tile: int | None = None
    tile_overlap: int | None = None
    #: per-run image threshold for every product (None: each model's own, reloaded when revised)
    threshold: float | None = None
    #: how often a model's manifest is checked for a threshold revision (seconds)
    reload_every_s: float = 2.0
    #: scores and frames kept per product for drift, the score ratio and the input shift that raise the alert
    drift_window: int = DEFAULT_DRIFT_WINDOW
    drift_alert: float = DEFAULT_DRIFT_ALERT
    drift_shift: float = DEFAULT_DRIFT_SHIFT
    flush_rows: int = 256
    flush_seconds: float = 2.0
    block_ms: int = 500
    claim_every_s: float = 5.0
    heartbeat_every_s: float = 2.0
    decode_threads: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 8
    #: decoded pixels one batch may hold: entries past it wait (still pending, held here) for the next
    #: batch, so memory follows pixels, not entries (a whole-image model counts its reduced decode)
    max_batch_pixels: int = 64_000_000
    #: frame sanity (``ear_stream.io.decode.frame_issue``): near-constant and absurdly thin frames are written
    #: with ``frame_check`` set and never pass as ``ok``; 0 turns a check off
    frame_min_std: float = FRAME_MIN_STD
    frame_max_aspect: float = FRAME_MAX_ASPECT
    exit_when_idle_s: float | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: start even if Redis' maxmemory-policy may evict keys (it can evict the input stream)
    allow_eviction: bool = False
    #: where dead letters a full Redis refuses are kept until it has room (None: beside a local results
    #: folder, ``OUT-dlq-spill``; the user's state folder for an object store; ``stream.spill.default_dir``)
    dlq_spill_dir: Path | None = None
    #: the U-Net's numeric path (``ear_stream.model.precision``) and whether to compile it for inference
    precision: str = DEFAULT_PRECISION
    compile: bool = False
    #: what runs the scoring function: ``torch`` or an export format (``ear_stream.export.live``)
    runtime: str = DEFAULT_RUNTIME
    #: where the original images of flagged items and of the passed review sample are kept (a folder or a
    #: pyarrow filesystem URI; None: nothing is kept), the passed share, and the store's retention: a byte
    #: budget and an age in days, oldest first (``ear_stream.io.keeping``)
    keep_images: str | Path | None = None
    keep_passed: float = DEFAULT_KEEP_PASSED
    keep_bytes: int | None = None
    keep_days: float | None = None
    #: also score each product's refined candidate (``MODELS/.candidates/<product>``, ``ear-stream refine``) and
    #: write its score beside the verdict (``shadow_score``, ``shadow_version``); the verdict stays the promoted
    #: model's
    shadow: bool = False
    #: the store claim-check entries resolve in (a folder or a pyarrow filesystem URI; None: such entries are
    #: dead-lettered ``payload_invalid``), how many objects are fetched at once, and what happens to an object
    #: once its row is durable: ``delete`` (the claim is consumed) or ``keep`` (``stream.payloads``)
    payload_store: str | None = None
    fetch_threads: int = 8
    payload_after: str = "delete"
    #: with ``stream.shards > 1``: the shards this worker reads (None: all of them), one loop each
    own_shards: list[int] | None = None

    def keep_policy(self) -> KeepPolicy | None:
        """What ``--keep-images`` and its retention options describe (None when nothing is kept)."""
        if self.keep_images is None:
            return None
        from ..io.keeping import KeepPolicy

        return KeepPolicy(str(self.keep_images), self.keep_passed, self.keep_bytes, self.keep_days)

    def to_dict(self) -> dict[str, Any]:
        """JSON types only (paths as strings): what crosses to a Ray actor, no pickled objects."""
        data = dataclasses.asdict(self)
        for key in ("models_dir", "out_dir", "dino_weights", "dlq_spill_dir", "keep_images"):
            if data[key] is not None:
                data[key] = str(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerConfig:
        values = dict(data)
        values["stream"] = (
            StreamConfig(**values["stream"])
            if isinstance(values.get("stream"), dict)
            else values.get("stream", StreamConfig())
        )
        for key in ("models_dir", "dino_weights", "dlq_spill_dir"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        out = values.get("out_dir")
        if out is not None and "://" not in str(out):  # a filesystem URI stays a string
            values["out_dir"] = Path(out)
        return cls(**values)
