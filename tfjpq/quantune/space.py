"""The post-training quantization configurations Quantune searches, all deployable by ``tflm_export.convert``.

A :class:`Config` is one point: how activation ranges are chosen, which data
calibrates them, weight granularity, weight bits and bias correction. A
:class:`Space` is the product of chosen values per axis; it enumerates its
points in a fixed order, and both round-trip through JSON.

Example::

    from tfjpq import quantune
    space = quantune.Space()                # the default: 96 points
    len(space), space[0]
    quantune.Space.full()                   # every value of every axis: 180 points
    space = quantune.Space(weights=("int8",), bias_correction=(False,))
    quantune.Config.from_json(space[3].to_json()) == space[3]    # True
"""

from __future__ import annotations

import dataclasses
import itertools
import json

from tfjpq.errors import TfjpqError

__all__ = ["AXES", "VALUES", "DEFAULTS", "Config", "Space", "QuantuneError"]


class QuantuneError(TfjpqError, ValueError):
    """A bad argument to Quantune (an unknown axis value, a history from another space, ...)."""


#: The axes of a configuration, in feature order.
AXES = ("act_range", "calibration", "granularity", "weights", "bias_correction")

#: Every value tfjpq can deploy, per axis.
#:
#: * act_range: ``minmax`` (the converter's own), ``percentile-99.9`` / ``percentile-99.99`` (of the
#:   absolute values, per tensor), ``kl`` (TensorRT's entropy calibration, 128 int8 bins), ``mse``
#:   (the clip minimizing the int8 quantization mean squared error);
#: * calibration: ``real-<n>``: the first ``n`` samples of ``calibration_data``; ``zeroq``: ZeroQ
#:   distilled data (data-free, :func:`tfjpq.zeroq.distill`);
#: * granularity: weight scales ``per-channel`` or ``per-tensor``;
#: * weights: ``int8`` everywhere; ``int4-inner``: 4-bit grid on every Conv2D / DepthwiseConv2D except
#:   the first and last weighted layer (stored INT4 or LUT by ``tflm_export``); ``int4-all``: every
#:   weighted layer at 4 bits;
#: * bias_correction: correct each layer's bias for the mean output shift its weight quantization
#:   causes (Nagel et al. 2019), with the layer inputs' means on the calibration data.
VALUES = {
    "act_range": ("minmax", "percentile-99.9", "percentile-99.99", "kl", "mse"),
    "calibration": ("real-32", "real-256", "zeroq"),
    "granularity": ("per-channel", "per-tensor"),
    "weights": ("int8", "int4-inner", "int4-all"),
    "bias_correction": (False, True),
}

#: The default space: 4 x 3 x 2 x 2 x 2 = 96 points (one percentile level, no 4-bit-everywhere).
DEFAULTS = {
    "act_range": ("minmax", "percentile-99.99", "kl", "mse"),
    "calibration": ("real-32", "real-256", "zeroq"),
    "granularity": ("per-channel", "per-tensor"),
    "weights": ("int8", "int4-inner"),
    "bias_correction": (False, True),
}


def _check_value(axis, value):
    if axis == "calibration" and isinstance(value, str) and value.startswith("real-"):
        try:
            n = int(value[5:])
        except ValueError:
            n = 0
        if n >= 1:
            return value
    elif axis == "act_range" and isinstance(value, str) and value.startswith("percentile-"):
        try:
            p = float(value[11:])
        except ValueError:
            p = -1
        if 50 < p <= 100:
            return value
    elif value in VALUES[axis] and type(value) is type(VALUES[axis][0]):
        return value
    raise QuantuneError(f"{axis}={value!r} is not a Quantune option; choose from {VALUES[axis]}"
                        + (" (or real-<n>)" if axis == "calibration" else "")
                        + (" (or percentile-<p>)" if axis == "act_range" else ""))


@dataclasses.dataclass(frozen=True)
class Config:
    """One post-training quantization configuration (hashable, orderable by its JSON)."""

    act_range: str = "minmax"
    calibration: str = "real-256"
    granularity: str = "per-channel"
    weights: str = "int8"
    bias_correction: bool = False

    def __post_init__(self):
        for axis in AXES:
            _check_value(axis, getattr(self, axis))

    def to_dict(self) -> dict:
        return {a: getattr(self, a) for a in AXES}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d) -> "Config":
        if not isinstance(d, dict):
            raise QuantuneError(f"a Quantune config is a dict of {AXES}, got {type(d).__name__}")
        extra = set(d) - set(AXES)
        if extra:
            raise QuantuneError(f"unknown config keys {sorted(extra)}; a config has {AXES}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))

    @property
    def key(self) -> str:
        """A short readable id, e.g. ``kl|real-256|per-channel|int8|bc``."""
        return "|".join([self.act_range, self.calibration, self.granularity, self.weights,
                         "bc" if self.bias_correction else "nobc"])

    def __str__(self) -> str:
        return self.key


class Space:
    """The product of the chosen values of each axis (defaults: :data:`DEFAULTS`).

    Enumerates in a fixed order (the axes' product, last axis fastest);
    ``len``, indexing, iteration, ``in`` and ``index`` work as on a tuple.

    Example::

        space = Space(act_range=("minmax", "mse"), calibration=("real-64",))
        [c.key for c in space][:2]
        Space.from_json(space.to_json()) == space
    """

    def __init__(self, **axes):
        unknown = set(axes) - set(AXES)
        if unknown:
            raise QuantuneError(f"unknown Space axes {sorted(unknown)}; the axes are {AXES}")
        self.axes = {}
        for axis in AXES:
            vals = axes.get(axis, DEFAULTS[axis])
            if isinstance(vals, (str, bool)):
                vals = (vals,)
            vals = tuple(_check_value(axis, v) for v in vals)
            if not vals:
                raise QuantuneError(f"Space axis {axis!r} has no values")
            if len(set(vals)) != len(vals):
                raise QuantuneError(f"Space axis {axis!r} repeats a value: {vals}")
            self.axes[axis] = vals
        self._configs = tuple(Config(**dict(zip(AXES, combo)))
                              for combo in itertools.product(*(self.axes[a] for a in AXES)))
        self._index = {c: i for i, c in enumerate(self._configs)}

    @classmethod
    def full(cls) -> "Space":
        """Every value of every axis (:data:`VALUES`): 180 points."""
        return cls(**VALUES)

    def __len__(self):
        return len(self._configs)

    def __getitem__(self, i):
        return self._configs[i]

    def __iter__(self):
        return iter(self._configs)

    def __contains__(self, c):
        return c in self._index

    def index(self, c) -> int:
        try:
            return self._index[c]
        except KeyError:
            raise QuantuneError(f"config {c} is not in this space") from None

    def __eq__(self, other):
        return isinstance(other, Space) and self.axes == other.axes

    def __hash__(self):
        return hash(tuple(self.axes.items()))

    def __repr__(self):
        return f"Space({', '.join(f'{a}={v}' for a, v in self.axes.items())}; {len(self)} points)"

    def to_dict(self) -> dict:
        return {a: list(v) for a, v in self.axes.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d) -> "Space":
        return cls(**{a: tuple(v) for a, v in d.items()})

    @classmethod
    def from_json(cls, text: str) -> "Space":
        return cls.from_dict(json.loads(text))
