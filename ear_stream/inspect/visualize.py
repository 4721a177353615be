"""Pictures for people: heatmap overlays and ROC curves as PNG bytes (Pillow only)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw


def _jet(v: np.ndarray) -> np.ndarray:
    """Jet-like colour map of values in [0, 1] → uint8 RGB."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def to_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def image_rgb(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] → uint8 [H, W, 3]."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)


def heatmap_overlay(
    image: torch.Tensor, dmap: torch.Tensor, vmax: float | None = None, alpha: float = 0.5
) -> np.ndarray:
    """Distance map [1, H, W] blended over the image; ``vmax`` fixes the colour scale (e.g. the threshold)."""
    m = dmap.detach().float().squeeze(0).cpu().numpy()
    top = vmax if vmax and vmax > 0 else max(float(m.max()), 1e-12)
    heat = _jet(np.clip(m / top, 0, 1)).astype(np.float32)
    base = image_rgb(image).astype(np.float32)
    return (base * (1 - alpha) + heat * alpha).astype(np.uint8)


def roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], size: int = 360) -> bytes:
    """ROC curves {label: (fpr, tpr, auc)} drawn on a square canvas."""
    pad = 40
    img = Image.new("RGB", (size + 2 * pad, size + 2 * pad), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([pad, pad, pad + size, pad + size], outline="black")
    d.line([pad, pad + size, pad + size, pad], fill=(180, 180, 180))
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
    for i, (label, (fpr, tpr, auc)) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        pts = [(pad + float(x) * size, pad + size - float(y) * size) for x, y in zip(fpr, tpr, strict=True)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        d.text((pad + 8, pad + 8 + 14 * i), f"{label}: AUROC {auc:.3f}", fill=colour)
    d.text((pad + size // 2 - 40, pad + size + 12), "false positive rate", fill="black")
    d.text((4, pad - 20), "true positive rate", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
