"""Does the recovery recover? Its error on good images against two baselines that need no training.

A U-Net that outputs a flat, tinted square still "flags" defects: the MSGMS map of
a flat reconstruction is the input's own gradient energy. So every trained model
is measured on its held-out good images against

* a **flat** image (each image's per-channel mean): what a network that learned
  nothing but the colour would return;
* the **excised input** itself (the mosaic the U-Net was given): what a network
  that learned to copy its input would return;

plus the **colour cast** (mean absolute difference of per-channel means, e.g.
whites rendered beige). A model not clearly better than the flat image is marked
``degenerate`` in its manifest, ``train`` says so, and ``eval``'s report warns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

#: degenerate when the recovery error is at least this fraction of the flat image's
DEGENERATE_RATIO = 0.75


@dataclass(frozen=True)
class RecoveryCheck:
    """Mean absolute errors (per pixel and channel, images in [0, 1]) on held-out good images."""

    recon_error: float
    flat_error: float
    excised_error: float
    colour_cast: float
    n_images: int

    @property
    def ratio_to_flat(self) -> float:
        return self.recon_error / max(self.flat_error, 1e-12)

    @property
    def degenerate(self) -> bool:
        return not self.ratio_to_flat < DEGENERATE_RATIO

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "ratio_to_flat": self.ratio_to_flat,
            "degenerate_ratio": DEGENERATE_RATIO,
            "degenerate": self.degenerate,
        }

    def curve_fields(self) -> dict:
        """What each learning-curve record carries."""
        return {"recon_error": self.recon_error, "recon_to_flat": self.ratio_to_flat, "colour_cast": self.colour_cast}

    def verdict(self) -> str:
        """One line for the end of ``train``."""
        head = (
            f"recovery error {self.recon_error:.4f} = {self.ratio_to_flat:.2f}× a flat image's "
            f"({self.flat_error:.4f}), excised input {self.excised_error:.4f}, colour cast {self.colour_cast:.4f}"
        )
        if self.degenerate:
            return (
                f"DEGENERATE MODEL: {head}: the U-Net is not clearly better than a flat image "
                f"(needs < {DEGENERATE_RATIO:g}×); train longer or check the data"
            )
        return head


@torch.no_grad()
def recovery_check(pipe, images: torch.Tensor, batch: int = 16) -> RecoveryCheck:
    """Measure a pipeline's recovery on good images [N, 3, S, S] against the flat and excised baselines."""
    sums = torch.zeros(4, dtype=torch.float64)
    n = int(images.shape[0])
    for i in range(0, n, batch):
        x = images[i : i + batch].to(pipe.device).float()
        _, composite, _, recon = pipe.recover(x)
        means = x.mean(dim=(2, 3), keepdim=True)
        per_image = torch.stack(
            [
                (recon - x).abs().mean(dim=(1, 2, 3)),
                (means - x).abs().mean(dim=(1, 2, 3)),
                (composite.float() - x).abs().mean(dim=(1, 2, 3)),
                (recon.mean(dim=(2, 3)) - means.flatten(2)[..., 0]).abs().mean(dim=1),
            ]
        )
        sums += per_image.double().sum(dim=1).cpu()
    recon_e, flat_e, excised_e, cast = (sums / max(1, n)).tolist()
    return RecoveryCheck(recon_e, flat_e, excised_e, cast, n)
