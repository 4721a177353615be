"""Saliency (excision masks) from DINO ViT-S/8 attention, docs/design.md, "Attention"; the saliency base class.

Every saliency module (DINO here, the weight-free ones in :mod:`.weightfree`) is a
:class:`SaliencyModule`; what each variant needs and does is its spec in :mod:`.registry`.

Only the [CLS] row of the last block's attention is needed, so the last block
is evaluated by hand: one query against all keys, never the N×N matrix.

Weights always come from a local file (flag ``--dino-weights`` or the
``EAR_DINO_WEIGHTS`` environment variable). :func:`fetch_dino_weights` is the
only code that touches the network and runs only when asked to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import DINO_ENV

DINO_ARCH = "vit_small_patch8_224"
DINO_INPUT = 224
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# prefixes that DINO training checkpoints put in front of the backbone keys
_KEY_PREFIXES = ("module.", "backbone.", "teacher.", "student.", "model.")


class DinoWeightsError(ConfigError):
    """The DINO weights file is missing, unreadable or of an unknown layout."""


class SaliencyModule(nn.Module):
    """Base of every saliency: ``forward(images [B,3,H,W] in [0,1]) -> attention [B, g, g]``.

    ``state_dict`` holds what the artifact stores as ``saliency.*`` (fitted statistics; nothing for DINO,
    whose weights have their own file). :meth:`params` and :meth:`fit` are no-ops unless a variant's spec
    says it has parameters (``weight_free``) or fits (``fitted``).
    """

    def params(self) -> dict[str, Any]:
        """Constructor arguments, recorded in the manifest as ``saliency_params``."""
        return {}

    def fit(self, images: torch.Tensor) -> None:
        """Learn statistics from normal training images."""


def resolve_dino_weights(path: str | os.PathLike | None) -> Path | None:
    """The weights file from the flag, else from ``EAR_DINO_WEIGHTS``, else ``None``."""
    chosen = path or os.environ.get(DINO_ENV)
    if not chosen:
        return None
    p = Path(chosen).expanduser()
    if not p.is_file():
        raise DinoWeightsError(f"DINO weights file not found: {p}")
    return p


def read_dino_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read official (``dino_deitsmall8_pretrain.pth``) or timm-layout weights without unpickling code.

    ``.safetensors`` files are read as such; ``.pth``/``.bin`` with
    ``torch.load(weights_only=True)``, which refuses anything but tensors and
    containers. Wrapping dicts (``teacher``, ``model``, ``state_dict``) and key
    prefixes (``module.``, ``backbone.``) are removed.
    """
    path = Path(path)
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)  # noqa: TID251 - weights only
    except Exception as exc:
        raise DinoWeightsError(f"cannot read DINO weights {path}: {exc}") from exc
    for wrapper in ("teacher", "model", "state_dict", "student"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise DinoWeightsError(f"{path} holds no state dict")
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key.startswith("head"):  # DINO projection head / classifier: not used
            continue
        cleaned[key] = value
    return cleaned


def build_dino(weights: str | os.PathLike) -> nn.Module:
    """timm ViT-S/8 with the given DINO weights, in eval mode."""
    import timm

    model = timm.create_model(DINO_ARCH, pretrained=False, num_classes=0)
    state = read_dino_state_dict(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        raise DinoWeightsError(
            f"{weights} is not a ViT-S/8 checkpoint: missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return model.eval().requires_grad_(False)


class DinoAttention(SaliencyModule):
    """[CLS]-to-patch attention of the last block, averaged over heads: [B,3,H,W] → [B,28,28].

    The ViT's weights stay out of ``state_dict``: they come from the DINO file (its hash is in the manifest),
    never from the artifact, and loading a state without them keeps the ones the module was built with.
    """

    mean: torch.Tensor  # buffers, typed (nn.Module's __getattr__ would say Tensor | Module)
    std: torch.Tensor
    vit: Any  # a timm VisionTransformer: its private helpers (_pos_embed, patch_drop) are called below

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_state_dict_post_hook(_drop_vit)
        self.register_load_state_dict_pre_hook(_keep_vit)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = images.float()
        if x.shape[-2:] != (DINO_INPUT, DINO_INPUT):
            x = F.interpolate(x, size=(DINO_INPUT, DINO_INPUT), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for blk in vit.blocks[:-1]:
            x = blk(x)
        return cls_attention(vit.blocks[-1], x)


def _drop_vit(module: DinoAttention, state: dict[str, torch.Tensor], prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state if k.startswith(f"{prefix}vit.")]:
        del state[key]


def _keep_vit(module: DinoAttention, state: dict[str, torch.Tensor], prefix: str, *_: Any) -> None:
    for key, value in module.vit.state_dict().items():
        state.setdefault(f"{prefix}vit.{key}", value)


def cls_attention(block: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Softmax(q_cls·Kᵀ·scale) over patch tokens for one timm block, averaged over heads."""
    attn = block.attn
    b, n, _ = tokens.shape
    y = block.norm1(tokens)
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # [B, heads, N, hd]
    logits = torch.einsum("bhd,bhnd->bhn", q[:, :, 0].float(), k.float()) * attn.scale
    probs = logits.softmax(dim=-1)[:, :, 1:]  # drop the CLS→CLS entry; keep the patch tokens
    side = int(round((n - 1) ** 0.5))
    return probs.mean(dim=1).reshape(b, side, side)


def fetch_dino_weights(dest: str | os.PathLike) -> Path:
    """Download the official DINO ViT-S/8 weights (needs internet; never called implicitly)."""
    import urllib.request

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    urllib.request.urlretrieve(DINO_URL, tmp)
    tmp.replace(dest)
    return dest


def write_random_dino_checkpoint(path: str | os.PathLike, seed: int = 0, layout: str = "official") -> Path:
    """A ViT-S/8 checkpoint with random weights, in the official or timm layout (for tests/demos)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(DINO_ARCH, pretrained=False, num_classes=0)
    state = model.state_dict()
    path = Path(path)
    if layout == "official":
        torch.save(state, path)
    elif layout == "timm":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif layout == "teacher":
        torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, path)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return path
