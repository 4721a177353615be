"""Configuration dataclasses: one place for every knob of a model and its training.

Configs are plain dataclasses so that they serialise to the JSON manifest of a
model artifact and load back without pickle.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, Reason
from .registry import AUTO, saliency_names, saliency_spec

#: stabiliser of the gradient-magnitude similarity (RIAD / EAR value): the one Python definition, read by the
#: reference (:mod:`.reference`), the fused ops' defaults (:mod:`.ops`) and ``ScoringConfig.c``
GMS_C = 0.0026
#: weight-free variants (``ear_stream.model.weightfree``): no pretrained weights needed (:mod:`.registry`)
WEIGHT_FREE_SALIENCY = saliency_names(weight_free=True)
#: what a trained model can record; ``auto`` is resolved at training time (see :func:`resolve_saliency`)
SALIENCY_VARIANTS = saliency_names()
SALIENCY_CHOICES = (AUTO, *SALIENCY_VARIANTS)
#: what ``auto`` picks: full EAR when DINO weights are configured, else the best weight-free variant of the
#: study in BENCHMARKS.md
AUTO_WITH_DINO = "dino"
AUTO_WEIGHT_FREE = "spectral"
#: whether weight-free variants keep the unexcised pixels verbatim unless told (study in BENCHMARKS.md)
AUTO_KEEP_CONTEXT = False
MOSAIC_SCALES = (2, 4, 8, 16, 32, 64)
#: failure reason when a model scores NaN/inf (stream DLQ and ``score`` alike): scores fail closed
NON_FINITE_SCORE = Reason.NON_FINITE_SCORE.value
SCHEDULES = ("fixed", "warmup", "sgdr")
#: what a learned head's score map holds (``ScoringConfig.head_map``)
HEAD_MAPS = ("probability", "logit")
#: what ``--precision`` accepts (``ear_stream.model.precision`` resolves ``auto`` per device)
PRECISION_CHOICES = ("auto", "fp32", "bf16", "int8")
DEFAULT_PRECISION = "auto"
#: ``ear-stream export`` formats and the package each one's runtime is (``ear_stream.model.exported``)
EXPORT_RUNTIME_PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino", "aoti": "torch"}
EXPORT_FORMATS = tuple(EXPORT_RUNTIME_PACKAGES)
#: what ``--runtime`` takes: the torch pipeline (the default) or a format, exported on first use
DEFAULT_RUNTIME = "torch"
RUNTIME_CHOICES = (DEFAULT_RUNTIME, *EXPORT_FORMATS)
#: the image threshold policy training applies: at most 1 of the usual 50 held-out good images above the threshold
#: (order statistics: an expected 2/51 ≈ 3.9 % false rejects on new good images); of the policies that stayed
#: within 5 % false rejects on validation in the 60-minute studies, the fewest validation escapes
#: (BENCHMARKS.md, "Detection quality", round 4)
DEFAULT_IMAGE_POLICY = "fpr:0.02"
#: which map pixels form defect regions by default: those above the image threshold itself
DEFAULT_PIXEL_POLICY = "image"
METHODS = ("ear", "riad")


def resolve_saliency(requested: str, has_dino_weights: bool) -> str:
    """``auto`` → ``dino`` when weights are configured, else the best weight-free variant."""
    if requested == AUTO:
        return AUTO_WITH_DINO if has_dino_weights else AUTO_WEIGHT_FREE
    if requested not in saliency_names():
        raise ConfigError(f"saliency must be one of {(AUTO, *saliency_names())}, got {requested!r}")
    return requested


def default_keep_context(saliency: str) -> bool:
    """``keep_context`` when not given: the study's choice for weight-free variants, off for DINO and none."""
    return AUTO_KEEP_CONTEXT and saliency_spec(saliency).weight_free


def default_box(image_size: int) -> int:
    """The paper's 21×21 box at 256 px, scaled with the working resolution (odd, ≥ 3)."""
    k = int(round(21 * image_size / 256))
    return max(3, k if k % 2 else k + 1)


def default_scales(image_size: int) -> int:
    """3 scales at 256 px (coarsest 64 px); one fewer per halving, so the coarsest stays ≥ 32 px."""
    return int(min(3, max(1, round(math.log2(image_size / 32)))))


