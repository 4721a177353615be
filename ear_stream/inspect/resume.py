"""What a training run keeps on disk on its way, so that a killed run continues where it stood.

Owns the trainer's checkpoint (which state goes into ``checkpoint.pt``, and the rule a checkpoint
must pass to be resumed: written for the same configuration) and the learning curve
(``curve.jsonl``, one record per evaluation, and ``curve.png``). The file itself is written
atomically by :mod:`.checkpoint`. Every random draw of a step comes from a (seed, step) generator,
so a resumed run reaches the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..model.config import ModelConfig, TrainConfig
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .visualize import line_chart_png

if TYPE_CHECKING:
    from .training import Trainer

CURVE_FILE = "curve.jsonl"
CURVE_PNG = "curve.png"


def comparable(cfg: ModelConfig | TrainConfig) -> dict:
    """A config as JSON types (tuples → lists), to compare a checkpoint's with a run's."""
    return json.loads(json.dumps(asdict(cfg)))


def check_resumable(ck: dict[str, Any], model_cfg: ModelConfig, train_cfg: TrainConfig, path: Path) -> None:
    """Refuse a checkpoint written for another configuration: resuming it would not reach the same weights."""
    if ck["model_config"] != comparable(model_cfg) or ck["train_config"] != comparable(train_cfg):
        raise CheckpointError(
            f"{path} was written for another configuration: resume with the same options as the killed run"
        )


def write_checkpoint(trainer: Trainer) -> None:
    """``checkpoint.pt``: the trained networks, optimizer, schedule, RNG and the run's progress."""
    save_checkpoint(
        trainer.ckpt_path,
        {
            "step": trainer.step_count,
            "unet": trainer.net.state_dict(),
            "optimizer": trainer.opt.state_dict(),
            "scheduler": None if trainer.sched is None else trainer.sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "losses": trainer.losses[-20:],
            "elapsed": trainer.elapsed(),
            "best": trainer.best,
            "since_best": trainer.since_best,
            "model_config": comparable(trainer.model_cfg),
            "train_config": comparable(trainer.train_cfg),
        },
    )


def restore_checkpoint(trainer: Trainer) -> None:
    """The state :func:`write_checkpoint` wrote, back into a set-up trainer (same configuration only)."""
    ck = load_checkpoint(trainer.ckpt_path)
    check_resumable(ck, trainer.model_cfg, trainer.train_cfg, trainer.ckpt_path)
    trainer.net.load_state_dict(ck["unet"])
    trainer.opt.load_state_dict(ck["optimizer"])
    if trainer.sched is not None:
        trainer.sched.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["torch_rng"])
    trainer.step_count, trainer.losses, trainer.elapsed_before = (
        int(ck["step"]),
        list(ck["losses"]),
        float(ck["elapsed"]),
    )
    trainer.best, trainer.since_best = ck["best"], int(ck["since_best"])


def write_curve_png(curve: list[dict], path: Path) -> None:
    """curve.png: train and held-out loss against the step."""
    series = {
        "train loss": [(r["step"], r["train_loss"]) for r in curve if r.get("train_loss") is not None],
        "held-out loss": [(r["step"], r["heldout_loss"]) for r in curve if r.get("heldout_loss") is not None],
    }
    path.write_bytes(line_chart_png(series, title="learning curve", xlabel="step", ylabel="loss"))


@dataclass
class LearningCurve:
    """The records of ``curve.jsonl`` in a model directory, kept in step with the file and its chart."""

    out_dir: Path
    records: list[dict] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.out_dir / CURVE_FILE

    @classmethod
    def start(cls, out_dir: Path) -> LearningCurve:
        """A fresh run: the curve of an earlier one is removed."""
        curve = cls(out_dir)
        curve.path.unlink(missing_ok=True)
        return curve

    @classmethod
    def resume(cls, out_dir: Path, step: int) -> LearningCurve:
        """A resumed run: the records up to the checkpoint's step are kept, the rest is redone."""
        curve = cls(out_dir, [r for r in _read(out_dir / CURVE_FILE) if r["step"] <= step])
        curve.path.write_text("".join(json.dumps(r) + "\n" for r in curve.records))
        return curve

    def append(self, rec: dict) -> None:
        self.records.append(rec)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        write_curve_png(self.records, self.out_dir / CURVE_PNG)


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
