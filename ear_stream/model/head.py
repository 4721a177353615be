"""The learned anomaly head: a small segmentation network on [input, reconstruction, MSGMS map].

The MSGMS map of EAR says where the recovery differs from the input; much of what
differs on good images is normal structure the U-Net cannot reproduce (edges,
texture it only approximates), and the plain max of the map lands there. The head
learns, from simulated defects (:mod:`ear_stream.inspect.simulate`), what a
defect looks like against its reconstruction (DRAEM's discriminative network,
smaller). The fused ``msgms`` stays the first stage: its map is an input channel.

Image score: the max, inside the scoring border band, of the head's probability map
smoothed by the scoring box (DRAEM's averaged-map max), so one noisy pixel does
not flag an image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .config import ScoringConfig
from .container import HEAD_PREFIX  # where the head's tensors sit in weights.safetensors: its container attribute

__all__ = ["HEAD_IN_CHANNELS", "HEAD_PREFIX", "AnomalyHead", "focal_dice_loss", "head_inputs", "smoothed_map"]

#: channels the head sees: input RGB, reconstruction RGB, the MSGMS map
HEAD_IN_CHANNELS = 7


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class AnomalyHead(nn.Module):
    """Encoder–decoder: one conv at full resolution, two at half, a dilated bottleneck at a quarter;
    logits [B, 1, H, W].

    Most of the work runs at reduced resolution (the first version, with two blocks at full
    resolution, cost as much per step as the U-Net); the receptive field (~90 px) still lets it
    compare a spot with its surroundings.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = int(width)
        self.stem = _block(HEAD_IN_CHANNELS, w)
        self.enc = nn.Sequential(nn.MaxPool2d(2), _block(w, 2 * w), _block(2 * w, 2 * w))
        self.mid = nn.Sequential(nn.MaxPool2d(2), _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 4))
        self.dec = _block(4 * w + 2 * w, 2 * w)
        self.out = nn.Conv2d(2 * w + w, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"AnomalyHead input sides must be multiples of 4, got {tuple(x.shape[-2:])}")
        s = self.stem(x)
        e = self.enc(s)
        d = self.dec(torch.cat([F.interpolate(self.mid(e), scale_factor=2.0, mode="nearest"), e], dim=1))
        return self.out(torch.cat([F.interpolate(d, scale_factor=2.0, mode="bilinear"), s], dim=1))


def head_inputs(images: torch.Tensor, recon: torch.Tensor, sc: ScoringConfig) -> torch.Tensor:
    """[input, reconstruction, MSGMS map] [B, 7, H, W] in fp32, the same in training and inference.

    The map is the fused op's, unsmoothed (box 1): the head does its own spatial reasoning.
    """
    _, dmap = ops.msgms(images, recon, sc.n_scales, sc.c, sc.median, 1, True)
    assert dmap is not None  # want_map=True
    return torch.cat([images.float(), recon.float(), dmap], dim=1)


def smoothed_map(logits: torch.Tensor, box: int, kind: str = "probability") -> torch.Tensor:
    """The head's score map: sigmoid(logits) (``probability``) or the logits themselves (``logit``), averaged
    over a box×box window (edge windows average what lies inside)."""
    values = torch.sigmoid(logits.float()) if kind == "probability" else logits.float()
    if box <= 1:
        return values
    return F.avg_pool2d(values, box, stride=1, padding=box // 2, count_include_pad=False)


def focal_dice_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al.) + soft Dice on the defect mask: rare positive pixels still matter."""
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    focal = ((1 - p_t) ** gamma * bce).mean()
    inter = (p * target).sum()
    dice = 1.0 - (2 * inter + 1.0) / (p.sum() + target.sum() + 1.0)
    return focal + dice
