"""The saliency registry: every variant ``--saliency`` accepts, by name, with the traits the code acts on.

One registry, timm-style, from which every list of names derives: the CLI's ``--saliency`` choices and
help, config validation, and each decision training and the pipeline take on a variant (build DINO or a
weight-free module, fit it, run the two-pass first pass, mosaic or empty the excised cells) reads a
trait here instead of comparing names.

It is torch-free: the CLI builds its options from it before torch is imported. The implementations
register against it: weight-free modules with :func:`ear_stream.model.weightfree.register_saliency`
(which may also declare a new spec, for a variant defined outside this package); the two DINO variants
share :class:`ear_stream.model.saliency.DinoAttention`; ``none`` has no module.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import ConfigError

#: the choice that is no variant: :func:`ear_stream.model.config.resolve_saliency` picks one
AUTO = "auto"
#: where a ``needs_dino`` variant finds its weights file when ``--dino-weights`` is not given
DINO_ENV = "EAR_DINO_WEIGHTS"
#: default side of the attention grid of the weight-free variants (``--grid``; DINO's is 28 at 224 px)
DEFAULT_GRID = 16


@dataclass(frozen=True)
class SaliencySpec:
    """What a saliency variant is and needs (frozen: a variant's traits never change at run time)."""

    name: str
    #: one phrase for ``--help``: what the variant excises
    summary: str
    #: needs the DINO ViT-S/8 weights file (``--dino-weights`` / ``EAR_DINO_WEIGHTS``); its hash is recorded
    needs_dino: bool = False
    #: yields an attention grid [B, g, g] for the Q3 mask; False (``none``): the whole image is mosaicked
    attention: bool = True
    #: the excised cells show their mosaic (EAR's hint); False (``binary``): they are emptied
    mosaic_hint: bool = True
    #: learns statistics from the training images (``fit``), stored as ``saliency.*`` beside the U-Net
    fitted: bool = False
    #: its attention is a first U-Net pass on a light mosaic (run by the pipeline and the trainer, which
    #: also train on that first pass's input)
    two_pass: bool = False

    @property
    def weight_free(self) -> bool:
        """A module of :mod:`ear_stream.model.weightfree`: no pretrained weights, its constructor arguments
        in ``ModelConfig.saliency_params`` (``--grid``)."""
        return self.attention and not self.needs_dino


_SPECS: dict[str, SaliencySpec] = {}
#: the traits :func:`saliency_names` filters by (the spec's boolean fields and properties)
_TRAITS = frozenset({f.name for f in fields(SaliencySpec) if f.type == "bool"} | {"weight_free"})


def register_spec(spec: SaliencySpec) -> SaliencySpec:
    """Make a variant known by name (once: a second spec under one name is a programming error)."""
    if spec.name == AUTO:
        raise ConfigError(f"{AUTO!r} is the choice of a variant, not one")
    if spec.name in _SPECS:
        raise ConfigError(f"saliency {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


def saliency_spec(name: str) -> SaliencySpec:
    """The spec of a registered variant (``auto`` is no variant: resolve it first)."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ConfigError(f"saliency must be one of {saliency_names()}, got {name!r}") from None


def saliency_names(**traits: bool) -> tuple[str, ...]:
    """Registered names in registration order, optionally only those with the given traits
    (``saliency_names(weight_free=True)``)."""
    unknown = set(traits) - _TRAITS
    if unknown:
        raise TypeError(f"unknown saliency traits {sorted(unknown)}; known: {sorted(_TRAITS)}")
    return tuple(n for n, s in _SPECS.items() if all(getattr(s, k) == v for k, v in traits.items()))


def saliency_help() -> str:
    """``name = summary`` for every variant, for ``--saliency``'s help."""
    return "; ".join(f"{s.name} = {s.summary}" for s in _SPECS.values()) + "."


# the built-in variants, in the order ``--help`` lists them (README.md, "Saliency", describes each)
register_spec(SaliencySpec("dino", "full EAR (last-block [CLS] attention of DINO ViT-S/8, the paper)", needs_dino=True))
register_spec(SaliencySpec("none", "mosaic the whole image (no attention)", attention=False))
register_spec(
    SaliencySpec("binary", "DINO mask without mosaic hint (the cells are emptied)", needs_dino=True, mosaic_hint=False)
)
register_spec(SaliencySpec("spectral", "spectral-residual saliency of the gray image"))
register_spec(
    SaliencySpec("stats", "deviation from per-cell statistics of the training images (aligned products)", fitted=True)
)
register_spec(SaliencySpec("self", "two-pass EAR (a first U-Net pass finds what to excise)", two_pass=True))
