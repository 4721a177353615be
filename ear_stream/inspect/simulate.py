"""Simulated defects on good images: what the recovery learns to remove and the head learns to see.

EAR trains on good images only; nothing in that objective stops the U-Net from
copying a defect it has never seen. Following DRAEM and CutPaste, part of every
training batch gets a simulated defect: an irregular region (thresholded
multi-octave smooth noise, a thin 1–6 px curve, or an elliptic blob/hole)
filled with a patch of another training image, a procedural texture, a local
brightness/contrast change or a blur, blended with a random opacity. The
recovery is trained to return the *clean* image, and the learned head
(:mod:`ear_stream.model.head`) to segment the region.

Every draw takes an explicit generator (one per step, :func:`.augment.step_generator`),
so a resumed run simulates exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SHAPES = ("noise", "curve", "ellipse")
FILLERS = ("patch", "texture", "brightness", "blur")
#: a pixel counts as defective in the target mask only if the blend changed it by at least this much
VISIBLE_CHANGE = 0.02


@dataclass(frozen=True)
class SimulatedBatch:
    """A corrupted batch and its target mask [B, 1, H, W] in {0, 1} (where the image really changed)."""

    images: torch.Tensor
    mask: torch.Tensor


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _choice(gen: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (), generator=gen))


def smooth_noise(h: int, w: int, gen: torch.Generator, octaves: int = 3, base: int = 0) -> torch.Tensor:
    """Perlin-like noise [h, w] in about [0, 1]: random grids of 2^k cells, bicubic-upsampled and summed."""
    base = base or 2 ** (1 + _choice(gen, 3))  # 2, 4 or 8 cells on the coarsest octave
    total = torch.zeros((h, w))
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        cells = base * 2**k
        grid = torch.rand((1, 1, cells + 1, cells + 1), generator=gen)
        total += amp * F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)[0, 0]
        norm += amp
        amp *= 0.5
    return (total / norm).clamp(0.0, 1.0)


def noise_region(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """An irregular region: smooth noise above a high quantile, inside a random window (one or few blobs)."""
    noise = smooth_noise(h, w, gen)
    area = _uniform(gen, 0.005, 0.08)
    region = (noise > torch.quantile(noise.flatten(), 1.0 - area)).float()
    # keep a window around one place so a defect stays local rather than scattered over the image
    cy, cx = _uniform(gen, 0.1, 0.9) * h, _uniform(gen, 0.1, 0.9) * w
    ry, rx = _uniform(gen, 0.1, 0.35) * h, _uniform(gen, 0.1, 0.35) * w
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    window = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0).float()
    region = region * window
    if region.sum() < 4:  # the window missed every blob: fall back to the window's core
        region = (((yy - cy) / (ry / 3)) ** 2 + ((xx - cx) / (rx / 3)) ** 2 <= 1.0).float()
    return region


def curve_region(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A thin crack or scratch: a random polyline of 2–5 segments, 1–6 px wide."""
    n = 3 + _choice(gen, 4)
    start = torch.tensor([_uniform(gen, 0, h), _uniform(gen, 0, w)])
    heading = _uniform(gen, 0, 2 * math.pi)
    step = _uniform(gen, 0.08, 0.25) * min(h, w)
    points = [start]
    for _ in range(n - 1):
        heading += _uniform(gen, -0.8, 0.8)
        points.append(points[-1] + step * torch.tensor([math.sin(heading), math.cos(heading)]))
    half_width = _uniform(gen, 0.5, 3.0)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    pix = torch.stack([yy, xx], dim=-1)  # [h, w, 2]
    dist = torch.full((h, w), float("inf"))
    for a, b in itertools.pairwise(points):
        ab = b - a
        t = (((pix - a) @ ab) / max(float(ab @ ab), 1e-6)).clamp(0.0, 1.0)
        dist = torch.minimum(dist, (pix - (a + t[..., None] * ab)).norm(dim=-1))
    return (dist <= half_width).float()


