"""The inference pipeline shared by every entry point (CLI, stream worker, Ray actors).

Batch of images in [0, 1] → attention (DINO, when the variant uses it) →
fused ``excise`` → U-Net recovery → fused ``msgms`` score → verdicts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, SetupError
from ..io.decode import to_model_input, to_native_input
from ..model import ops
from ..model.artifact import ArtifactError, load_artifact_parts, sha256_file
from ..model.config import ModelConfig, ScoringConfig
from ..model.head import HEAD_PREFIX, AnomalyHead, head_inputs, smoothed_map
from ..model.precision import DEFAULT_PRECISION, Precision, compile_module, resolve_precision
from ..model.saliency import resolve_dino_weights
from ..model.weightfree import SelfSaliency
from .ood import FEATURES, OODCheck, image_features
from .regions import region_table
from .tiling import cut, pad_to_tile, paste, plan_tiles
from .variant import Variant, paste_context, two_pass_attention

#: an image batch: one [B, 3, S, S] tensor (whole-image models) or a list of [3, H, W] (native resolution)
Images = torch.Tensor | list[torch.Tensor]


class DeviceUnavailable(SetupError):
    """The device asked for is not there (no silent fallback: a plant sized for a GPU must know)."""


def select(images: Images, idx) -> Images:
    """``images[idx]`` for a tensor batch or a list of native-resolution images alike."""
    if isinstance(images, list):
        return [images[int(i)] for i in idx]
    return images[list(idx)] if not isinstance(idx, slice) else images[idx]


def image_sizes(arrays: list[np.ndarray]) -> list[tuple[int, int]]:
    """(height, width) of decoded [H, W, C] arrays: the frame region boxes are reported in."""
    return [(int(a.shape[0]), int(a.shape[1])) for a in arrays]


def load_images(config: ModelConfig, paths: list, desc: str = "loading", progress: bool = True) -> Images:
    """Image files loaded the way a model inspects them: resized to image_size², or resampled by ``scale``."""
    from ..io.datasets import load_native, load_tensor

    if config.native:
        return load_native(paths, config.native_scale, desc=desc, progress=progress)
    return load_tensor(paths, config.image_size, desc=desc, progress=progress)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"--device {device} was asked for but no CUDA device is available here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): use --device cpu or auto"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def score_maps(
    images: torch.Tensor,
    recon: torch.Tensor,
    sc: ScoringConfig,
    want_map: bool,
    normal_map: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused MSGMS score (and map), the max taken at least ``sc.border`` pixels from the edges.

    With a border band or a ``normal_map`` ([1, 1, H, W], subtracted first) the map is
    materialised and the band zeroed (so a saved heatmap shows what was scored); the
    max keeps NaN like the reference's amax. Without either, the fused op never writes it.
    """
    h, w = images.shape[-2:]
    if min(sc.border_px, (h - 1) // 2, (w - 1) // 2) <= 0 and normal_map is None:
        return ops.msgms(images, recon, sc.n_scales, sc.c, sc.median, sc.box_px, want_map)
    _, dmap = ops.msgms(images, recon, sc.n_scales, sc.c, sc.median, sc.box_px, True)
    assert dmap is not None  # want_map=True
    if normal_map is not None:
        dmap = dmap - normal_map.to(dmap.device, dmap.dtype)
    return banded_max(dmap, sc.border_px, want_map)


def banded_max(dmap: torch.Tensor, border: int, want_map: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-image max of a [B, 1, H, W] map at least ``border`` pixels from the edges (NaN-sticky, like amax);
    the map returned has the band zeroed, so a saved heatmap shows what was scored."""
    h, w = dmap.shape[-2:]
    b = min(border, (h - 1) // 2, (w - 1) // 2)
    inner = dmap[..., b : h - b, b : w - b] if b > 0 else dmap
    scores = inner.flatten(1).amax(dim=1) if dmap.shape[0] else dmap.new_zeros((0,))
    if not want_map:
        return scores, None
    return scores, (F.pad(inner, (b, b, b, b)) if b > 0 else dmap)


def load_head(config: ModelConfig, extras: dict[str, torch.Tensor], model_dir) -> AnomalyHead | None:
    """The learned head stored as ``head.*`` beside the U-Net (None when the model has none)."""
    if not config.head:
        return None
    state = {k[len(HEAD_PREFIX) :]: v for k, v in extras.items() if k.startswith(HEAD_PREFIX)}
    if not state:
        raise ArtifactError(f"{model_dir}: its scoring uses a learned head, but no head weights are stored")
    head = AnomalyHead(config.head_width)
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{model_dir}: the stored head does not fit its manifest: {exc}") from exc
    return head.eval()


#: where the normal map lives in weights.safetensors
NORMAL_MAP_KEY = "scoring.normal_map"


@torch.no_grad()
def fit_normal_map(pipe: Pipeline, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Mean MSGMS map [1, 1, H, W] of good *training* images (before any band): what is normally hard to recover."""
    sc = dataclasses.replace(pipe.config.scoring, border=0, normal_map=False)
    total, n = None, 0
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].to(pipe.device)
        _, dmap = score_maps(x, pipe.recover(x)[3], sc, True)
        assert dmap is not None  # want_map=True
        total = dmap.sum(0, keepdim=True) if total is None else total + dmap.sum(0, keepdim=True)
        n += x.shape[0]
    if total is None:
        raise DataError("a normal map needs at least one training image")
    return (total / max(1, n)).cpu()


@dataclass
class BatchResult:
    """Per-image outputs of one batch; arrays are float32 numpy, maps stay tensors."""

    scores: np.ndarray
    normalized: np.ndarray
    #: fail closed: a NaN/inf score counts as anomalous, never as a pass; callers treat
    #: ``~finite`` entries as errors (stream DLQ, ``score`` failures, ``eval`` refusal)
    is_anomaly: np.ndarray
    mask_ratio: np.ndarray
    #: [B, 1, H, W], or (native resolution, sizes differ) a list of [1, H, W]; ``maps[i]`` works for both
    maps: Images | None = None
    recon: Images | None = None
    composite: Images | None = None
    #: the excised region S [B, 1, H, W] (with ``want_recon``): what the report overlays on the input
    mask: Images | None = None
    #: per image, its defect regions (``want_regions``): boxes in original pixels, area, peak, mean
    regions: list[list[dict]] | None = None
    #: [B, len(ood.FEATURES)] global statistics of each image and its recovery (:mod:`.ood`)
    features: np.ndarray | None = None
    #: per image, why the model cannot judge it (``out_of_distribution: …``) or None; such images are anomalies
    ood: list[str | None] | None = None

    @property
    def finite(self) -> np.ndarray:
        """Per image: the score is a number. A diverged model (NaN/inf reconstruction) makes it False."""
        return np.isfinite(self.scores)


class Pipeline:
    """One trained product model, ready to score batches on one device."""

    def __init__(
        self,
        config: ModelConfig,
        unet: nn.Module,  # a UNet (the precision path may wrap it)
        threshold: float,
        device: torch.device,
        attention_model: nn.Module | None = None,
        model_version: str = "",
        normal_map: torch.Tensor | None = None,
        tile_batch: int = 16,
        pixel_threshold: float | None = None,
        precision: str | Precision = DEFAULT_PRECISION,
        head: nn.Module | None = None,
    ) -> None:
        self.config = config
        #: map pixels above it form defect regions; None follows the image threshold
        self.pixel_threshold = pixel_threshold
        self.calibration: dict = {}
        #: the training's recovery check (``ear_stream.inspect.recovery``), shown by reports; None when unknown
        self.recovery: dict | None = None
        #: the out-of-distribution check calibrated with the threshold (None: an older model, not checked)
        self.ood_check: OODCheck | None = None
        #: tiles per U-Net batch in native-resolution inference: what bounds memory, whatever the image size
        self.tile_batch = int(tile_batch)
        self.threshold = float(threshold)
        self.device = device
        self.model_version = model_version
        self.unet = unet.to(device).eval()
        self.attention_model = attention_model
        #: per-pixel mean map of good training images, subtracted when ``config.scoring.normal_map``
        self.normal_map = None if normal_map is None else normal_map.to(device)
        #: the U-Net's numeric path (bf16 autocast, channels_last), resolved for this device
        self.precision = precision if isinstance(precision, Precision) else resolve_precision(precision, device)
        self.unet = self.precision.module(self.unet)
        #: what runs the U-Net: the module itself, or its compiled graph after :meth:`compile`
        self._unet_forward: nn.Module = self.unet
        if config.head and head is None:
            raise ArtifactError("the model scores with a learned head, but no head weights were given")
        #: the learned anomaly head (``config.head``): scores come from its map instead of the MSGMS max
        self.head = None if head is None else self.precision.module(head.to(device).eval())

    @property
    def variant(self) -> Variant:
        """What the config's variant does (read from the config each time: eval may change its scoring)."""
        return Variant.of(self.config)

    @classmethod
    def from_artifact(
        cls,
        model_dir: str | Path,
        device: str = "auto",
        dino_weights: str | os.PathLike | None = None,
        tile: int | None = None,
        tile_overlap: int | None = None,
        threshold: float | None = None,
        precision: str = DEFAULT_PRECISION,
        compile: bool = False,
    ) -> Pipeline:
        """Load a model directory; ``tile``/``tile_overlap`` override a native model's stored tiling,
        ``threshold`` its image threshold for this run (the pixel threshold then follows it when the
        model's pixel policy is ``image``)."""
        unet, manifest, extras = load_artifact_parts(model_dir)
        try:
            manifest.config = manifest.config.with_tiling(tile, tile_overlap)
        except ValueError as exc:
            raise ArtifactError(f"{model_dir}: {exc}") from exc
        dev = resolve_device(device)
        saliency_state = {k[len("saliency.") :]: v for k, v in extras.items() if k.startswith("saliency.")}
        attention = Variant.of(manifest.config).build_saliency(
            manifest.config.saliency_params, dino_weights, dev, saliency_state
        )
        normal = extras.get(NORMAL_MAP_KEY)
        head = load_head(manifest.config, extras, model_dir)
        if manifest.config.scoring.normal_map and normal is None:
            raise ArtifactError(f"{model_dir}: its scoring subtracts a normal map, but none is stored")
        if attention is not None and manifest.dino_weights_sha256:
            got = sha256_file(resolve_dino_weights(dino_weights))  # type: ignore[arg-type]
            if got != manifest.dino_weights_sha256:
                raise ArtifactError(
                    f"the DINO weights given differ from those {model_dir} was trained with "
                    f"(sha256 {got[:12]} != {manifest.dino_weights_sha256[:12]})"
                )
        pipe = cls(
            manifest.config,
            unet,
            manifest.threshold,
            dev,
            attention,
            manifest.model_version,
            normal,
            precision=precision,
            head=head,
        )
        pipe.apply_thresholds(manifest, threshold)
        if compile:
            pipe.compile()
        return pipe

    def compile(self) -> None:
        """Compile the U-Net for inference (one dynamic-batch graph); call :meth:`warm_up` before serving."""
        self._unet_forward = compile_module(self.unet, dynamic=True)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 2)) -> float:
        """Score blank batches of these sizes once (compilation, oneDNN kernel selection); returns seconds.

        Two sizes so that a compiled graph is specialised for a dynamic batch before the
        first real entry (a later, third size does not recompile: measured in BENCHMARKS.md).
        """
        import time

        started = time.perf_counter()
        side = self.config.tile if self.config.native else self.config.image_size
        for b in batch_sizes:
            self.score_tensor(torch.full((b, 3, side, side), 0.5))  # type: ignore[arg-type]
        return time.perf_counter() - started

    def apply_thresholds(self, manifest, override: float | None = None) -> None:
        """Take a manifest's thresholds and version (hot reload after ``ear-stream threshold``), or a per-run override."""
        threshold = float(manifest.threshold if override is None else override)
        if not np.isfinite(threshold):
            raise ArtifactError(f"threshold {threshold} is not a finite number (it would pass every image)")
        self.threshold = threshold
        self.pixel_threshold = None if manifest.pixel_policy == "image" else manifest.pixel_threshold
        self.model_version = manifest.model_version
        self.calibration = manifest.calibration
        self.ood_check = OODCheck.from_calibration(manifest.calibration)
        self.recovery = manifest.training.get("recovery")

    @property
    def region_threshold(self) -> float:
        """MSGMS value above which a map pixel is part of a defect region."""
        return self.threshold if self.pixel_threshold is None else float(self.pixel_threshold)

    @torch.no_grad()
    def attention(self, images: torch.Tensor) -> torch.Tensor | None:
        if self.attention_model is None:
            return None
        if isinstance(self.attention_model, SelfSaliency):
            return two_pass_attention(self.attention_model, self.reconstruct, images, self.config.scoring)[0]
        with self.precision.autocast():
            return self.attention_model(images).float()

    @torch.no_grad()
    def reconstruct(self, composite: torch.Tensor) -> torch.Tensor:
        return self.precision.run(self._unet_forward, composite)

    @torch.no_grad()
    def recover(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """EAR's inference up to the score: (attention, composite I′, mask ratio, reconstruction Î).

        RIAD models: no attention, the input as "composite", the last cell size's inpainting.
        """
        if self.variant.is_riad:
            from ..model import riad

            recon = riad.score(self.unet, images, self.config.scoring, forward=self.reconstruct)[2]
            return None, images, torch.ones(images.shape[0]), recon
        attention = self.attention(images)
        composite, ratio = self.variant.excise(images, attention)
        recon = paste_context(self.reconstruct(composite), images, self.variant.context_mask(images, attention))
        return attention, composite, ratio, recon

    @torch.no_grad()
    def score_recon(
        self, images: torch.Tensor, recon: torch.Tensor, want_map: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores (and maps) of a batch and its recovery: the head's smoothed probability when the model
        has one, else the MSGMS map (minus the normal map); the max inside the border band either way."""
        sc = self.config.scoring
        if self.head is None:
            return score_maps(images, recon, sc, want_map, self.normal_map if sc.normal_map else None)
        h, w = images.shape[-2:]
        inputs = head_inputs(images, recon, sc)
        pad_h, pad_w = (-h) % 4, (-w) % 4  # the head halves twice: pad by replication, crop back
        if pad_h or pad_w:
            inputs = F.pad(inputs, (0, pad_w, 0, pad_h), mode="replicate")
        logits = self.precision.run(self.head, inputs)[..., :h, :w]
        return banded_max(smoothed_map(logits, sc.box_px, sc.head_map), sc.border_px, want_map)

    def prepare(self, arrays: list[np.ndarray]) -> Images:
        """Decoded [H, W, 3] arrays → what :meth:`score_images` takes: resized, or resampled by ``scale``."""
        if self.config.native:
            return to_native_input(arrays, self.config.native_scale)
        return to_model_input(arrays, self.config.image_size)

    def score_images(
        self,
        images: Images,
        want_maps: bool = False,
        want_recon: bool = False,
        want_regions: bool = False,
        orig_sizes: list[tuple[int, int]] | None = None,
    ) -> BatchResult:
        """Score the output of :meth:`prepare` (or a dataset loaded the same way).

        ``want_regions``: defect regions per image, boxes in ``orig_sizes`` pixels ((height, width)
        of each original image; default: the sizes scored).
        """
        if isinstance(images, list):
            return self.score_tiled(images, want_maps, want_recon, want_regions, orig_sizes)
        return self.score_tensor(images, want_maps, want_recon, want_regions, orig_sizes)

    def score_batches(
        self,
        images: Images,
        batch: int = 16,
        want_maps: bool = False,
        progress: bool = False,
        desc: str = "scoring",
        want_features: bool = False,
    ) -> Any:
        """Score a whole set batch by batch: (scores [N] float32, maps as a list of [1, H, W] half tensors when
        ``want_maps``), plus the [N, k] out-of-distribution features with ``want_features``. The one loop
        evaluation, calibration, threshold policies and studies share."""
        from tqdm import tqdm

        scores: list[np.ndarray] = []
        maps: list[torch.Tensor] = []
        features: list[np.ndarray] = [np.zeros((0, len(FEATURES)))]
        for i in tqdm(range(0, len(images), batch), desc=desc, disable=not progress):
            res = self.score_images(images[i : i + batch], want_maps=want_maps)
            scores.append(res.scores)
            features.append(res.features)  # type: ignore[arg-type]
            if want_maps:
                maps.extend(m.half() for m in res.maps)  # type: ignore[union-attr]
        out = (np.concatenate(scores) if scores else np.zeros(0, np.float32)), maps
        return (*out, np.concatenate(features)) if want_features else out

    @torch.no_grad()
    def score_tiled(
        self,
        images: list[torch.Tensor],
        want_maps: bool = False,
        want_recon: bool = False,
        want_regions: bool = False,
        orig_sizes: list[tuple[int, int]] | None = None,
    ) -> BatchResult:
        """Native-resolution scoring of [3, H, W] images of any sizes over overlapping tiles.

        Tiles of every image in the list share U-Net batches of ``tile_batch``;
        reconstructions are stitched per image (:mod:`.tiling`) and scored once on
        the whole image, so memory grows with the tile batch and one image, not
        with the list.
        """
        cfg = self.config
        if not cfg.native:
            raise ValueError("score_tiled needs a native-resolution model (trained with --train-crop)")
        tile, overlap = int(cfg.tile), int(cfg.tile_overlap)  # type: ignore[arg-type]
        imgs = [img.to(self.device, non_blocking=True).float() for img in images]
        for img in imgs:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"expected [3, H, W] images, got {tuple(img.shape)}")
        padded = [pad_to_tile(img, tile) for img in imgs]
        plan = [t for i, img in enumerate(imgs) for t in plan_tiles(i, img.shape[1], img.shape[2], tile, overlap)]
        # poisoned canvases: a pixel no tile wrote stays NaN and fails the image closed
        recon = [torch.full_like(img, float("nan")) for img in imgs]
        mask = [img.new_full((1, *img.shape[1:]), float("nan")) for img in imgs]
        composite = [torch.full_like(img, float("nan")) for img in imgs] if want_recon else None
        for k in range(0, len(plan), self.tile_batch):
            chunk = plan[k : k + self.tile_batch]
            x = torch.stack([cut(padded[t.image], t, tile) for t in chunk])
            attention, comp, _, rec = self.recover(x)
            smask = self.variant.excised_mask(attention, x).to(self.device)
            for j, t in enumerate(chunk):
                paste(recon[t.image], rec[j], t)
                paste(mask[t.image], smask[j], t)
                if composite is not None:
                    paste(composite[t.image], comp[j], t)
        scores, maps, regions, features = [], [], [], []
        for i, (img, rec) in enumerate(zip(imgs, recon, strict=True)):
            features.append(image_features(img[None], rec[None]))
            score, dmap = self.score_recon(img[None], rec[None], want_maps or want_regions)
            broken = ~torch.isfinite(rec).all()
            scores.append(torch.where(broken, torch.full_like(score, float("nan")), score))
            if want_regions:
                assert dmap is not None  # asked for
                size = orig_sizes[i] if orig_sizes else (int(img.shape[-2]), int(img.shape[-1]))
                regions += region_table(dmap[:, 0], dmap[:, 0] > self.region_threshold, [size])
            if want_maps:
                assert dmap is not None  # asked for
                maps.append(dmap[0].cpu())
        ratio = torch.stack([m.mean() for m in mask]) if mask else torch.zeros(0)
        score_t = torch.cat(scores) if scores else torch.zeros(0)
        return self._result(
            score_t,
            ratio,
            maps if want_maps else None,
            [r.cpu() for r in recon] if want_recon else None,
            [c.cpu() for c in composite] if composite is not None else None,
            [m.cpu() for m in mask] if want_recon else None,
            regions if want_regions else None,
            np.concatenate(features) if features else np.zeros((0, len(FEATURES))),
        )

    def _result(
        self, scores, ratio, maps, recon, composite, mask, regions, features: np.ndarray | None = None
    ) -> BatchResult:
        scores_np = scores.float().cpu().numpy().astype(np.float32)
        ood = None if self.ood_check is None or features is None else self.ood_check.reasons(features)
        is_anomaly = ~(scores_np <= self.threshold)  # fail closed: NaN on either side is an anomaly
        if ood is not None:  # a frame the model cannot judge never passes
            is_anomaly |= np.array([r is not None for r in ood], dtype=bool)
        return BatchResult(
            scores=scores_np,
            normalized=(scores_np / max(self.threshold, 1e-12)).astype(np.float32),
            is_anomaly=is_anomaly,
            mask_ratio=ratio.float().cpu().numpy().astype(np.float32),
            maps=maps,
            recon=recon,
            composite=composite,
            mask=mask,
            regions=regions,
            features=features,
            ood=ood,
        )

    @torch.no_grad()
    def score_tensor(
        self,
        images: torch.Tensor,
        want_maps: bool = False,
        want_recon: bool = False,
        want_regions: bool = False,
        orig_sizes: list[tuple[int, int]] | None = None,
    ) -> BatchResult:
        """Score a [B, 3, S, S] batch in [0, 1] (already resized to ``image_size``).

        A native-resolution model scores the batch's images in tiles (any H, W).
        """
        if self.config.native:
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"expected a [B, 3, H, W] batch, got {tuple(images.shape)}")
            return self.score_tiled(list(images), want_maps, want_recon, want_regions, orig_sizes)
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"expected a [B, 3, {size}, {size}] batch, got {tuple(images.shape)}")
        images = images.to(self.device, non_blocking=True).float()
        sc = self.config.scoring
        if self.variant.is_riad:  # baseline: 12 masked passes, no excision
            from ..model import riad

            scores, maps, recon = riad.score(self.unet, images, sc, want_maps or want_regions, forward=self.reconstruct)
            composite, ratio, attention = images, torch.ones(images.shape[0]), None
        else:
            attention, composite, ratio, recon = self.recover(images)
            scores, maps = self.score_recon(images, recon, want_maps or want_regions)
        # fail closed: a reconstruction with any NaN/inf pixel scores NaN, even where the median or the
        # border band would have hidden the pixel (one reduction over the recon, on its device)
        broken = ~torch.isfinite(recon).flatten(1).all(dim=1)
        scores = torch.where(broken.to(scores.device), torch.full_like(scores, float("nan")), scores)
        regions = None
        if want_regions:  # on the maps' device; one host transfer of the region table
            assert maps is not None  # computed for the regions
            sizes = orig_sizes or [(int(images.shape[-2]), int(images.shape[-1]))] * images.shape[0]
            regions = region_table(maps[:, 0], maps[:, 0] > self.region_threshold, sizes)
        return self._result(
            scores,
            ratio,
            maps.cpu() if maps is not None and want_maps else None,
            recon.cpu() if want_recon else None,
            composite.cpu() if want_recon else None,
            self.variant.excised_mask(attention, images).cpu() if want_recon else None,
            regions,
            image_features(images, recon),
        )

    @property
    def decode_target(self) -> int | None:
        """The side images are decoded towards (whole-image models; None: native resolution needs every pixel)."""
        return None if self.config.native else self.config.image_size

    def score_arrays(
        self,
        arrays: list[np.ndarray],
        want_maps: bool = False,
        want_regions: bool = False,
        orig_sizes: list[tuple[int, int]] | None = None,
    ) -> BatchResult:
        """Score decoded [H, W, 3] arrays of any size; region boxes in ``orig_sizes`` pixels ((height, width) of
        each image before a reduced decode), by default the arrays' own."""
        sizes = orig_sizes or image_sizes(arrays)
        return self.score_images(self.prepare(arrays), want_maps=want_maps, want_regions=want_regions, orig_sizes=sizes)
