"""Threshold policies: one class per named way of choosing a threshold, registered by name.

A policy is written ``name`` or ``name:NUMBER`` (``fpr:0.02``, ``simf1``). Each class says what it is
called, the number it takes and its domain (:meth:`ThresholdPolicy.validate`), what it means for image
thresholds and for pixel thresholds (its ``summary``, one line per scope it applies to), whether it
needs labelled items, and how it computes a threshold from the held-out calibration
(:meth:`~ThresholdPolicy.image_threshold`, :meth:`~ThresholdPolicy.pixel_threshold`).

The registry is the one list of policies: :func:`parse_policy` (what training, ``ear-stream threshold``,
the review station and a stored manifest accept), the CLI's policy help (:func:`policy_help`) and the
docs check (``tests/inspect/test_thresholds.py``) read it. A new policy is one class here with
:func:`register_policy`. The defaults are ``model.config.DEFAULT_IMAGE_POLICY`` / ``DEFAULT_PIXEL_POLICY``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from ..errors import ConfigError
from .threshold_stats import f1_optimal, lowest_threshold_with_frr

__all__ = [
    "SCOPES",
    "F1Policy",
    "FollowImagePolicy",
    "FprPolicy",
    "ManualPolicy",
    "QuantilePolicy",
    "Scope",
    "SigmaPolicy",
    "SimF1Policy",
    "ThresholdPolicy",
    "image_threshold",
    "parse_policy",
    "pixel_threshold",
    "policy_class",
    "policy_help",
    "policy_names",
    "register_policy",
]

#: what a threshold decides: whether an image is flagged, or which of a map's pixels form defect regions
Scope = Literal["image", "pixel"]
SCOPES: tuple[Scope, ...] = ("image", "pixel")
#: labelled validation items as (scores, labels with True = defective)
Labelled = tuple[np.ndarray, np.ndarray]
#: why pixel policies fail on a model without pixel statistics (written once: two checks raise it)
NO_PIXEL_STATS = "no pixel statistics stored in this model: pass --data ROOT --category C to rescore them"


@dataclass(frozen=True)
class ThresholdPolicy:
    """A named way of choosing a threshold; ``value`` is its number (K, Q, F, T), None for those without.

    Subclasses set the class attributes and override the scopes they apply to; :func:`parse_policy`
    builds them from text, so a stored ``str(policy)`` parses back to an equal policy.
    """

    value: float | None = None

    #: what the policy is called in text (``fpr`` of ``fpr:0.02``)
    name: ClassVar[str]
    #: the letter of its number in usage lines (``F`` of ``fpr:F``); None: it takes no number
    param: ClassVar[str | None] = None
    #: a valid number, for the error that asks for one
    example: ClassVar[str] = ""
    #: one line per scope it applies to: the help text and docs of what it computes there
    summary: ClassVar[Mapping[Scope, str]]
    #: whether it chooses from labelled items (training, which has good images only, cannot use it)
    needs_labels: ClassVar[bool] = False

    @classmethod
    def usage(cls) -> str:
        """How the policy is written, with its number as a letter: ``fpr:F``, ``simf1``."""
        return cls.name if cls.param is None else f"{cls.name}:{cls.param}"

    @classmethod
    def parse(cls, raw: str, text: str) -> ThresholdPolicy:
        """The policy from the text after its name's colon (``raw``; ``text`` is the whole, for errors)."""
        if cls.param is None:
            if raw:
                raise ConfigError(f"policy {cls.name} takes no value, got {text!r}")
            return cls()
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(
                f"policy {cls.name} needs a number, e.g. {cls.name}:{cls.example}, got {text!r}"
            ) from None
        if not math.isfinite(value):  # NaN compares false with every score: it would pass every image
            raise ConfigError(f"policy {cls.name} needs a finite number, got {text!r}")
        cls.validate(value)
        return cls(value)

    @classmethod
    def validate(cls, value: float) -> None:
        """Refuse a finite number outside the policy's domain (ConfigError); by default every one is fine."""

    @property
    def kind(self) -> str:
        """The policy's name (what the string-dispatched policies called their kind)."""
        return self.name

    @property
    def number(self) -> float:
        """The policy's parameter (K, Q, F, T); :meth:`parse` guarantees one for the policies that take it."""
        if self.value is None:
            raise ConfigError(f"policy {self.name} takes no number")
        return float(self.value)

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value:g}"

    def image_threshold(
        self, good: np.ndarray, labelled: Labelled | None = None, simulated: np.ndarray | None = None
    ) -> float:
        """The image threshold from held-out good scores (and labelled items or simulated-defect scores)."""
        raise ConfigError(f"policy {self.name} does not set image thresholds")

    def pixel_threshold(self, image_thr: float, calibration: Mapping[str, Any]) -> float:
        """The pixel threshold from the held-out pixel statistics in ``calibration`` (or the image threshold)."""
        raise ConfigError(f"policy {self.name} does not set pixel thresholds")

    @staticmethod
    def held_out(good: np.ndarray) -> np.ndarray:
        """The held-out good scores, refused when none are stored (an older model: rescore them)."""
        if good.size == 0:
            raise ConfigError("no held-out good scores stored: pass --data ROOT --category C to rescore them")
        return good

    @staticmethod
    def pixel_grid(calibration: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(quantile levels, held-out pixel quantiles), refused when the model stores no pixel grid."""
        grid = np.asarray(calibration.get("pixel_quantiles") or [], dtype=np.float64)
        if grid.size == 0:
            raise ConfigError(NO_PIXEL_STATS)
        return np.linspace(0, 1, grid.size), grid


P = TypeVar("P", bound=type[ThresholdPolicy])
_POLICIES: dict[str, type[ThresholdPolicy]] = {}


def register_policy(cls: P) -> P:
    """Class decorator: make ``cls`` a policy every parser, help text and docs check knows by its name."""
    name, summary = getattr(cls, "name", ""), getattr(cls, "summary", None)
    if not name or name in _POLICIES or ":" in name:
        raise ValueError(f"threshold policy {cls.__name__} needs a new name without ':' (got {name!r})")
    if not summary or not set(summary) <= set(SCOPES):
        raise ValueError(f"threshold policy {name}: summary needs a line for each scope it applies to, of {SCOPES}")
    if cls.param is not None and not cls.example:
        raise ValueError(f"threshold policy {cls.name} takes a number: give an example")
    _POLICIES[cls.name] = cls
    return cls


def policy_class(name: str) -> type[ThresholdPolicy]:
    """The registered policy class called ``name`` (KeyError for none)."""
    return _POLICIES[name]


def policy_names(scope: Scope = "image", labelled: bool = True) -> tuple[str, ...]:
    """The policies for ``scope``, in registration order; ``labelled=False`` leaves out those needing labels."""
    return tuple(n for n, c in _POLICIES.items() if scope in c.summary and (labelled or not c.needs_labels))


def policy_help(scope: Scope = "image", labelled: bool = True) -> str:
    """``usage (summary); …`` for every policy of ``scope``: the CLI's help text and the docs' list."""
    return "; ".join(f"{_POLICIES[n].usage()} ({_POLICIES[n].summary[scope]})" for n in policy_names(scope, labelled))


def parse_policy(text: str, pixel: bool = False, labelled: bool = True) -> ThresholdPolicy:
    """``sigma:3`` → SigmaPolicy(3.0); clear errors for anything else.

    ``pixel`` parses a pixel policy; ``labelled=False`` refuses policies that need labelled items (training).
    """
    scope: Scope = "pixel" if pixel else "image"
    allowed = policy_names(scope)
    name, _, raw = text.strip().partition(":")
    if name not in allowed:
        raise ConfigError(
            f"unknown threshold policy {text!r}: use one of {', '.join(allowed)} (e.g. sigma:3, fpr:0.01)"
        )
    policy = _POLICIES[name].parse(raw, text)
    if policy.needs_labels and not labelled:
        raise ConfigError(
            f"policy {name} needs labelled items, which training does not have: train with one of "
            f"{', '.join(policy_names(scope, labelled=False))}, then `ear-stream threshold --policy {name}`"
        )
    return policy


def image_threshold(
    policy: ThresholdPolicy,
    good: np.ndarray,
    labelled: Labelled | None = None,
    simulated: np.ndarray | None = None,
) -> float:
    """The image threshold a policy gives on held-out good scores (+ a labelled set for ``f1``, the
    simulated-defect scores for ``simf1``)."""
    return policy.image_threshold(np.asarray(good, dtype=np.float64), labelled, simulated)


def pixel_threshold(policy: ThresholdPolicy, image_thr: float, calibration: Mapping[str, Any]) -> float:
    """The pixel threshold a pixel policy gives on the held-out pixel statistics (``image``: ``image_thr``)."""
    return policy.pixel_threshold(image_thr, calibration)


# ----------------------------------------------------------------------------- the policies
# registration order is the order help texts and error messages list them in


@register_policy
class FollowImagePolicy(ThresholdPolicy):
    """Pixels above the image threshold itself: an image has regions exactly when its score flags it."""

    name = "image"
    summary: ClassVar[Mapping[Scope, str]] = {"pixel": "the image threshold: regions exactly when the image is flagged"}

    def pixel_threshold(self, image_thr: float, calibration: Mapping[str, Any]) -> float:
        return float(image_thr)


@register_policy
class SigmaPolicy(ThresholdPolicy):
    """K standard deviations above the mean (for images never below the highest held-out good score)."""

    name = "sigma"
    param = "K"
    example = "3"
    summary: ClassVar[Mapping[Scope, str]] = {
        "image": "max(mean + K·std, max) of the held-out good scores",
        "pixel": "mean + K·std of the held-out good pixels",
    }

    @classmethod
    def validate(cls, value: float) -> None:
        if value < 0:
            raise ConfigError(f"sigma must be >= 0, got {value}")

    def image_threshold(
        self, good: np.ndarray, labelled: Labelled | None = None, simulated: np.ndarray | None = None
    ) -> float:
        good = self.held_out(good)
        return max(float(good.mean() + self.number * good.std()), float(good.max()))

    def pixel_threshold(self, image_thr: float, calibration: Mapping[str, Any]) -> float:
        self.pixel_grid(calibration)  # a model without the grid has no pixel statistics at all
        mean, std = calibration.get("pixel_mean"), calibration.get("pixel_std")
        if mean is None or std is None:
            raise ConfigError(NO_PIXEL_STATS)
        return float(mean + self.number * std)


class _Fraction(ThresholdPolicy):
    """A policy whose number is a fraction of the held-out good images or pixels, in [0, 1]."""

    @classmethod
    def validate(cls, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{cls.name} must be in [0, 1], got {value}")


@register_policy
class QuantilePolicy(_Fraction):
    """The Q-quantile of what was held out: Q of the good images (or pixels) at or below it."""

    name = "quantile"
    param = "Q"
    example = "0.99"
    summary: ClassVar[Mapping[Scope, str]] = {
        "image": "the Q-quantile of the held-out good scores",
        "pixel": "the Q-quantile of the held-out good pixels",
    }

    def image_threshold(
        self, good: np.ndarray, labelled: Labelled | None = None, simulated: np.ndarray | None = None
    ) -> float:
        return float(np.quantile(self.held_out(good), self.number))

    def pixel_threshold(self, image_thr: float, calibration: Mapping[str, Any]) -> float:
        levels, grid = self.pixel_grid(calibration)
        return float(np.interp(self.number, levels, grid))


@register_policy
class FprPolicy(_Fraction):
    """At most a fraction F of the held-out good images rejected, as sensitive as that allows.

    Below 1/F held-out images (from :data:`~.threshold_stats.TAIL_MIN_SCORES` on) the log-normal
    tolerance bound backs the sample maximum (:func:`~.threshold_stats.lowest_threshold_with_frr`).
    """

    name = "fpr"
    param = "F"
    example = "0.01"
    summary: ClassVar[Mapping[Scope, str]] = {
        "image": "the lowest threshold with at most a fraction F of the held-out good images rejected",
        "pixel": "the (1 − F)-quantile of the held-out good pixels",
    }

    def image_threshold(
        self, good: np.ndarray, labelled: Labelled | None = None, simulated: np.ndarray | None = None
    ) -> float:
        return lowest_threshold_with_frr(self.held_out(good), self.number)

    def pixel_threshold(self, image_thr: float, calibration: Mapping[str, Any]) -> float:
        levels, grid = self.pixel_grid(calibration)
        return float(np.interp(1.0 - self.number, levels, grid))


@register_policy
class F1Policy(ThresholdPolicy):
    """F1-optimal on labelled items: reviewed ones (``--labels``) or a labelled dataset (``--data``)."""

    name = "f1"
    needs_labels = True
    summary: ClassVar[Mapping[Scope, str]] = {
        "image": "F1-optimal on labelled items: reviewed ones with --labels, or a labelled set with --data/--category"
    }

    def image_threshold(
        self, good: np.ndarray, labelled: Labelled | None = None, simulated: np.ndarray | None = None
    ) -> float:
        if labelled is None:
            raise ConfigError(
                "the f1 policy needs a labelled validation set: pass --labels DIR or --data ROOT --category C"
            )
        return f1_optimal(*labelled)[0]


@register_policy
class SimF1Policy(ThresholdPolicy):
    """F1-optimal between the held-out good images and the same images with one simulated defect each
    (``calibration.simulated_scores``): a labelled set without one real defect."""

    name = "simf1"
    summary: ClassVar[Mapping[Scope, str]] = {
        "image": "F1-optimal between the held-out good images and the same images with a simulated defect each"
    }

    def image_threshold(
        self, good: np.ndarray, labelled: Labelled | None = None, simulated: np.ndarray | None = None
    ) -> float:
        sim = np.asarray([] if simulated is None else simulated, dtype=np.float64)
        if sim.size == 0 or good.size == 0:
            raise ConfigError(
                "the simf1 policy needs the simulated-defect scores of the held-out images, which this model "
                "does not store (trained before they existed, or native-resolution): retrain, or use sigma/fpr"
            )
        return f1_optimal(np.r_[good, sim], np.r_[np.zeros(good.size, bool), np.ones(sim.size, bool)])[0]


@register_policy
class ManualPolicy(ThresholdPolicy):
    """T as given, whatever was held out."""

    name = "manual"
    param = "T"
    example = "0.5"
    summary: ClassVar[Mapping[Scope, str]] = {"image": "T as given", "pixel": "T as given"}

    def image_threshold(
        self, good: np.ndarray, labelled: Labelled | None = None, simulated: np.ndarray | None = None
    ) -> float:
        return self.number

    def pixel_threshold(self, image_thr: float, calibration: Mapping[str, Any]) -> float:
        return self.number
