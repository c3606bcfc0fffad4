"""The quantizer math, in one place.

Everything that puts a number on a grid lives here, in a TensorFlow version
(with straight-through gradients, for search and fine-tuning) and a NumPy
version (for export), and both give the same grid.

Weights: per-output-channel symmetric min-max, narrow range. At ``b`` bits a
channel ``c`` has ``n = 2**(b-1) - 1`` positive levels and the scale
``s_c = max|W_c| / n``; ``Q_b(W_c) = clip(round(W_c / s_c), -n, n) * s_c``.
``b = 0`` means the channel is pruned: ``Q_0(W) = 0``.

Activations: PACT, a learned clip ``a``; unsigned inputs live on
``[0, a]``, signed ones on ``[-a, a]``. The forward is TensorFlow's
``fake_quant_with_min_max_vars``, whose gradient with respect to ``max`` is
PACT's (the sum of the upstream gradient where ``x > a``) and which the TFLite
converter reads as the tensor's quantization range.

Example::

    import numpy as np
    from tfjpq import quantizers
    w = np.random.randn(3, 3, 8, 16).astype("float32")
    wq = quantizers.quantize_weights_np(w, bits=4)        # 15 values per channel
    assert all(len(np.unique(wq[..., c])) <= 15 for c in range(16))
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = [
    "SUPPORTED_WEIGHT_BITS", "SUPPORTED_ACT_BITS", "weight_levels", "check_weight_bits", "check_act_bits",
    "channel_scales_np", "quantize_weights_np", "quantize_weights", "quantize_activations",
    "quantize_kernel_np", "distinct_levels_per_channel",
]

SUPPORTED_WEIGHT_BITS = (0, 2, 3, 4, 5, 6, 7, 8)
# The smallest per-channel scale: a channel whose max |w| / levels is below it quantizes to zeros.
# Far above float32's denormals, so TensorFlow (which flushes denormals to zero) and NumPy agree:
# any weight that rounds to a non-zero level (>= scale / 2) is a normal float.
_MIN_SCALE = 2.0 ** -100
SUPPORTED_ACT_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


def weight_levels(bits: int) -> int:
    """Positive levels of the narrow-range symmetric grid at ``bits`` (0 for pruned).

    >>> weight_levels(8), weight_levels(4), weight_levels(2)
    (127, 7, 1)
    """
    check_weight_bits(bits)
    return 0 if bits == 0 else 2 ** (bits - 1) - 1


def check_weight_bits(bits) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in SUPPORTED_WEIGHT_BITS:
        raise ValueError(
            f"weight bit-width {bits!r} is not supported; choose from {SUPPORTED_WEIGHT_BITS} "
            "(0 means the channel is pruned)"
        )


def check_act_bits(bits) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in SUPPORTED_ACT_BITS:
        raise ValueError(f"activation bit-width {bits!r} is not supported; choose from {SUPPORTED_ACT_BITS}")


def _reduce_axes(rank: int, channel_axis: int):
    channel_axis = channel_axis % rank
    return tuple(a for a in range(rank) if a != channel_axis)


def channel_scales_np(w: np.ndarray, bits: int, channel_axis: int = -1) -> np.ndarray:
    """Per-channel scale ``max|W_c| / n`` (shape keeps dims for broadcasting)."""
    n = weight_levels(bits)
    if n == 0:
        return np.zeros_like(np.max(np.abs(w), axis=_reduce_axes(w.ndim, channel_axis), keepdims=True))
    absmax = np.max(np.abs(w), axis=_reduce_axes(w.ndim, channel_axis), keepdims=True).astype(np.float32)
    # a channel whose scale would be below _MIN_SCALE quantizes to zeros
    return np.where(absmax >= _MIN_SCALE * n, absmax / np.float32(n), np.float32(1.0)).astype(np.float32)


def quantize_weights_np(w: np.ndarray, bits: int, channel_axis: int = -1) -> np.ndarray:
    """NumPy twin of :func:`quantize_weights`; the export path uses it."""
    w = np.asarray(w, dtype=np.float32)
    n = weight_levels(bits)
    if n == 0:
        return np.zeros_like(w)
    scale = channel_scales_np(w, bits, channel_axis)
    q = np.clip(np.round(w / scale), -n, n)
    return (q * scale).astype(np.float32)


def quantize_weights(w: tf.Tensor, bits: int, channel_axis: int = -1) -> tf.Tensor:
    """Per-channel symmetric min-max fake quantization with a straight-through gradient.

    The forward value is ``Q_bits(w)``; the gradient with respect to ``w`` is the
    identity (0 for ``bits == 0``, where the result is all zeros).
    """
    n = weight_levels(bits)
    if n == 0:
        return tf.zeros_like(w)
    rank = len(w.shape)
    absmax = tf.reduce_max(tf.abs(w), axis=_reduce_axes(rank, channel_axis), keepdims=True)
    absmax = tf.stop_gradient(absmax)
    scale = tf.where(absmax >= _MIN_SCALE * n, absmax / float(n), tf.ones_like(absmax))
    q = tf.clip_by_value(tf.round(w / scale), -float(n), float(n)) * scale
    return w + tf.stop_gradient(q - w)


def quantize_activations(x: tf.Tensor, clip: tf.Tensor, bits: int, signed: bool) -> tf.Tensor:
    """PACT activation fake quantization on ``[0, clip]`` (or ``[-clip, clip]`` if signed)."""
    check_act_bits(bits)
    clip = tf.maximum(tf.cast(clip, x.dtype), 1e-3)
    low = -clip if signed else tf.zeros_like(clip)
    return tf.quantization.fake_quant_with_min_max_vars(x, low, clip, num_bits=int(bits), narrow_range=False)


def quantize_kernel_np(layer, w: np.ndarray, bits: int) -> np.ndarray:
    """Per-output-channel symmetric quantization of a Conv2D / DepthwiseConv2D / Dense kernel ``w`` of ``layer``.

    Conv2D ``(kh, kw, cin, cout)`` and Dense ``(in, out)``: channel axis -1.
    DepthwiseConv2D ``(kh, kw, cin, mult)``: channel axis 2 (with ``mult > 1``,
    each of the ``cin * mult`` output channels gets its own scale, as TFLite stores it).
    """
    from tfjpq.graph import layer_kind

    w = np.asarray(w, np.float32)
    if layer_kind(layer) == "depthwise":
        kh, kw, cin, mult = w.shape
        if mult == 1:
            return quantize_weights_np(w, bits, channel_axis=2)
        flat = w.reshape(kh, kw, 1, cin * mult)
        return quantize_weights_np(flat, bits, channel_axis=-1).reshape(w.shape)
    return quantize_weights_np(w, bits, channel_axis=-1)


def distinct_levels_per_channel(w: np.ndarray, channel_axis: int = -1) -> np.ndarray:
    """How many distinct values each output channel holds (a grid check used by tests and export)."""
    w = np.moveaxis(np.asarray(w), channel_axis, -1).reshape(-1, np.asarray(w).shape[channel_axis])
    return np.array([len(np.unique(w[:, c])) for c in range(w.shape[1])])
