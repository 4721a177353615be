"""Configuration dataclasses: one place for every knob of a model and its training.

Configs are plain dataclasses so that they serialise to the JSON manifest of a
model artifact and load back without pickle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SALIENCY_VARIANTS = ("dino", "none", "binary")
MOSAIC_SCALES = (2, 4, 8, 16, 32, 64)
SCHEDULES = ("fixed", "warmup", "sgdr")
METHODS = ("ear", "riad")


@dataclass
class ScoringConfig:
    """MSGMS scoring parameters (SPEC §1 step 5)."""

    scales: int = 3
    c: float = 0.0026
    median: bool = True
    box: int = 21


@dataclass
class ModelConfig:
    """Everything needed to rebuild a trained model's inference path."""

    image_size: int = 256
    saliency: str = "none"
    mosaic_scale: int = 16
    kernel_size: int = 3
    base_channels: int = 32
    method: str = "ear"
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        if isinstance(self.scoring, dict):
            self.scoring = ScoringConfig(**self.scoring)
        if self.saliency not in SALIENCY_VARIANTS:
            raise ValueError(f"saliency must be one of {SALIENCY_VARIANTS}, got {self.saliency!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(
                f"image_size must be a multiple of 32 (the U-Net halves it 5 times), got {self.image_size}"
            )
        if self.kernel_size not in (3, 5):
            raise ValueError(f"kernel_size must be 3 or 5, got {self.kernel_size}")
        if self.mosaic_scale < 1:
            raise ValueError(f"mosaic_scale must be >= 1, got {self.mosaic_scale}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainConfig:
    """Optimisation settings; defaults follow the paper (Adam, lr 1e-4, ⅓ loss weights)."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-4
    schedule: str = "fixed"
    warmup_epochs: int = 1
    loss_weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    holdout_fraction: float = 0.1
    threshold_sigmas: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if abs(sum(self.loss_weights) - 1.0) > 1e-6:
            raise ValueError(f"loss weights must sum to 1, got {self.loss_weights}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
