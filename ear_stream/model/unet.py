"""The paper's reconstruction U-Net (RIAD-style), docs/design.md, "Recovery"."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
    )


class EncoderBlock(nn.Sequential):
    """3 × conv→BN→LeakyReLU; the third conv has stride 2 and halves the resolution."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(_conv_bn_act(cin, cout, k), _conv_bn_act(cout, cout, k), _conv_bn_act(cout, cout, k, 2))


class DecoderBlock(nn.Module):
    """×2 nearest upsampling, concatenation with the skip, then 3 × conv→BN→LeakyReLU."""

    def __init__(self, cin: int, cskip: int, cout: int, k: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.convs = nn.Sequential(
            _conv_bn_act(cin + cskip, cout, k), _conv_bn_act(cout, cout, k), _conv_bn_act(cout, cout, k)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNet(nn.Module):
    """5 encoder and 5 decoder blocks; encoder block i feeds decoder block 5 − i.

    Input sides must be multiples of 32. Output is a sigmoid image in [0, 1].
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 32, kernel_size: int = 3) -> None:
        super().__init__()
        widths = [min(base_channels * 2**i, base_channels * 8) for i in range(5)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.encoders.append(EncoderBlock(cin, w, kernel_size))
            cin = w
        self.decoders = nn.ModuleList()
        # decoder j (1-based) upsamples to the resolution of encoder 5 - j and concatenates it.
        for j in range(1, 6):
            skip = widths[5 - j - 1] if j < 5 else 0
            out = widths[5 - j - 1] if j < 5 else base_channels
            self.decoders.append(DecoderBlock(cin, skip, out, kernel_size))
            cin = out
        self.head = nn.Conv2d(cin, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"UNet input sides must be multiples of 32, got {tuple(x.shape[-2:])}")
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
        for j, dec in enumerate(self.decoders, start=1):
            x = dec(x, skips[5 - j - 1] if j < 5 else None)
        return torch.sigmoid(self.head(x))
