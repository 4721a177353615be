"""Pictures for people: heatmap overlays and ROC curves as PNG bytes (Pillow only)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw

#: line colours shared by every chart
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


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


def mask_overlay(image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.45) -> np.ndarray:
    """The excised region [1, H, W] tinted red over the image: what the saliency chose to hide."""
    base = image_rgb(image).astype(np.float32)
    m = mask.detach().float().squeeze(0).cpu().numpy()[..., None]
    red = np.array([230.0, 30.0, 30.0])
    return (base * (1 - alpha * m) + red * alpha * m).astype(np.uint8)


def defect_mask_png(dmap: torch.Tensor, threshold: float) -> bytes:
    """The binary defect mask (map > pixel threshold) as a black/white PNG at the map's size."""
    m = (dmap.detach().float().squeeze(0).cpu().numpy() > threshold).astype(np.uint8) * 255
    return to_png(np.repeat(m[..., None], 3, axis=2))


def contour_overlay(image: torch.Tensor, dmap: torch.Tensor, threshold: float) -> np.ndarray:
    """Outlines of the defect mask (map > pixel threshold) drawn in red over the image."""
    m = dmap.detach().float().squeeze(0).cpu().numpy() > threshold
    inner = np.zeros_like(m)
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    edge = m & ~inner
    out = image_rgb(image).copy()
    out[edge] = (255, 0, 0)
    return out


def histogram_png(
    groups: dict[str, np.ndarray], threshold: float, bins: int = 40, width: int = 520, height: int = 300
) -> bytes:
    """Score histograms of named groups (good vs defective) on one axis, the threshold as a vertical line."""
    values = [np.asarray(v, dtype=np.float64) for v in groups.values() if len(v)]
    pad_l, pad_r, pad_t, pad_b = 40, 16, 28, 36
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    d.rectangle([pad_l, pad_t, pad_l + w, pad_t + h], outline="black")
    if values:
        lo = min(min(float(v.min()) for v in values), threshold)
        hi = max(max(float(v.max()) for v in values), threshold)
        hi = hi if hi > lo else lo + 1e-9
        edges = np.linspace(lo, hi, bins + 1)
        counts = {k: np.histogram(v, edges)[0] / max(1, len(v)) for k, v in groups.items()}
        top = max(float(c.max()) for c in counts.values()) or 1.0
        bw = w / bins
        for i, (label, c) in enumerate(counts.items()):
            colour = COLOURS[i % len(COLOURS)]
            for j, frac in enumerate(c):
                if frac > 0:
                    x0 = pad_l + j * bw + i * bw / len(counts)
                    d.rectangle([x0, pad_t + h - frac / top * h, x0 + bw / len(counts), pad_t + h], fill=colour)
            d.text((pad_l + 8, pad_t + 6 + 12 * i), f"{label} (n={len(groups[label])})", fill=colour)
        x = pad_l + (threshold - lo) / (hi - lo) * w
        d.line([x, pad_t, x, pad_t + h], fill="black", width=2)
        d.text((x + 3, pad_t - 14), f"threshold {threshold:.4g}", fill="black")
        d.text((pad_l, pad_t + h + 4), f"{lo:.4g}", fill="black")
        d.text((pad_l + w - 40, pad_t + h + 4), f"{hi:.4g}", fill="black")
    d.text((pad_l + w // 2 - 40, height - 14), "image score", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], size: int = 360) -> bytes:
    """ROC curves {label: (fpr, tpr, auc)} drawn on a square canvas."""
    pad = 40
    img = Image.new("RGB", (size + 2 * pad, size + 2 * pad), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([pad, pad, pad + size, pad + size], outline="black")
    d.line([pad, pad + size, pad + size, pad], fill=(180, 180, 180))
    for i, (label, (fpr, tpr, auc)) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = [(pad + float(x) * size, pad + size - float(y) * size) for x, y in zip(fpr, tpr, strict=True)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        d.text((pad + 8, pad + 8 + 14 * i), f"{label}: AUROC {auc:.3f}", fill=colour)
    d.text((pad + size // 2 - 40, pad + size + 12), "false positive rate", fill="black")
    d.text((4, pad - 20), "true positive rate", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def line_chart_png(
    series: dict[str, list[tuple[float, float]]],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    width: int = 520,
    height: int = 320,
) -> bytes:
    """Line chart of named (x, y) series with min/max axis labels (learning curves, soak plots)."""
    pad_l, pad_r, pad_t, pad_b = 60, 16, 28, 36
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and np.isfinite(y)]
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    d.rectangle([pad_l, pad_t, pad_l + w, pad_t + h], outline="black")
    d.text((pad_l, 6), title, fill="black")
    d.text((pad_l + w // 2 - 30, height - 16), xlabel, fill="black")
    d.text((4, pad_t - 14), ylabel, fill="black")
    if pts:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9)
        d.text((pad_l - 56, pad_t), f"{y1:.4g}", fill="black")
        d.text((pad_l - 56, pad_t + h - 10), f"{y0:.4g}", fill="black")
        d.text((pad_l, pad_t + h + 4), f"{x0:.4g}", fill="black")
        d.text((pad_l + w - 30, pad_t + h + 4), f"{x1:.4g}", fill="black")
        for i, (label, s) in enumerate(series.items()):
            colour = COLOURS[i % len(COLOURS)]
            xy = [
                (pad_l + (x - x0) / (x1 - x0) * w, pad_t + h - (y - y0) / (y1 - y0) * h)
                for x, y in s
                if y is not None and np.isfinite(y)
            ]
            if len(xy) > 1:
                d.line(xy, fill=colour, width=2)
            for px, py in xy:
                d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
            d.text((pad_l + 8, pad_t + 6 + 12 * i), label, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
