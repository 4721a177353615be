"""The labelled items ``refine`` learns from and is judged on (docs/design.md, "Learning from the line").

A product's latest label per id (:class:`~ear_stream.io.labels.LabelStore`), each with its image (through
:class:`~ear_stream.io.label_images.LabelImages`) resized as the model sees it and its brushed mask, if any.
A share of them is **held out** by a hash of (product, id) — never by position — so an item stays on its side
as labels accumulate, and the figures parent and candidate are compared on are of items neither trained on.

The label set's hash (ids, labels, masks) and its counts per label and defect type go into the candidate's
lineage. A defect's type is the folder its id names (``crack/017.png`` → ``crack``), else ``unlabelled``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..io.decode import ImageDecodeError, decode_image, to_model_input
from ..io.label_images import LabelImages
from ..io.labels import LabelStore, Mask

log = logging.getLogger(__name__)
#: the type of a confirmed defect whose id names no folder
UNTYPED = "unlabelled"
#: a mask pixel at the model's size is defect when at least this share of it was (thin cracks survive)
MASK_COVER = 0.25


def held_out(product: str, ident: str, share: float) -> bool:
    """Whether a labelled item is held out: a salted hash of (product, id), stable as labels grow."""
    digest = hashlib.sha1(f"ear-refine-holdout\0{product}\0{ident}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def defect_type(ident: str) -> str:
    """The folder an id names (``crack/017.png`` → ``crack``), else :data:`UNTYPED`."""
    parts = ident.replace("\\", "/").split("/")
    return parts[-2] if len(parts) > 1 and parts[-2] else UNTYPED


@dataclass
class LabelledSet:
    """Labelled items at the model's input size: images [N, 3, S, S], masks [N, 1, S, S] (zeros without one)."""

    product: str
    ids: list[str]
    defect: np.ndarray  # [N] bool
    images: torch.Tensor
    masks: torch.Tensor
    has_mask: np.ndarray  # [N] bool
    held: np.ndarray  # [N] bool: held out for the comparison, never trained on
    digest: str = ""
    #: id → why it was left out (no image, undecodable, a mask of another shape)
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, store: LabelStore, product: str, source: LabelImages, size: int, holdout: float) -> LabelledSet:
        rows = store.read(product, masks=True).to_pylist()
        if not rows:
            raise ConfigError(f"no labels of product {product!r} in {store.root}")
        ids, defect, images, masks, has_mask, skipped = [], [], [], [], [], {}
        image_digests: dict[str, str] = {}
        for row in rows:
            ident = str(row["id"])
            data = source.read(ident)
            if data is None:
                skipped[ident] = source.missing.get(ident, "no image")
                continue
            try:
                arr = decode_image(data)
            except ImageDecodeError as exc:
                skipped[ident] = f"the image cannot be decoded: {exc}"
                continue
            mask = Mask.of_row(row)
            if mask is not None and (mask.height, mask.width) != arr.shape[:2]:
                # the label stands; only its region is not of this image (an image replaced, a rotated JPEG)
                log.warning("%s: mask %dx%d, image %dx%d: the label is used without its mask", ident,
                            mask.width, mask.height, arr.shape[1], arr.shape[0])  # fmt: skip
                mask = None
            ids.append(ident)
            image_digests[ident] = hashlib.sha256(data).hexdigest()
            defect.append(row["label"] == "defect")
            images.append(to_model_input([arr], size))
            masks.append(_mask_at(mask, size))
            has_mask.append(mask is not None)
        if not ids:
            raise ConfigError(f"no labelled image of {product!r} could be read: {_first(skipped)}")
        defect_arr = np.array(defect, dtype=bool)
        out = cls(
            product,
            ids,
            defect_arr,
            torch.cat(images),
            torch.cat(masks),
            np.array(has_mask, dtype=bool),
            np.array([held_out(product, i, holdout) for i in ids], dtype=bool),
            skipped=skipped,
        )
        loaded = set(ids)
        out.digest = _digest([r for r in rows if str(r["id"]) in loaded], image_digests)
        return out

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def train_idx(self) -> np.ndarray:
        return np.where(~self.held)[0]

    @property
    def held_idx(self) -> np.ndarray:
        return np.where(self.held)[0]

    def counts(self) -> dict:
        """Counts per label, side and defect type: the lineage a candidate records."""
        types: dict[str, int] = {}
        for ident, is_defect in zip(self.ids, self.defect, strict=True):
            if is_defect:
                types[defect_type(ident)] = types.get(defect_type(ident), 0) + 1
        side = {"train": ~self.held, "held_out": self.held}
        return {
            "defect": int(self.defect.sum()),
            "good": int((~self.defect).sum()),
            "with_mask": int(self.has_mask.sum()),
            **{
                f"{k}_{lab}": int((m & (self.defect if lab == "defect" else ~self.defect)).sum())
                for k, m in side.items()
                for lab in ("defect", "good")
            },
            "defect_types": dict(sorted(types.items())),
            "skipped": len(self.skipped),
        }


def _mask_at(mask: Mask | None, size: int) -> torch.Tensor:
    """A stored mask at the model's size [1, 1, S, S] in {0, 1} (zeros without one)."""
    if mask is None:
        return torch.zeros((1, 1, size, size))
    full = torch.from_numpy(mask.array().astype(np.float32))[None, None]
    return (F.interpolate(full, size=(size, size), mode="area") >= MASK_COVER).float()


def _digest(rows: list[dict], images: dict[str, str]) -> str:
    """sha256 of the label set as loaded (id, label, mask bytes, image bytes), in id order: what the candidate
    learnt from and was judged on (a label whose image was pruned since makes another set)."""
    items = sorted(
        (
            str(r["id"]),
            r["label"],
            hashlib.sha256(bytes(r["mask"])).hexdigest() if r.get("mask") else "",
            images[str(r["id"])],
        )
        for r in rows
    )
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _first(reasons: dict[str, str]) -> str:
    if not reasons:
        return "none given"
    ident, why = next(iter(reasons.items()))
    return f"{ident}: {why}" + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")