def ellipse_region(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A rotated elliptic blob or hole, 2 px to 1/8 of the side in radius, edge roughened by noise."""
    cy, cx = _uniform(gen, 0.05, 0.95) * h, _uniform(gen, 0.05, 0.95) * w
    ry = _uniform(gen, 2.0, max(3.0, min(h, w) / 8))
    rx = ry * _uniform(gen, 0.4, 2.5)
    theta = _uniform(gen, 0, math.pi)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    radius = (u / rx) ** 2 + (v / ry) ** 2
    rough = 0.3 * (smooth_noise(h, w, gen, octaves=2, base=8) - 0.5)
    return (radius + rough <= 1.0).float()


_SHAPES = {"noise": noise_region, "curve": curve_region, "ellipse": ellipse_region}


def fill(x: torch.Tensor, batch: torch.Tensor, i: int, gen: torch.Generator) -> torch.Tensor:
    """What replaces the defect region of image ``i`` [3, H, W]: one of :data:`FILLERS`."""
    kind = FILLERS[_choice(gen, len(FILLERS))]
    h, w = x.shape[-2:]
    if kind == "patch" and batch.shape[0] > 1:  # another image of the batch, shifted, turned, jittered
        j = (i + 1 + _choice(gen, batch.shape[0] - 1)) % batch.shape[0]
        other = torch.rot90(batch[j], _choice(gen, 4), dims=(-2, -1)) if h == w else batch[j]
        other = other.roll((_choice(gen, h), _choice(gen, w)), dims=(-2, -1))
        return (other * _uniform(gen, 0.6, 1.4) + _uniform(gen, -0.2, 0.2)).clamp(0.0, 1.0)
    if kind in ("patch", "texture"):  # procedural texture: coloured smooth noise at a random contrast
        tex = smooth_noise(h, w, gen, octaves=4, base=4 * 2 ** _choice(gen, 3))
        tint = torch.rand((3, 1, 1), generator=gen)
        level = _uniform(gen, 0.0, 1.0)
        return (level + _uniform(gen, 0.3, 1.0) * (tex[None] - 0.5) * (0.5 + tint)).clamp(0.0, 1.0)
    if kind == "brightness":  # a local stain or glare: brightness/contrast change of the image itself
        gain, shift = _uniform(gen, 0.3, 1.8), _uniform(gen, -0.4, 0.4)
        mean = x.mean()
        return ((x - mean) * gain + mean + shift).clamp(0.0, 1.0)
    k = 2 * (2 + _choice(gen, 4)) + 1  # blur: 5..11 px box, a smeared or out-of-focus spot
    return F.avg_pool2d(x[None], k, stride=1, padding=k // 2, count_include_pad=False)[0]


def simulate_defects(images: torch.Tensor, gen: torch.Generator, probability: float) -> SimulatedBatch:
    """Corrupt each image of a [B, 3, H, W] batch in [0, 1] with ``probability``; returns images and masks.

    The blend is ``x·(1 − β·M) + filler·β·M`` with an opacity β in [0.3, 1] and a
    soft-edged region M. The target mask marks the pixels of M that the blend
    visibly changed (≥ :data:`VISIBLE_CHANGE`): a brightness change of a dark
    region by nothing is not a defect to find.
    """
    b, _, h, w = images.shape
    src = images.detach().float().cpu()
    out, masks = src.clone(), torch.zeros((b, 1, h, w))
    draws = torch.rand((b,), generator=gen)
    for i in range(b):
        if float(draws[i]) >= probability:
            continue
        region = _SHAPES[SHAPES[_choice(gen, len(SHAPES))]](h, w, gen)
        soft = F.avg_pool2d(region[None, None], 3, stride=1, padding=1, count_include_pad=False)[0]
        beta = _uniform(gen, 0.3, 1.0)
        filler = fill(src[i], src, i, gen)
        out[i] = src[i] * (1.0 - beta * soft) + filler * beta * soft
        changed = (out[i] - src[i]).abs().amax(dim=0, keepdim=True) >= VISIBLE_CHANGE
        masks[i] = ((region[None] > 0) & changed).float()
    return SimulatedBatch(out.to(images.device, images.dtype), masks.to(images.device))


def gallery(images: torch.Tensor, seed: int = 0, columns: int = 8) -> torch.Tensor:
    """A [3, H', W'] grid of three rows per ``columns`` images: the inputs, the same images with a simulated
    defect each, and their target masks (white): what training shows the recovery and the head."""
    sim = simulate_defects(images, torch.Generator().manual_seed(seed), 1.0)
    rows = []
    for start in range(0, images.shape[0], columns):
        part = slice(start, start + columns)
        for block in (images[part], sim.images[part], sim.mask[part].expand(-1, 3, -1, -1)):
            pad = columns - block.shape[0]
            if pad:
                block = torch.cat([block, torch.ones((pad, *block.shape[1:]))])
            framed = F.pad(block, (2, 2, 2, 2), value=1.0)
            rows.append(torch.cat(list(framed), dim=-1))
    return torch.cat(rows, dim=-2)
