"""The inference pipeline shared by every entry point (CLI, stream worker, Ray actors).

Batch of images in [0, 1] → attention (when the variant uses it) → fused ``excise`` →
U-Net recovery → fused ``msgms`` score, or the learned head's map → verdicts.

This module owns :class:`Pipeline`: one :class:`~ear_stream.model.container.ProductModel`
on one device with its thresholds, and the whole-image scoring path. Around it, each
with its own job: :mod:`.inputs` (image batches, files, the device), :mod:`.maps` (map →
score, the normal map), :mod:`.tiled` (native resolution over tiles), :mod:`.verdicts`
(:class:`BatchResult`, fail-closed verdicts). Their public names are importable from
here too, where callers have always found them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io.decode import to_model_input, to_native_input
from ..model.artifact import ArtifactError
from ..model.config import ModelConfig
from ..model.container import ProductModel
from ..model.exported import Runner, is_export_dir, open_exported
from ..model.factory import load_model
from ..model.head import head_inputs, smoothed_map
from ..model.precision import DEFAULT_PRECISION, Precision, compile_module, resolve_precision
from ..model.saliency import SaliencyModule
from .inputs import DeviceUnavailable, Images, image_sizes, load_images, resolve_device, select
from .maps import banded_max, fit_normal_map, score_maps
from .ood import FEATURES, OODCheck, image_features
from .regions import region_table
from .stages import StageTimer, maybe_stage
from .threshold_policies import FollowImagePolicy
from .tiled import score_tiled
from .variant import Variant, paste_context, two_pass_attention
from .verdicts import BatchResult, batch_result

__all__ = [
    "BatchResult",
    "DeviceUnavailable",
    "Images",
    "Pipeline",
    "banded_max",
    "fit_normal_map",
    "image_sizes",
    "load_images",
    "resolve_device",
    "score_maps",
    "select",
]


class Pipeline:
    """One trained product model, ready to score batches on one device.

    The parts live in :attr:`model` (a :class:`ProductModel`, the artifact's weights file); ``unet``,
    ``attention_model``, ``head`` and ``normal_map`` read them from there.
    """

    def __init__(
        self,
        config: ModelConfig,
        unet: nn.Module,  # a UNet (the precision path may wrap it)
        threshold: float,
        device: torch.device,
        attention_model: SaliencyModule | None = None,
        model_version: str = "",
        normal_map: torch.Tensor | None = None,
        tile_batch: int = 16,
        pixel_threshold: float | None = None,
        precision: str | Precision = DEFAULT_PRECISION,
        head: nn.Module | None = None,
        runtime: Runner | None = None,
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
        #: an exported graph's runner (:meth:`from_export`): it replaces saliency → U-Net → score; None: torch
        self.runtime = runtime
        #: what runs the scoring function: ``torch`` or an export format (the start-up line says it)
        self.runtime_name = "torch"
        #: where ``score --timings`` accounts the stages (saliency, U-Net, scoring); None: nothing is timed
        self.timer: StageTimer | None = None
        self.precision = precision if isinstance(precision, Precision) else resolve_precision(precision, device)
        if runtime is not None:
            self.model: ProductModel = None  # type: ignore[assignment]  # the graph holds the networks
            return
        if config.head and head is None:
            raise ArtifactError("the model scores with a learned head, but no head weights were given")
        #: every part, on the device in eval mode: the U-Net, the saliency, the learned anomaly head
        #: (``config.head``: scores come from its map instead of the MSGMS max), the normal map
        #: (subtracted when ``config.scoring.normal_map``)
        self.model = ProductModel(unet, attention_model, head, normal_map).to(device).eval()
        # the U-Net's numeric path (bf16 autocast, channels_last), resolved for this device above; the networks'
        # weights take its layout (the saliency keeps its own: DINO's numerics stay those it was checked with)
        self.precision.module(self.model.unet)
        if self.model.anomaly_head is not None:
            self.precision.module(self.model.anomaly_head)
        #: what runs the U-Net: the module itself, or its compiled graph after :meth:`compile`
        self._unet_forward: nn.Module = self.unet

    @property
    def unet(self) -> nn.Module:
        return self.model.unet

    @property
    def attention_model(self) -> SaliencyModule | None:
        return self.model.saliency

    @property
    def head(self) -> nn.Module | None:
        return self.model.anomaly_head

    @property
    def normal_map(self) -> torch.Tensor | None:
        return self.model.scoring.normal_map

    @normal_map.setter
    def normal_map(self, value: torch.Tensor | None) -> None:
        self.model.scoring.normal_map = None if value is None else value.to(self.device)

    @property
    def variant(self) -> Variant:
        """What the config's variant does (read from the config each time: eval may change its scoring)."""
        return Variant.of(self.config)

    @classmethod
    def from_model(
        cls, config: ModelConfig, model: ProductModel, threshold: float, device: torch.device, **kwargs: Any
    ) -> Pipeline:
        """A pipeline over a container's parts (``kwargs``: the constructor's other options)."""
        return cls(config, model.unet, threshold, device, model.saliency, normal_map=model.scoring.normal_map,
                   head=model.anomaly_head, **kwargs)  # fmt: skip

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
        model's pixel policy is ``image``). A directory written by ``ear-stream export`` is run by its
        runtime (:meth:`from_export`)."""
        if is_export_dir(model_dir):
            if compile:
                raise ArtifactError(f"{model_dir} is an exported model: it is compiled already (drop --compile)")
            return cls.from_export(model_dir, device, threshold, precision)
        model, manifest = load_model(model_dir, dino_weights)
        try:
            manifest.config = manifest.config.with_tiling(tile, tile_overlap)
        except ValueError as exc:
            raise ArtifactError(f"{model_dir}: {exc}") from exc
        pipe = cls.from_model(manifest.config, model, manifest.threshold, resolve_device(device),
                              model_version=manifest.model_version, precision=precision)  # fmt: skip
        pipe.apply_thresholds(manifest, threshold)
        if compile:
            pipe.compile()
        return pipe

    @classmethod
    def from_export(
        cls,
        export_dir: str | Path,
        device: str = "auto",
        threshold: float | None = None,
        precision: str = DEFAULT_PRECISION,
    ) -> Pipeline:
        """An exported directory (``ear-stream export``), verified, scored by its runtime on the CPU: the same
        verdicts, regions and rows as the torch pipeline (the thresholds are those of its manifest copy)."""
        if device not in ("auto", "cpu"):
            raise ArtifactError(f"{export_dir} is an exported model: this build runs it on the CPU (--device cpu)")
        exported = open_exported(export_dir, precision=precision)
        manifest = exported.manifest
        pipe = cls(manifest.config, None, manifest.threshold, torch.device("cpu"),  # type: ignore[arg-type]
                   model_version=manifest.model_version, precision="fp32", runtime=exported.runner)  # fmt: skip
        pipe.runtime_name = f"{exported.info.format} ({exported.info.precision})"
        pipe.apply_thresholds(manifest, threshold)
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
        self.pixel_threshold = None if manifest.pixel_policy == FollowImagePolicy.name else manifest.pixel_threshold
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
        """The attention grids of a batch (None without attention): the saliency module's, or, for a
        two-pass variant, the grid-pooled error of a first U-Net pass."""
        saliency = self.attention_model
        if saliency is None:
            return None
        if self.variant.two_pass:
            return two_pass_attention(saliency, self.reconstruct, images, self.config.scoring)[0]
        with self.precision.autocast():
            return saliency(images).float()

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
        with maybe_stage(self.timer, "saliency"):
            attention = self.attention(images)
        with maybe_stage(self.timer, "U-Net"):
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
        with the list (:func:`.tiled.score_tiled`).
        """
        return score_tiled(self, images, want_maps, want_recon, want_regions, orig_sizes)

    def _result(
        self, scores, ratio, maps, recon, composite, mask, regions, features: np.ndarray | None = None
    ) -> BatchResult:
        return batch_result(scores, ratio, self.threshold, self.ood_check, features, maps=maps, recon=recon,
                            composite=composite, mask=mask, regions=regions)  # fmt: skip

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
        attention = None
        maps: torch.Tensor | None
        if self.runtime is not None:
            if want_recon:
                raise ArtifactError("an exported model gives no composite or mask: score reports with the torch model")
            with maybe_stage(self.timer, "graph"):
                scores, maps, recon, ratio = self._run_exported(images)
            composite = images
        elif self.variant.is_riad:  # baseline: 12 masked passes, no excision
            from ..model import riad

            scores, maps, recon = riad.score(self.unet, images, sc, want_maps or want_regions, forward=self.reconstruct)
            composite, ratio, attention = images, torch.ones(images.shape[0]), None
        else:
            attention, composite, ratio, recon = self.recover(images)
            with maybe_stage(self.timer, "scoring"):
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

    def _run_exported(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.shape[0] == 0:  # the graph's batch starts at 1
            h, w = images.shape[-2:]
            return (
                images.new_zeros(0),
                images.new_zeros((0, 1, h, w)),
                images.new_zeros((0, 3, h, w)),
                images.new_zeros(0),
            )
        assert self.runtime is not None
        return self.runtime(images)

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
