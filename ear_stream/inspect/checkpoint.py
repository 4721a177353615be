"""Training checkpoints: written atomically, so a run killed at any instant leaves the last good one.

Temporary name in the same directory → flush + fsync → rename over the old file →
fsync of the directory: a reader sees the old checkpoint or the new one, never half
of one, even after a power cut.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import EarStreamError

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(EarStreamError, RuntimeError):
    """No checkpoint to resume from, or one written for another configuration."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--resume: no {path.name} in {path.parent} (train with --checkpoint-every first)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # noqa: TID251 - the one loader
    except Exception as exc:  # noqa: BLE001 - whatever the file holds, never unpickle it
        raise CheckpointError(
            f"{path} is not a checkpoint ear-stream wrote (it holds objects that are not weights, or is corrupt: "
            f"{type(exc).__name__}); it is never loaded with pickle. Delete it and train without --resume."
        ) from None