def max_mosaic_scale(image_size: int) -> int:
    """Largest mosaic scale: S/4, so a mosaic keeps at least 4×4 cells (one cell of the whole image is no hint)."""
    return max(1, image_size // 4)


def min_mosaic_scale(image_size: int, saliency: str) -> int:
    """Smallest mosaic scale the estimator may choose: below it the U-Net can copy its input.

    A whole-image mosaic (a variant without attention, ``none``) must leave at most 16
    tiles a side (m ≥ S/16, never below 8); a masked mosaic keeps the context around
    the excised cells, so it may go finer, but never below 4 px or S/32.
    """
    if not saliency_spec(saliency).attention:
        return max(8, image_size // 16)
    return max(4, image_size // 32)


@dataclass
class ScoringConfig:
    """MSGMS scoring parameters (docs/design.md, "MSGMS score").

    ``scales``/``box``/``border`` left as ``None`` follow the working resolution
    (:func:`default_scales`, :func:`default_box`, half the box); :meth:`resolved`
    fills them in, and the manifest stores the resolved values.

    ``border``: the image max is taken only ``border`` pixels or more away from
    the edges. The box filter pads by replicating the edge, so near the border
    one edge pixel fills up to half of a window; with ``border = box // 2`` the
    max only sees windows that lie inside the image (measured: without it the
    max of good images lands on the border about twice as often as its area share).
    """

    scales: int | None = None
    c: float = GMS_C
    median: bool = True
    box: int | None = None
    border: int | None = None
    #: subtract the per-pixel mean map of the good training images (stored with the weights) before
    #: the max: what is *normally* hard to recover there (the tile edges of a crop) stops scoring
    normal_map: bool = False
    #: what a head model's map holds: ``probability`` (sigmoid, in [0, 1]) or ``logit`` (unbounded: a
    #: saturated probability ties every confident spot at 1.0, a logit keeps ranking them)
    head_map: str = "probability"

    # the resolved values, typed: what the scoring code reads (a config fresh from the user still holds None)
    @property
    def n_scales(self) -> int:
        return self._resolved_field("scales")

    @property
    def box_px(self) -> int:
        return self._resolved_field("box")

    @property
    def border_px(self) -> int:
        return self._resolved_field("border")

    def _resolved_field(self, name: str) -> int:
        value = getattr(self, name)
        if value is None:
            raise ConfigError(f"scoring.{name} follows the resolution: resolve the config first (resolved(image_size))")
        return int(value)

    def resolved(self, image_size: int) -> ScoringConfig:
        box = default_box(image_size) if self.box is None else int(self.box)
        return ScoringConfig(
            scales=default_scales(image_size) if self.scales is None else int(self.scales),
            c=self.c,
            median=self.median,
            box=box,
            border=max(0, box // 2) if self.border is None else int(self.border),
            normal_map=bool(self.normal_map),
            head_map=self.head_map,
        )


@dataclass
class ModelConfig:
    """Everything needed to rebuild a trained model's inference path."""

    #: 128 px and width 16: the configuration the quality study validated at a fixed CPU budget (BENCHMARKS.md)
    image_size: int = 128
    saliency: str = "none"
    mosaic_scale: int = 16
    kernel_size: int = 3
    base_channels: int = 16
    method: str = "ear"
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    #: constructor arguments of a weight-free saliency variant (grid, …), recorded in the manifest
    saliency_params: dict[str, Any] = field(default_factory=dict)
    #: keep the pixels that were not excised verbatim in the reconstruction, Î = S·U(I′) + (1−S)·I,
    #: in training and inference: the U-Net only inpaints, and the map is zero where nothing was hidden
    keep_context: bool = False
    #: ``None``: every image is resized to image_size² (a whole-image model). A number: images are
    #: resampled by this factor with their aspect ratio kept (1.0 = native pixels), the model trains on
    #: random image_size² crops and inspects whole images over overlapping tiles (``tile``)
    scale: float | None = None
    #: tile side for native-resolution inference (a multiple of 32; default image_size, the crop size)
    tile: int | None = None
    #: pixels shared by neighbouring tiles (default tile // 4): keeps the U-Net's edge away from the seams
    tile_overlap: int | None = None
    #: score with the learned anomaly head on [input, recovery, MSGMS map] (``ear_stream.model.head``),
    #: trained on simulated defects, instead of the plain max of the MSGMS map. ``None`` = auto: on for EAR
    #: models trained with simulated defects and no normal map (:meth:`resolved_head`; the 60-minute study's
    #: validation subset preferred it, BENCHMARKS.md); a trained model's manifest holds the resolved value
    head: bool | None = None
    #: the head's base channel count
    head_width: int = 8

    @property
    def native(self) -> bool:
        """Whether images keep their aspect ratio and are inspected in tiles (``--train-crop``)."""
        return self.scale is not None

    @property
    def native_scale(self) -> float:
        """The resampling factor of a native-resolution model (typed: only asked where ``native`` holds)."""
        if self.scale is None:
            raise ConfigError("this model works at a fixed image size, not at native resolution")
        return float(self.scale)

    def __post_init__(self) -> None:
        if isinstance(self.scoring, dict):
            self.scoring = ScoringConfig(**self.scoring)
        self.scoring = self.scoring.resolved(self.image_size)

        saliency_spec(self.saliency)  # a registered variant, or a ConfigError naming them
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(
                f"image_size must be a multiple of 32 (the U-Net halves it 5 times), got {self.image_size}"
            )
        if self.kernel_size not in (3, 5):
            raise ConfigError(f"kernel_size must be 3 or 5, got {self.kernel_size}")
        if self.mosaic_scale < 1:
            raise ConfigError(f"mosaic_scale must be >= 1, got {self.mosaic_scale}")
        if self.scoring.head_map not in HEAD_MAPS:
            raise ConfigError(f"head_map must be one of {HEAD_MAPS}, got {self.scoring.head_map!r}")
        if self.head is True and self.method != "ear":
            raise ConfigError("the learned head scores EAR reconstructions: it needs method 'ear'")
        if self.head is True and self.scoring.normal_map:
            raise ConfigError("the learned head and the normal map are two answers to one problem: pick one")
        if not 4 <= int(self.head_width) <= 128:
            raise ConfigError(f"head_width must be in [4, 128], got {self.head_width}")
        self._check_tiling()

    def _check_tiling(self) -> None:
        if self.scale is None:
            if self.tile is not None:
                raise ConfigError("tiles need a native-resolution model (trained with --train-crop)")
            return
        if not 0.0 < float(self.scale) <= 8.0:
            raise ConfigError(f"scale must be in (0, 8], got {self.scale}")
        if self.method != "ear":
            raise ConfigError("native-resolution training (--train-crop) supports method 'ear' only")
        if self.scoring.normal_map:
            raise ConfigError("a normal map is one image-sized map: it needs whole-image resizing, not --train-crop")
        self.tile = self.image_size if self.tile is None else int(self.tile)
        if self.tile < 32 or self.tile % 32:
            raise ConfigError(f"tile must be a multiple of 32 (the U-Net halves it 5 times), got {self.tile}")
        self.tile_overlap = self.tile // 4 if self.tile_overlap is None else int(self.tile_overlap)
        if not 0 <= self.tile_overlap < self.tile:
            raise ConfigError(f"tile overlap must be in [0, tile), got {self.tile_overlap} for tile {self.tile}")

    def with_tiling(self, tile: int | None, overlap: int | None) -> ModelConfig:
        """A copy with a per-run tile size/overlap (``None`` keeps the stored one)."""
        if tile is None and overlap is None:
            return self
        if not self.native:
            raise ConfigError("--tile applies to native-resolution models (trained with --train-crop) only")
        return dataclasses.replace(
            self,
            tile=self.tile if tile is None else tile,
            tile_overlap=(self.tile_overlap if tile is None else None) if overlap is None else overlap,
        )

    def resolved_head(self, simulate: float) -> bool:
        """``head`` with auto decided: on for EAR with simulated defects (``simulate`` > 0) and no normal map."""
        if self.head is not None:
            return bool(self.head)
        return self.method == "ear" and simulate > 0 and not self.scoring.normal_map

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("head", False)  # a model written before the head existed has none
        if isinstance(values.get("scoring"), dict):  # artifacts written before the band existed scored it all
            values["scoring"] = {"border": 0, **values["scoring"]}
        return cls(**values)


@dataclass
class TrainConfig:
    """Optimisation settings: Adam and ⅓ loss weights as in the paper; lr 1e-3 (the paper's 1e-4 learns too slowly
    for an hour on a CPU) and 300 epochs as the upper bound the study trained under (BENCHMARKS.md)."""

    epochs: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    schedule: str = "fixed"
    warmup_epochs: int = 1
    loss_weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    holdout_fraction: float = 0.1
    #: the image threshold policy applied after training (``ear_stream.inspect.thresholds``)
    threshold_policy: str = DEFAULT_IMAGE_POLICY
    seed: int = 0
    #: augmentations (opt-in): per-image horizontal/vertical flips, quarter turns, brightness/contrast jitter
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    jitter: float = 0.0
    #: held-out loss every N steps (learning curve, early stopping, best weights); None = never
    eval_every: int | None = None
    #: stop when the held-out loss has not improved for this many evaluations (needs eval_every)
    patience: int | None = None
    #: write checkpoint.pt every N steps and/or minutes (for ``--resume``); None = never
    checkpoint_every: int | None = None
    checkpoint_minutes: float | None = None
    #: ``torch.compile`` the U-Net's training forward
    compile: bool = False
    #: probability that a training image gets a simulated defect (``ear_stream.inspect.simulate``); the
    #: recovery is trained to return the clean image, and the head (auto: on with it) to segment the defect.
    #: 0.5: on Magnetic Tile's 219-image validation subset, 60 CPU minutes, simulated defects + head scored
    #: 0.86 image AUROC against plain training's 0.81 (BENCHMARKS.md); 0 trains on plain good images
    simulate: float = 0.5
    #: extra weight of the L1 recovery error inside simulated defects (the loss "weighs the simulated region")
    defect_weight: float = 1.0
    #: the U-Net's numeric path (``ear_stream.model.precision``): auto = bf16 autocast + channels_last where
    #: the device has bf16 units, else fp32 + channels_last
    precision: str = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if abs(sum(self.loss_weights) - 1.0) > 1e-6:
            raise ConfigError(f"loss weights must sum to 1, got {self.loss_weights}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if not 0.0 <= self.jitter < 0.5:
            raise ConfigError(f"jitter must be in [0, 0.5), got {self.jitter}")
        if self.precision not in PRECISION_CHOICES:
            raise ConfigError(f"precision must be one of {PRECISION_CHOICES}, got {self.precision!r}")
        if not 0.0 <= self.simulate <= 1.0:
            raise ConfigError(f"simulate must be in [0, 1], got {self.simulate}")
        if self.defect_weight < 0:
            raise ConfigError(f"defect_weight must be >= 0, got {self.defect_weight}")
        if self.patience is not None and not self.eval_every:
            raise ConfigError("--patience needs --eval-every (the held-out loss it watches)")
        for name in ("eval_every", "patience", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")


@dataclass
class RefineConfig:
    """What ``ear-stream refine`` changes from the parent's training (docs/design.md, "Learning from the line").

    The run warm-starts from the promoted model and keeps its simulated-defect training (nothing it learned is
    replaced), adding per step a small batch of labelled items: confirmed goods (false alarms: hard negatives,
    recovered and segmented as clean) and confirmed defects (a multiple-instance loss on the head's map: the mean
    of its top ``mil_top`` share must be high; their brushed mask, when there is one, as a pixel target), and
    pastes confirmed defects onto good images in ``bank_share`` of the simulated defects (the defect bank).
    """

    #: Adam's rate: a third of training's, so that a few labels move the model without undoing what it knew
    lr: float = 3e-4
    #: labelled items per step beside the training batch (half defects, half goods where both exist)
    label_batch: int = 4
    #: share of the simulated defects replaced by a confirmed defect pasted from the bank
    bank_share: float = 0.5
    #: the head map's top share whose mean the multiple-instance loss pushes up (defects) or down (goods):
    #: about the image score (the map's max) but less brittle than a single pixel
    mil_top: float = 0.01
    #: share of the labels held out (by a hash of product and id: an item stays on its side as labels grow)
    #: to compare parent and candidate, which is what ``promote`` decides on
    holdout: float = 0.3
    #: the candidate's image threshold policy on labelled items; None: the parent's
    threshold_policy: str | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"the refine learning rate must be > 0, got {self.lr}")
        if self.label_batch < 1:
            raise ConfigError(f"label_batch must be >= 1, got {self.label_batch}")
        for name in ("bank_share", "mil_top", "holdout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0 or (name != "bank_share" and value == 0.0) or (name == "holdout" and value == 1):
                raise ConfigError(f"{name} must be in {'[0, 1]' if name == 'bank_share' else '(0, 1)'}, got {value}")


#: ``ear-stream refine``'s default CPU-minute budget: what a line can spend between shifts on one core
REFINE_MINUTES = 15.0
