"""MVTec-AD-layout datasets: listing, loading and a generated sample for demos and tests.

Layout: ``ROOT/CAT/train/good/*``, ``ROOT/CAT/test/<defect>/*`` and
``ROOT/CAT/ground_truth/<defect>/<stem>_mask.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from .decode import IMAGE_SUFFIXES, read_image_file, to_model_input, to_native_input


@dataclass(frozen=True)
class Sample:
    path: Path
    defect: str  # "good" for normal images
    mask_path: Path | None


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def category_dir(root: str | Path, category: str) -> Path:
    path = Path(root) / category
    if not (path / "train" / "good").is_dir():
        raise DataError(f"{path} is not an MVTec-AD-layout category (no train/good folder)")
    return path


def train_images(root: str | Path, category: str) -> list[Path]:
    files = _images_in(category_dir(root, category) / "train" / "good")
    if not files:
        raise DataError(f"no training images in {Path(root) / category / 'train' / 'good'}")
    return files


def test_samples(root: str | Path, category: str) -> list[Sample]:
    """Every test image with its defect type and ground-truth mask path (None for good)."""
    cat = category_dir(root, category)
    samples = []
    for defect_dir in sorted((cat / "test").iterdir()) if (cat / "test").is_dir() else []:
        for path in _images_in(defect_dir):
            mask = cat / "ground_truth" / defect_dir.name / f"{path.stem}_mask.png"
            samples.append(Sample(path, defect_dir.name, mask if mask.is_file() else None))
    if not samples:
        raise DataError(f"no test images under {cat / 'test'}")
    return samples


def load_tensor(paths: list[Path], size: int, desc: str = "loading", progress: bool = True) -> torch.Tensor:
    """Decode and resize images to one [N, 3, size, size] float tensor."""
    out = [
        to_model_input([read_image_file(p, target=size)], size) for p in tqdm(paths, desc=desc, disable=not progress)
    ]
    return torch.cat(out) if out else torch.zeros((0, 3, size, size))


def load_native(paths: list[Path], scale: float, desc: str = "loading", progress: bool = True) -> list[torch.Tensor]:
    """Decode images as [3, H, W] tensors resampled by ``scale``, aspect ratio kept (native-resolution models)."""
    return [to_native_input([read_image_file(p)], scale)[0] for p in tqdm(paths, desc=desc, disable=not progress)]


def load_mask(path: Path | None, size: int | tuple[int, int]) -> torch.Tensor:
    """Ground-truth mask resized (nearest) to ``size`` (S or (H, W)), as a bool tensor; all False when absent."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if path is None:
        return torch.zeros((h, w), dtype=torch.bool)
    img = Image.open(path).convert("L").resize((w, h), Image.NEAREST)
    return torch.from_numpy(np.asarray(img) > 127)


def write_synthetic_category(
    root: str | Path,
    category: str = "synthetic",
    n_train: int = 48,
    n_test_good: int = 12,
    n_test_defect: int = 12,
    seed: int = 0,
) -> Path:
    """A small MVTec-layout category of textured gray surfaces with blob and scratch defects.

    Used by ``ear-stream demo`` and the tests so that they run anywhere without
    downloading data. Sizes vary per image, like real line-scan crops.
    """
    rng = np.random.default_rng(seed)
    cat = Path(root) / category

    def surface() -> np.ndarray:
        h, w = int(rng.integers(96, 161)), int(rng.integers(96, 161))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = 0.45 + 0.1 * np.sin(xx / rng.uniform(6, 9) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(7, 11))
        base += 0.15 * (xx / w) * rng.uniform(-1, 1)
        return np.clip(base + rng.normal(0, 0.02, (h, w)), 0, 1).astype(np.float32)

    def save(arr: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((arr * 255).astype(np.uint8)).save(path)

    def defect(img: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
        h, w = img.shape
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        if kind == "blob":
            r = rng.uniform(5, 10)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img = np.where(mask, img * 0.25, img)
        else:
            angle = rng.uniform(0, np.pi)
            dist = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
            along = np.abs((yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle))
            mask = (dist < 1.5) & (along < rng.uniform(15, 30))
            img = np.where(mask, 0.95, img)
        return img.astype(np.float32), mask

    for i in range(n_train):
        save(surface(), cat / "train" / "good" / f"{i:04d}.png")
    for i in range(n_test_good):
        save(surface(), cat / "test" / "good" / f"{i:04d}.png")
    for kind in ("blob", "scratch"):
        for i in range(n_test_defect):
            img, mask = defect(surface(), kind)
            save(img, cat / "test" / kind / f"{i:04d}.png")
            save(mask.astype(np.float32), cat / "ground_truth" / kind / f"{i:04d}_mask.png")
    return cat
