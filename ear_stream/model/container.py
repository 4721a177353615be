"""The model container: every trained part of one product model in one ``nn.Module``.

``ProductModel.state_dict()`` is exactly what ``weights.safetensors`` holds and
``load_state_dict`` reads it back, so the key of every tensor is its path in this
module and the key prefixes are nothing but the parts' attribute names:

* the U-Net (``unet``) at the root, as ``encoders.*``, ``decoders.*``, ``head.*``:
  artifacts held only the U-Net before the other parts joined, and keep loading;
* ``saliency.*``: what the saliency module persists (a fitted variant's statistics;
  DINO keeps its ViT out, those weights have their own file, checked by hash);
* ``anomaly_head.*``: the learned anomaly head (named so: the U-Net has its own ``head``);
* ``scoring.normal_map``: the per-pixel normal map the scoring subtracts.

One file, one hash: ``model_version`` covers every part. Building a container from a
config or a model directory is :mod:`.factory`'s job; this module only holds the parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .saliency import SaliencyModule

#: where the head's tensors sit in weights.safetensors (the attribute below; for readers of a file's keys)
HEAD_PREFIX = "anomaly_head."


class ScoringState(nn.Module):
    """The tensors the scoring reads besides the networks: the normal map ([1, 1, S, S]; absent when unused)."""

    normal_map: torch.Tensor | None

    def __init__(self, normal_map: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("normal_map", normal_map)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        stored = state_dict.get(f"{prefix}normal_map")
        if stored is not None and self.normal_map is None:  # a stored map is kept even where the config does not
            self.normal_map = torch.empty_like(stored)  # subtract it, as before the container (eval may switch it on)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ProductModel(nn.Module):
    """U-Net, saliency, learned head and normal map of one product model (a container: the pipeline runs
    the parts, so it has no ``forward``).

    ``saliency`` and ``anomaly_head`` may be None (a variant without attention, a model scored by the plain
    MSGMS max): such a part is still a named part, so a stored tensor of it is known as a leftover this
    model does not use, not mistaken for a U-Net key.
    """

    unet: nn.Module
    saliency: SaliencyModule | None
    anomaly_head: nn.Module | None
    scoring: ScoringState

    def __init__(
        self,
        unet: nn.Module,
        saliency: SaliencyModule | None = None,
        anomaly_head: nn.Module | None = None,
        normal_map: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.register_module("saliency", saliency)
        self.register_module("anomaly_head", anomaly_head)
        self.scoring = ScoringState(normal_map)
        self.register_state_dict_post_hook(_unet_keys_to_root)
        self.register_load_state_dict_pre_hook(_unet_keys_from_root)

    def load_stored(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a weights file's tensors; ``ValueError`` saying which part does not fit or is not stored.

        Tensors of a part this model does not use (a head its config turned off) are left unread, as
        before the container existed.
        """
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a stored tensor of another shape: name the first few, not all hundred
            lines = [line.strip() for line in str(exc).splitlines()[1:]]
            more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
            raise ValueError(
                f"the stored weights do not fit the model its manifest describes: {'; '.join(lines[:3])}{more}"
            ) from exc
        unused = {name for name, part in self._modules.items() if part is None}
        unexpected = [k for k in unexpected if k.split(".", 1)[0] not in unused]
        for keys, what in ((missing, "missing"), (unexpected, "unexpected")):
            if keys:
                raise ValueError(self._refusal(keys, what))

    def _refusal(self, keys: list[str], what: str) -> str:
        name = keys[0].split(".", 1)[0]
        part = self._modules.get(name, self.unet)  # the U-Net's keys sit at the root
        if what == "missing" and part is self.anomaly_head:
            return "its scoring uses a learned head, but no head weights are stored"
        if what == "missing" and part is self.scoring:
            return "its scoring subtracts a normal map, but none is stored"
        label = "U-Net" if part is self.unet else name
        return f"the stored {label} does not fit its manifest: {what} {keys[:5]}"


def _unet_keys_to_root(module: ProductModel, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """``unet.X`` → ``X`` (order kept): the U-Net's keys are the file's root keys."""
    inner = f"{prefix}unet."
    items = list(state.items())
    state.clear()
    for key, value in items:
        state[prefix + key[len(inner) :] if key.startswith(inner) else key] = value


def _unet_keys_from_root(module: ProductModel, state: dict[str, Any], prefix: str, *_: Any) -> None:
    """The reverse, for the keys the U-Net has: everything else stays where the parts look for it."""
    for key in module.unet.state_dict():
        root, inner = prefix + key, f"{prefix}unet.{key}"
        if root in state and inner not in state:
            state[inner] = state.pop(root)
