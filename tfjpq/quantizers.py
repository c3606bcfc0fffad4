"""The quantizer math, in one place.

Everything that puts a number on a grid lives here, in a TensorFlow version
(with straight-through gradients, for search and fine-tuning) and a NumPy
version (for export), and both give the same grid.

Weights: per-output-channel symmetric, narrow range. At ``b`` bits a
channel ``c`` has ``n = 2**(b-1) - 1`` positive levels and a scale ``s_c``;
``Q_b(W_c) = clip(round(W_c / s_c), -n, n) * s_c``. ``b = 0`` means the
channel is pruned: ``Q_0(W) = 0``. Two rules choose ``s_c`` (``method=``):

* ``"minmax"``: ``s_c = max|W_c| / n``; no weight is clipped.
* ``"mse"``: ``s_c = r_c max|W_c| / n`` with the clip ratio ``r_c`` among
  :data:`MSE_CLIP_RATIOS` (1.0 down to 0.2) that gives the smallest squared
  error ``sum (Q_b(W_c) - W_c)^2``, recomputed in every forward pass (no
  gradient flows through the choice). At 2 bits min-max puts the only
  non-zero level at the largest weight, so most weights round to zero; the
  MSE ratio is typically 0.4-0.6 there. It is what the search uses by
  default (``tfjpq.wrap(weight_quantizer=...)``; docs/search.md has the
  measured difference).

Both keep the largest level ``n s_c`` occupied (clipped weights sit on it),
so a channel converted to int8 by TFLite (scale ``max|Q| / 127``) keeps its
``2n + 1`` grid values, and INT4 / LUT packing applies unchanged.

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
    "quantize_kernel_np", "distinct_levels_per_channel", "WEIGHT_QUANTIZERS", "MSE_CLIP_RATIOS",
    "check_weight_quantizer",
]

SUPPORTED_WEIGHT_BITS = (0, 2, 3, 4, 5, 6, 7, 8)
# The smallest per-channel scale: a channel whose max |w| / levels is below it quantizes to zeros.
# Far above float32's denormals, so TensorFlow (which flushes denormals to zero) and NumPy agree:
# any weight that rounds to a non-zero level (>= scale / 2) is a normal float.
_MIN_SCALE = 2.0 ** -100
SUPPORTED_ACT_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
WEIGHT_QUANTIZERS = ("minmax", "mse")
_STE_STOPS_AT_CLIP = True
# Clip ratios the "mse" rule tries, largest first (ties keep the larger ratio, so a grid is kept as it is).
MSE_CLIP_RATIOS = tuple(float(r) for r in np.round(np.arange(1.0, 0.175, -0.05), 2))


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


def check_weight_quantizer(method) -> None:
    if method not in WEIGHT_QUANTIZERS:
        raise ValueError(f"weight quantizer {method!r} is not one of {WEIGHT_QUANTIZERS}")


def _reduce_axes(rank: int, channel_axis: int):
    channel_axis = channel_axis % rank
    return tuple(a for a in range(rank) if a != channel_axis)


def channel_scales_np(w: np.ndarray, bits: int, channel_axis: int = -1, method: str = "minmax") -> np.ndarray:
    """Per-channel scale of ``method`` (``max|W_c| / n``, or the MSE-clipped one); keeps dims for broadcasting."""
    check_weight_quantizer(method)
    n = weight_levels(bits)
    axes = _reduce_axes(np.ndim(w), channel_axis)
    if n == 0:
        return np.zeros_like(np.max(np.abs(w), axis=axes, keepdims=True))
    if method == "mse":  # the TensorFlow rule itself, so export and training pick the same ratio
        return _mse_scales(tf.constant(np.asarray(w, np.float32)), n, axes).numpy()
    absmax = np.max(np.abs(w), axis=axes, keepdims=True).astype(np.float32)
    # a channel whose scale would be below _MIN_SCALE quantizes to zeros
    return np.where(absmax >= _MIN_SCALE * n, absmax / np.float32(n), np.float32(1.0)).astype(np.float32)


def quantize_weights_np(w: np.ndarray, bits: int, channel_axis: int = -1, method: str = "minmax") -> np.ndarray:
    """NumPy twin of :func:`quantize_weights`; the export path uses it."""
    w = np.asarray(w, dtype=np.float32)
    n = weight_levels(bits)
    if n == 0:
        return np.zeros_like(w)
    scale = channel_scales_np(w, bits, channel_axis, method)
    q = np.clip(np.round(w / scale), -n, n)
    return (q * scale).astype(np.float32)


def _mse_scales(w: tf.Tensor, n: int, axes) -> tf.Tensor:
    """Per-channel scale ``r max|W_c| / n`` with the ratio of :data:`MSE_CLIP_RATIOS` of least squared error.

    All ratios are tried at once on a stacked copy of the kernel (one op chain, not one per ratio).
    """
    w = tf.stop_gradient(w)
    absmax = tf.reduce_max(tf.abs(w), axis=axes, keepdims=True)
    ratios = tf.reshape(tf.constant(MSE_CLIP_RATIOS, w.dtype), (-1,) + (1,) * len(w.shape))
    safe = tf.where(absmax >= _MIN_SCALE * n, absmax, tf.ones_like(absmax))
    cand = safe[None] * ratios / float(n)                                    # (R, ...) scales
    err = tf.reduce_sum(tf.square(tf.clip_by_value(tf.round(w[None] / cand), -float(n), float(n)) * cand - w[None]),
                        axis=[a + 1 for a in axes], keepdims=True)
    best = tf.one_hot(tf.argmin(err, axis=0), len(MSE_CLIP_RATIOS), axis=0, dtype=w.dtype)  # first minimum
    scale = tf.reduce_sum(best * cand, axis=0)
    return tf.where(absmax >= _MIN_SCALE * n, scale, tf.ones_like(absmax))


def quantize_weights(w: tf.Tensor, bits: int, channel_axis: int = -1, method: str = "minmax") -> tf.Tensor:
    """Per-channel symmetric fake quantization with a straight-through gradient.

    The forward value is ``Q_bits(w)`` with the scale rule ``method``
    (``"minmax"`` or ``"mse"``, see the module docstring); the gradient with
    respect to ``w`` is the identity inside the grid's range ``[-n s, n s]``
    and 0 for the weights the clip cuts (none with min-max) and for
    ``bits == 0``, where the result is all zeros.

    Example::

        wq = quantize_weights(kernel, 2, method="mse")   # 3 values per output channel
    """
    check_weight_quantizer(method)
    n = weight_levels(bits)
    if n == 0:
        return tf.zeros_like(w)
    axes = _reduce_axes(len(w.shape), channel_axis)
    if method == "mse":
        scale = _mse_scales(w, n, axes)
    else:
        absmax = tf.stop_gradient(tf.reduce_max(tf.abs(w), axis=axes, keepdims=True))
        scale = tf.where(absmax >= _MIN_SCALE * n, absmax / float(n), tf.ones_like(absmax))
    q = tf.clip_by_value(tf.round(w / scale), -float(n), float(n)) * scale
    # straight through inside the grid's range, none for the weights the MSE clip cuts (min-max cuts none)
    if not _STE_STOPS_AT_CLIP:
        return w + tf.stop_gradient(q - w)
    inside = tf.clip_by_value(w, -float(n) * scale, float(n) * scale)
    return inside + tf.stop_gradient(q - inside)


def quantize_activations(x: tf.Tensor, clip: tf.Tensor, bits: int, signed: bool) -> tf.Tensor:
    """PACT activation fake quantization on ``[0, clip]`` (or ``[-clip, clip]`` if signed)."""
    check_act_bits(bits)
    clip = tf.maximum(tf.cast(clip, x.dtype), 1e-3)
    low = -clip if signed else tf.zeros_like(clip)
    return tf.quantization.fake_quant_with_min_max_vars(x, low, clip, num_bits=int(bits), narrow_range=False)


def quantize_kernel_np(layer, w: np.ndarray, bits: int, method: str = "minmax") -> np.ndarray:
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
            return quantize_weights_np(w, bits, channel_axis=2, method=method)
        flat = w.reshape(kh, kw, 1, cin * mult)
        return quantize_weights_np(flat, bits, channel_axis=-1, method=method).reshape(w.shape)
    return quantize_weights_np(w, bits, channel_axis=-1, method=method)


def distinct_levels_per_channel(w: np.ndarray, channel_axis: int = -1) -> np.ndarray:
    """How many distinct values each output channel holds (a grid check used by tests and export)."""
    w = np.moveaxis(np.asarray(w), channel_axis, -1).reshape(-1, np.asarray(w).shape[channel_axis])
    return np.array([len(np.unique(w[:, c])) for c in range(w.shape[1])])
