"""ZeroQ sensitivity: how much the output moves when only one layer's weights are quantized.

For every Conv2D / DepthwiseConv2D / Dense layer ``i`` and bit-width ``k``::

    S_i(k) = 1/N * sum_n KL( softmax(f(x_n)) || softmax(f_{i,k}(x_n)) )

where ``f`` is the float model and ``f_{i,k}`` the same model with only layer
``i``'s kernel quantized per output channel, symmetric, at ``k`` bits
(:func:`tfjpq.quantizers.quantize_weights_np`). Biases stay float (they become
int32 on export). The kernel is swapped in place and restored, and the
forward passes run batched through one compiled function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tfjpq import quantizers
from tfjpq.graph import check_model, layers_with

__all__ = ["Sensitivity", "kl_divergence", "sensitivity"]


@dataclass
class Sensitivity:
    """Per-layer sensitivity table (the result of :func:`sensitivity`).

    Attributes:
        bits: the bit-widths measured, ascending.
        layers: layer names, in model order.
        classes: layer class names.
        params: kernel parameter count per layer (biases not counted).
        shapes: Keras kernel shape per layer.
        kl: ``kl[name][bits]`` = mean KL divergence (nats) on the data.
        num_samples: how many inputs the KL was averaged over.
    """

    bits: tuple
    layers: list
    classes: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    kl: dict = field(default_factory=dict)
    num_samples: int = 0
    shapes: dict = field(default_factory=dict)

    def weight_bytes(self, name: str, bits: int) -> int:
        """Bytes of layer ``name``'s kernel at ``bits`` (``ceil(params * bits / 8)``)."""
        return math.ceil(self.params[name] * int(bits) / 8)

    def rows(self):
        """One dict per layer: name, class, params, and ``kl_<bits>`` columns."""
        return [
            {"layer": n, "class": self.classes[n], "params": self.params[n],
             **{f"kl_{b}": self.kl[n][b] for b in self.bits}}
            for n in self.layers
        ]

    def to_dict(self):
        return {"bits": list(self.bits), "num_samples": self.num_samples, "layers": self.rows()}

    def __str__(self):
        head = f"{'layer':<22}{'class':<18}{'params':>9}" + "".join(f"{f'KL@{b}b':>12}" for b in self.bits)
        lines = [head, "-" * len(head)]
        for n in self.layers:
            lines.append(f"{n:<22}{self.classes[n]:<18}{self.params[n]:>9}"
                         + "".join(f"{self.kl[n][b]:>12.3e}" for b in self.bits))
        return "\n".join(lines)

    def __repr__(self):
        return f"Sensitivity({len(self.layers)} layers, bits={self.bits}, num_samples={self.num_samples})"


def _as_probs(y: np.ndarray, from_logits) -> np.ndarray:
    y = np.asarray(y, np.float64)
    if from_logits is None:
        from_logits = not (np.all(y >= 0) and np.allclose(y.sum(-1), 1.0, atol=1e-3))
    if from_logits:
        y = y - y.max(-1, keepdims=True)
        e = np.exp(y)
        return e / e.sum(-1, keepdims=True)
    return y


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-10) -> float:
    """Mean over samples of ``sum_c p log(p / q)`` for probability rows ``p``, ``q``."""
    p = np.clip(p, eps, 1.0)
    q = np.clip(q, eps, 1.0)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)))


def sensitivity(model, data, bits=(2, 4, 8), batch_size=256, from_logits=None, layers=None, verbose=0):
    """Per-layer, per-bit-width KL divergence of the output when only that layer is quantized.

    Args:
        model: a functional Keras classifier (one output, class scores last).
        data: inputs to measure on; distilled data from :func:`distill` for the
            data-free path, or real images.
        bits: weight bit-widths to measure (each in
            ``tfjpq.quantizers.SUPPORTED_WEIGHT_BITS``, 0 excluded).
        batch_size: forward-pass batch.
        from_logits: whether the output is logits (softmax applied) or
            probabilities; ``None`` detects it from the float output.
        layers: names to measure (default: every top-level Conv2D,
            DepthwiseConv2D and Dense layer).
        verbose: 1 prints one line per layer.

    Returns:
        :class:`Sensitivity`, a table: ``sens.kl[name][bits]``, ``sens.params[name]``;
        ``print(sens)`` shows it.

    Example::

        sens = tfjpq.zeroq.sensitivity(model, x_syn, bits=(2, 4, 8))
        print(sens)
        sens.kl["conv1"][2] > sens.kl["conv1"][8]    # True
    """
    check_model(model, "known", "zeroq.sensitivity")
    from tfjpq.datasets import check_data

    check_data(data, what="zeroq.sensitivity data", names=["data"])
    bits = tuple(sorted({int(b) for b in bits}))
    for b in bits:
        quantizers.check_weight_bits(b)
        if b == 0:
            raise ValueError("sensitivity measures quantized layers; 0 bits (pruning) is not a choice here")
    if len(model.outputs) != 1:
        raise ValueError(f"zeroq.sensitivity supports one-output models; {model.name!r} has {len(model.outputs)}")
    targets = layers_with(model, "quantizable")
    if layers is not None:
        by_name = {l.name: l for l in targets}
        missing = [n for n in layers if n not in by_name]
        if missing:
            raise ValueError(f"layers {missing} are not top-level Conv2D / DepthwiseConv2D / Dense layers "
                             f"of {model.name!r}; candidates: {sorted(by_name)}")
        targets = [by_name[n] for n in layers]
    if not targets:
        raise ValueError(f"model {model.name!r} has no Conv2D, DepthwiseConv2D or Dense layer to quantize")

    data = np.asarray(data, np.float32)
    forward = tf.function(lambda x: model(x, training=False))

    def run():
        return np.concatenate([forward(tf.constant(data[i:i + batch_size])).numpy()
                               for i in range(0, len(data), batch_size)])

    ref_raw = run()
    if from_logits is None:
        from_logits = not (np.all(ref_raw >= 0) and np.allclose(ref_raw.sum(-1), 1.0, atol=1e-3))
    ref = _as_probs(ref_raw, from_logits)

    result = Sensitivity(bits=bits, layers=[l.name for l in targets], num_samples=len(data))
    for layer in targets:
        var = layer.kernel
        w = np.asarray(var.numpy(), np.float32)
        result.classes[layer.name] = type(layer).__name__
        result.params[layer.name] = int(w.size)
        result.shapes[layer.name] = tuple(int(d) for d in w.shape)
        result.kl[layer.name] = {}
        try:
            for b in bits:
                var.assign(quantizers.quantize_kernel_np(layer, w, b))
                result.kl[layer.name][b] = kl_divergence(ref, _as_probs(run(), from_logits))
        finally:
            var.assign(w)
        if verbose:
            print(f"zeroq.sensitivity: {layer.name}: "
                  + ", ".join(f"{b}b {result.kl[layer.name][b]:.3e}" for b in bits), flush=True)
    return result
