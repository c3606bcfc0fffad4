"""Differentiable hardware cost models.

A cost model turns, for every search layer, the precision probabilities into
a scalar cost; the search adds ``strength * cost / reference`` to the task
loss, where ``reference`` is the cost of the unpruned all-8-bit model
(:func:`reference_cost`), so ``strength`` is dimensionless. The same formula
with one-hot probabilities gives the *hard* cost of the choices ``freeze``
keeps (``layer_terms(model, hard=True)``), which target mode steers
(``tfjpq.budget``). Costs are
differentiable in the precision logits of the layer *and* of its producers,
through the soft input channel count ``C_in_eff = C_in - sum_c theta[0, c]``.

Built in (``tfjpq.wrap(..., cost=NAME)``):

========  ========  ==========================================================
name      unit      formula per layer
========  ========  ==========================================================
size      bytes     ``taps * C_in_eff * sum_c sum_p theta[p,c] * p / 8``
bitops    BitOps    ``pixels * taps * C_in_eff * sum_c sum_p theta[p,c] p * E[a]``
mpic      cycles    ``sum_a phi_a sum_w MACs_w / MPIC[a][w]`` (MACs/cycle table)
========  ========  ==========================================================

``taps`` is ``k_h * k_w`` (1 for Dense); a depthwise layer has one input
channel per output channel. ``E[a] = sum_a phi_a * a`` is the expected
activation bit-width of the layer's input (8 where the input is the raw model
input, which the converter quantizes to int8).

Every cost lives in one registry: :func:`register` a name and ``wrap(cost=NAME)``,
:func:`get` and ``zeroq.pareto(cost=NAME)`` find it. The ``"tflm"`` cost
(:mod:`tfjpq.tflm_cost`) registers itself the same way. Your own hardware
model: subclass :class:`CostModel`, implement :meth:`CostModel.layer_cost`,
and pass an instance (or register it)::

    class EnergyCost(tfjpq.cost.CostModel):
        unit = "pJ"
        def layer_cost(self, t):
            # t is a LayerTerms: t.macs_by_bits() gives MACs per weight precision
            return sum(m * (0.1 * b) for b, m in t.macs_by_bits().items())

    search = tfjpq.wrap(model, cost=EnergyCost(), strength=0.05)     # or target=... in pJ
    tfjpq.cost.register("energy", EnergyCost)                        # then cost="energy"
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "MPIC_MACS_PER_CYCLE", "LayerTerms", "CostModel", "SizeCost", "BitOpsCost", "MPICCost", "BUILTIN",
    "register", "registered", "get", "serialize", "layer_terms", "reference_terms", "reference_cost",
]

_register = keras.saving.register_keras_serializable(package="tfjpq")

# MPIC (RISC-V with mixed-precision SIMD), MACs per cycle [activation bits][weight bits].
MPIC_MACS_PER_CYCLE = {
    2: {2: 6.5, 4: 4.0, 8: 2.2},
    4: {2: 3.9, 4: 3.5, 8: 2.1},
    8: {2: 2.5, 4: 2.3, 8: 2.1},
}


@dataclasses.dataclass
class LayerTerms:
    """What a cost model sees of one search layer (tensors are differentiable).

    ``theta``: (len(weight_bits), C_out) weight precision probabilities.
    ``phi``: (len(act_bits),) input activation precision probabilities.
    ``cin_eff``: soft number of input channels (1 for depthwise layers).
    """

    name: str
    kind: str
    taps: int
    pixels: int
    cin: int
    cin_eff: tf.Tensor
    theta: tf.Tensor
    weight_bits: tuple
    phi: tf.Tensor
    act_bits: tuple
    regroup: bool = True  # export splits the channels into one tensor per precision

    def expected_weight_bits(self):
        """sum_c sum_p theta[p, c] * p: the soft total of weight bits over output channels."""
        bits = tf.constant(self.weight_bits, tf.float32)[:, None]
        return tf.reduce_sum(self.theta * bits)

    def kept_channels(self):
        if 0 in self.weight_bits:
            return tf.reduce_sum(1.0 - self.theta[self.weight_bits.index(0)])
        return tf.cast(tf.shape(self.theta)[1], tf.float32)

    def expected_act_bits(self):
        return tf.reduce_sum(self.phi * tf.constant(self.act_bits, tf.float32))

    def weight_bits_total(self):
        return self.taps * self.cin_eff * self.expected_weight_bits()

    def macs(self):
        return self.pixels * self.taps * self.cin_eff * self.kept_channels()

    def macs_by_bits(self):
        """{weight bits: soft MAC count} for the non-zero precisions."""
        per = self.pixels * self.taps * self.cin_eff
        return {b: per * tf.reduce_sum(self.theta[i]) for i, b in enumerate(self.weight_bits) if b != 0}


@_register
class CostModel:
    """Base class of cost models. Subclasses set ``unit`` and implement :meth:`layer_cost`."""

    name = "custom"
    unit = ""
    # True where one channel's step down may save nothing, or cost more (a layer split's records):
    # freeze's projection then orders moves per byte and prunes in one move (tfjpq.budget.MOVE_ORDER)
    prices_splits = False

    def layer_cost(self, terms: LayerTerms) -> tf.Tensor:
        raise NotImplementedError

    def check(self, weight_bits, act_bits) -> None:
        """Raise ValueError if the cost cannot price these bit-widths."""

    def for_model(self, search) -> "CostModel":
        """The cost model ``search`` uses: ``self``, or a copy fitted to that model (``tfjpq.wrap`` calls it once)."""
        return self

    def measure(self, search):
        """The cost of ``search``'s hard choices as deployed, where it can be measured; None: the estimate is all.

        ``tfjpq.freeze`` re-projects a ``target`` on this measurement
        (:func:`tfjpq.budget.check_flatbuffer`).
        """
        return None

    def kernel_bytes(self, kind, shape, bits: int) -> int:
        """Bytes of one kernel (Keras ``shape``) stored at ``bits``, for byte costs; ``kind`` as a layer kind
        ("conv") or class name ("Conv2D"). Costs in other units raise ``NotImplementedError``."""
        raise NotImplementedError(f"the {self.name!r} cost ({self.unit or 'no unit'}) does not price a kernel in bytes")

    def total(self, terms) -> tf.Tensor:
        return tf.add_n([tf.cast(self._layer_cost(t), tf.float32) for t in terms])

    @contextlib.contextmanager
    def remembering_layers(self):
        """Within it, eager per-layer costs are remembered by what they depend on (the same values, computed once).

        ``freeze``'s projection prices hundreds of selections that differ from
        each other in one group; only the layers whose choices (or live input
        channels) changed are priced again, and the total is summed as always.

        Example::

            with search.cost_model.remembering_layers():
                costs = [tfjpq.budget.selection_cost(search, sel) for sel in selections]
        """
        outer = self.__dict__.get("_remembered")
        if outer is None:
            self._remembered = {}
        try:
            yield self
        finally:
            if outer is None:
                del self._remembered

    def _layer_cost(self, t):
        memo = self.__dict__.get("_remembered")
        if memo is None or not tf.executing_eagerly():
            return self.layer_cost(t)
        key = (t.name, np.asarray(t.theta, np.float32).tobytes(), float(t.cin_eff), np.asarray(t.phi).tobytes())
        if key not in memo:
            memo[key] = self.layer_cost(t)
        return memo[key]

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@_register
class SizeCost(CostModel):
    """Weight memory in bytes (pruned input channels of the next layer count as gone)."""

    name = "size"
    unit = "bytes"

    def layer_cost(self, t):
        return t.weight_bits_total() / 8.0

    def kernel_bytes(self, kind, shape, bits):
        """``ceil(weights * bits / 8)``: every bit counted."""
        return math.ceil(int(np.prod(shape)) * int(bits) / 8)


@_register
class BitOpsCost(CostModel):
    """MACs weighted by weight bits times activation bits."""

    name = "bitops"
    unit = "BitOps"

    def layer_cost(self, t):
        return t.pixels * t.weight_bits_total() * t.expected_act_bits()


@_register
class MPICCost(CostModel):
    """Latency in cycles on MPIC from its MACs/cycle table (activation x weight precision)."""

    name = "mpic"
    unit = "cycles"

    def __init__(self, table=None):
        self.table = {int(a): {int(w): float(v) for w, v in row.items()} for a, row in (table or MPIC_MACS_PER_CYCLE).items()}

    def check(self, weight_bits, act_bits):
        missing_w = [b for b in weight_bits if b != 0 and b not in self.table[next(iter(self.table))]]
        missing_a = [a for a in act_bits if a not in self.table]
        if missing_w or missing_a:
            raise ValueError(
                f"the mpic cost model knows weight bits {sorted(self.table[next(iter(self.table))])} and activation "
                f"bits {sorted(self.table)}; got weight bits {missing_w} / activation bits {missing_a} outside them"
            )

    def layer_cost(self, t):
        macs = t.macs_by_bits()
        total = 0.0
        for j, a in enumerate(t.act_bits):
            row = self.table[a]
            total = total + t.phi[j] * tf.add_n([m / row[w] for w, m in macs.items()])
        return total

    def get_config(self):
        return {"table": {str(a): {str(w): v for w, v in row.items()} for a, row in self.table.items()}}


BUILTIN = {"size": SizeCost, "bitops": BitOpsCost, "mpic": MPICCost}


_COSTS: dict = {}  # name -> factory: factory() for "name", factory(arg) for "name:arg"


def register(name: str, factory=None):
    """Make ``get(name)`` (and so ``wrap(cost=name)``, ``zeroq.pareto(cost=name)``) build a cost model.

    ``factory`` is a :class:`CostModel` subclass or any callable returning one;
    ``"name:arg"`` calls ``factory(arg)``. Works as a decorator::

        @tfjpq.cost.register("energy")
        class EnergyCost(tfjpq.cost.CostModel): ...
    """
    def add(f):
        _COSTS[name] = f
        return f

    return add if factory is None else add(factory)


def registered() -> list:
    """The registered cost names."""
    return sorted(_COSTS)


for _name, _cls in BUILTIN.items():
    register(_name, _cls)


def get(spec) -> CostModel:
    """A cost model from a registered name (``"size"``, ``"bitops"``, ``"mpic"``, ``"tflm"``, ``"tflm:BOARD"``, ...),
    a config dict, or an instance."""
    if isinstance(spec, CostModel):
        return spec
    if isinstance(spec, str):
        name, sep, arg = spec.partition(":")
        factory = _COSTS.get(name)
        if factory is None:
            raise ValueError(f"unknown cost {spec!r}; use one of {registered()} or a CostModel instance")
        return factory(arg) if sep else factory()
    if isinstance(spec, dict):
        return keras.saving.deserialize_keras_object(spec)
    raise TypeError(f"cost must be a name, a CostModel or its serialized dict, got {type(spec).__name__}")


def serialize(cost: CostModel):
    return keras.saving.serialize_keras_object(cost)


def layer_terms(model, training=False, hard=False, thetas=None, phis=None):
    """LayerTerms for every search layer of a model made by ``tfjpq.wrap``.

    ``training`` selects the training-time probabilities (Gumbel noise);
    ``hard=True`` uses the one-hot choices :func:`tfjpq.freeze` keeps (so the
    same formula gives the *hard* cost); ``thetas`` / ``phis`` override the
    probabilities of some groups / activation choices by name (arrays of the
    ``alpha`` / ``beta`` shapes), which is how a candidate selection is priced.

    Example::

        hard = search.cost_model.total(tfjpq.cost.layer_terms(search, hard=True))
    """
    choices = {c.name: c for c in model.precision_choices()}
    acts = {a.name: a for a in model.activation_choices()}
    theta_of = {name: (c.hard_theta() if hard else c.theta(training)) for name, c in choices.items()}
    theta_of.update({k: tf.cast(v, tf.float32) for k, v in (thetas or {}).items()})
    phis = {k: tf.cast(v, tf.float32) for k, v in (phis or {}).items()}
    terms = []
    for layer in model.search_layers():
        theta = theta_of[layer.group]
        if layer.kind == "depthwise":
            cin_eff = tf.constant(1.0)
        else:
            parts = []
            for gname, channels in layer.input_layout:
                c = choices.get(gname) if gname is not None else None
                if c is not None and c.prunable:
                    parts.append(channels - tf.reduce_sum(theta_of[gname][c.bits.index(0)]))
                else:
                    parts.append(tf.constant(float(channels)))
            cin_eff = layer.input_repeat * tf.add_n(parts)
        if layer.act_quantizer is not None:
            aq = acts[layer.act_quantizer]
            phi = phis.get(aq.name)
            if phi is None:
                phi = aq.hard_phi() if hard else aq.phi(training)
            act_bits = aq.bits
        else:
            phi, act_bits = tf.constant([1.0]), (8,)
        terms.append(LayerTerms(
            name=layer.name, kind=layer.kind, taps=layer.kernel_taps(), pixels=layer.out_pixels(),
            cin=layer.in_channels(), cin_eff=cin_eff, theta=theta, weight_bits=layer.weight_bits,
            phi=phi, act_bits=act_bits, regroup=choices[layer.group].regroup and layer.kind != "depthwise",
        ))
    return terms


def reference_terms(model, bits=8):
    """LayerTerms of the unpruned model with every weight and activation at ``bits`` (the all-8-bit model).

    The search divides its cost by this model's cost, so ``strength`` is
    dimensionless: a strength means the same on a small and a large model.
    """
    choices = {c.name: c for c in model.precision_choices()}
    terms = []
    for layer in model.search_layers():
        channels = choices[layer.group].channels
        cin = 1.0 if layer.kind == "depthwise" else float(layer.in_channels())
        terms.append(LayerTerms(
            name=layer.name, kind=layer.kind, taps=layer.kernel_taps(), pixels=layer.out_pixels(),
            cin=layer.in_channels(), cin_eff=tf.constant(cin), theta=tf.ones((1, channels)), weight_bits=(bits,),
            phi=tf.constant([1.0]), act_bits=(bits,),
            regroup=choices[layer.group].regroup and layer.kind != "depthwise",
        ))
    return terms


def reference_cost(model, cost_model=None) -> float:
    """The cost of the unpruned all-8-bit model (weights and activations) under ``cost_model``.

    Falls back to every layer at its widest choices when the cost model cannot
    price 8 bits (a custom MPIC table without 8, say).

    Example::

        ref = tfjpq.cost.reference_cost(search)      # 9872.0 bytes for zoo.small_cnn() on 8x8 inputs
    """
    cost_model = cost_model or model.cost_model
    try:
        value = float(cost_model.total(reference_terms(model)))
    except (KeyError, ValueError):
        terms = layer_terms(model, thetas={c.name: _one_hot(c, len(c.bits) - 1) for c in model.precision_choices()},
                            phis={a.name: np.eye(len(a.bits), dtype=np.float32)[-1] for a in model.activation_choices()})
        value = float(cost_model.total(terms))
    if not value > 0:
        raise ValueError(f"the {cost_model.name!r} cost of the all-8-bit model is {value}; a cost must be positive "
                         f"to normalise the strength")
    return value


def _one_hot(choice, index):
    t = np.zeros((len(choice.bits), choice.channels), np.float32)
    t[index] = 1.0
    return t
