"""The search layers.

* :class:`PrecisionChoice` holds the trainable logits ``alpha`` (|P| x C) of one
  channel group and outputs ``theta``, the per-channel weight precision
  probabilities. Layers that must prune the same channels (the sides of an Add,
  a depthwise layer and its producer) read the same ``PrecisionChoice``.
* :class:`ActivationChoice` quantizes one tensor with PACT at a per-tensor
  precision chosen among ``act_bits``.
* :class:`SearchConv2D`, :class:`SearchDepthwiseConv2D`, :class:`SearchDense`
  compute ``keep_c * BN(op(x, W_c) + b)`` with
  ``W_c = sum_{p>0} theta[p, c] Q_p(W_c) / keep_c`` and ``keep_c = 1 - theta[0, c]``.
  Without bias or BN this is exactly the paper's ``op(x, sum_p theta[p,c] Q_p(W_c))``;
  with them, a pruned channel (``keep_c = 0``) is exactly zero, so it can be
  removed at export without changing the output.
* :class:`ActivationQuantizer` is the fixed PACT quantizer left in exported models.

Selection modes (``mode``): ``"soft"`` (softmax with temperature), ``"hard"``
(argmax forward, straight-through gradient), ``"gumbel"`` (Gumbel-softmax during
training), ``"fixed"`` (argmax, no gradient; what :func:`tfjpq.freeze` sets).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfjpq import quantizers

__all__ = [
    "MODES", "PRUNE_GATES", "check_mode", "check_prune_gate", "select", "PrecisionChoice", "ActivationChoice", "ActivationQuantizer",
    "SearchLinear", "SearchConv2D", "SearchDepthwiseConv2D", "SearchDense", "SEARCH_LAYERS",
]

MODES = ("soft", "hard", "gumbel", "fixed")
_register = keras.saving.register_keras_serializable(package="tfjpq")


PRUNE_GATES = ("ste", "soft")
GATE_LEAK = 1e-2  # forward factor of a gated-off channel in training (see SearchLinear.output_gate)


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"selection mode {mode!r} is not one of {MODES}")


def check_prune_gate(gate):
    if gate not in PRUNE_GATES:
        raise ValueError(f"prune_gate {gate!r} is not one of {PRUNE_GATES}")


def select(alpha, temperature, mode, training, axis=0, zero=None):
    """Probabilities over precisions along ``axis`` for the given mode.

    ``zero``: the index of 0 bits of a :class:`PrecisionChoice` with ``conditional=True``, else None:
    the same values, but the prune probability's gradient reaches the 0-bit logit only.
    """
    if mode == "fixed":
        return tf.one_hot(tf.argmax(alpha, axis=axis), tf.shape(alpha)[axis], axis=axis, dtype=alpha.dtype)
    logits = alpha
    if mode == "gumbel" and training:
        u = tf.random.uniform(tf.shape(alpha), 1e-6, 1.0 - 1e-6)
        logits = alpha - tf.math.log(-tf.math.log(u))
    scaled = logits / tf.maximum(temperature, 1e-6)
    if zero is not None and axis == 0:
        soft = _prune_then_width(scaled, zero)
    else:
        soft = tf.nn.softmax(scaled, axis=axis)
    if mode == "hard":
        hard = tf.one_hot(tf.argmax(soft, axis=axis), tf.shape(alpha)[axis], axis=axis, dtype=alpha.dtype)
        return hard + soft - tf.stop_gradient(soft)
    return soft


def _kept_rows(x, zero):
    """``x`` without its row ``zero`` (the 0-bit row of a prunable group's logits)."""
    return tf.concat([x[:zero], x[zero + 1:]], axis=0)


def _prune_then_width(scaled, zero):
    """The softmax over axis 0 of ``scaled``, its prune row's gradient reaching row ``zero`` only."""
    rest = _kept_rows(scaled, zero)
    p_prune = tf.sigmoid(scaled[zero] - tf.stop_gradient(tf.reduce_logsumexp(rest, axis=0)))
    widths = (1.0 - p_prune) * tf.nn.softmax(rest, axis=0)
    return tf.concat([widths[:zero], p_prune[None], widths[zero:]], axis=0)


def _initial_logits(bits, channels=None):
    init = np.asarray(bits, np.float32) / float(max(bits))
    if channels is None:
        return init
    return np.repeat(init[:, None], channels, axis=1)


@_register
class PrecisionChoice(keras.layers.Layer):
    """Per-output-channel weight precision logits of one channel group.

    Called on any tensor (only for graph wiring); returns ``theta`` of shape
    ``(len(bits), channels)``. ``alpha`` starts at ``p / max(bits)``.

    Example::

        choice = PrecisionChoice(channels=16, bits=(0, 2, 4, 8))
        theta = choice(x)          # (4, 16), columns sum to 1
    """

    def __init__(self, channels, bits=(0, 2, 4, 8), temperature=1.0, mode="soft", regroup=True, note="",
                 min_channels=1, conditional=False, **kwargs):
        super().__init__(**kwargs)
        # the 0-bit logit alone decides "prune or keep", the others "which width" (see tfjpq.search.PRUNE_THEN_WIDTH)
        self.conditional = bool(conditional) and 0 in bits and len(bits) > 2
        self.min_channels = max(1, int(min_channels))  # kept channels a frozen group never goes below
        self.regroup = bool(regroup)  # may export reorder these channels by precision
        self.note = str(note)  # why the group may not prune, if it may not
        for b in bits:
            quantizers.check_weight_bits(b)
        if len(set(bits)) != len(bits) or list(bits) != sorted(bits):
            raise ValueError(f"weight bits must be distinct and ascending, got {bits}")
        check_mode(mode)
        self.channels = int(channels)
        self.bits = tuple(int(b) for b in bits)
        self.initial_temperature = float(temperature)
        self.mode = mode

    def build(self, input_shape=None):
        self.alpha = self.add_weight(name="alpha", shape=(len(self.bits), self.channels), initializer="zeros",
                                     trainable=self.mode != "fixed")
        self.alpha.assign(_initial_logits(self.bits, self.channels))
        self.temperature = self.add_weight(name="temperature", shape=(), initializer="ones", trainable=False)
        self.temperature.assign(self.initial_temperature)
        self.built = True

    @property
    def prunable(self) -> bool:
        return 0 in self.bits

    def theta(self, training=False):
        return select(self.alpha, self.temperature, self.mode, training,
                      zero=self.bits.index(0) if self.conditional else None)

    def kept_level(self):
        """Per channel, ``T * logsumexp`` of the kept widths' ``alpha / T``: with the 0-bit logit it sets P(prune)."""
        zero = self.bits.index(0)
        t = tf.maximum(tf.convert_to_tensor(self.temperature), 1e-6)
        return t * tf.reduce_logsumexp(_kept_rows(tf.convert_to_tensor(self.alpha), zero) / t, axis=0)

    def set_kept_level(self, level):
        """Shift the kept widths' logits so that :meth:`kept_level` is ``level`` again (the 0-bit row unchanged)."""
        zero = self.bits.index(0)
        shift = self.kept_level() - level
        rows = tf.range(len(self.bits))[:, None]
        self.alpha.assign(self.alpha - tf.where(rows == zero, 0.0, shift[None, :]))

    def hard_theta(self):
        """One-hot ``theta`` of the choices :func:`tfjpq.freeze` keeps (a graph-safe tensor, no gradient).

        The argmax of every channel, except that a prunable group keeps at
        least ``min_channels`` channels: the pruned channels with the highest
        non-zero logit come back at that logit's width (see :meth:`selected_index`).
        """
        alpha = tf.convert_to_tensor(self.alpha)
        sel = tf.argmax(alpha, axis=0, output_type=tf.int32)
        if self.prunable:
            zero = self.bits.index(0)
            floor = min(self.min_channels, self.channels)
            nonzero = tf.tensor_scatter_nd_update(alpha, [[zero]], [tf.fill([self.channels], -np.inf)])
            best_bits = tf.argmax(nonzero, axis=0, output_type=tf.int32)
            pruned = tf.equal(sel, zero)
            missing = floor - (self.channels - tf.reduce_sum(tf.cast(pruned, tf.int32)))
            score = tf.where(pruned, tf.reduce_max(nonzero, axis=0), -np.inf)
            idx = tf.math.top_k(score, k=floor).indices
            rescue = tf.range(floor) < missing
            new = tf.where(rescue, tf.gather(best_bits, idx), tf.gather(sel, idx))
            sel = tf.tensor_scatter_nd_update(sel, idx[:, None], new)
        return tf.one_hot(sel, len(self.bits), axis=0, dtype=tf.float32)

    def selected_index(self) -> np.ndarray:
        """Index into ``bits`` of each channel's choice, as :func:`tfjpq.freeze` fixes it.

        The argmax of ``alpha``; a prunable group that would keep fewer than
        ``min_channels`` channels (1 by default) gets back the pruned channels
        with the highest non-zero logit, each at that logit's width.
        """
        alpha = self.alpha.numpy()
        sel = np.argmax(alpha, axis=0)
        if self.prunable:
            zero = self.bits.index(0)
            missing = min(self.min_channels, self.channels) - int(np.sum(sel != zero))
            if missing > 0:
                nonzero = alpha.copy()
                nonzero[zero] = -np.inf
                score = np.where(sel == zero, nonzero.max(axis=0), -np.inf)
                for c in np.argsort(-score, kind="stable")[:missing]:
                    sel[c] = int(np.argmax(nonzero[:, c]))
        return sel

    def call(self, inputs, training=None):
        return self.theta(bool(training))

    def compute_output_shape(self, input_shape):
        return (len(self.bits), self.channels)

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor((len(self.bits), self.channels), dtype=self.compute_dtype)

    def selected_bits(self) -> np.ndarray:
        """The precision of every channel as :func:`tfjpq.freeze` fixes it (see :meth:`selected_index`), in bits."""
        return np.asarray(self.bits)[self.selected_index()]

    def get_config(self):
        cfg = super().get_config()
        cfg.update(channels=self.channels, bits=list(self.bits), temperature=self.initial_temperature, mode=self.mode,
                   regroup=self.regroup, note=self.note, min_channels=self.min_channels, conditional=self.conditional)
        return cfg


@_register
class ActivationChoice(keras.layers.Layer):
    """PACT fake quantization of a tensor at a searched precision.

    ``phi = softmax(beta / T)`` over ``bits``; the output is
    ``sum_a phi_a * PACT_a(x)``. The clip starts at ``clip`` (6 by default).

    Example::

        q = ActivationChoice(bits=(4, 8), signed=False)
        y = q(x)      # x fake-quantized on [0, clip]
    """

    def __init__(self, bits=(8,), signed=False, clip=6.0, temperature=1.0, mode="soft", **kwargs):
        super().__init__(**kwargs)
        for b in bits:
            quantizers.check_act_bits(b)
        check_mode(mode)
        self.bits = tuple(int(b) for b in bits)
        self.signed = bool(signed)
        self.initial_clip = float(clip)
        self.initial_temperature = float(temperature)
        self.mode = mode

    def build(self, input_shape):
        self.beta = self.add_weight(name="beta", shape=(len(self.bits),), initializer="zeros",
                                    trainable=self.mode != "fixed" and len(self.bits) > 1)
        self.beta.assign(_initial_logits(self.bits))
        self.clip = self.add_weight(name="clip", shape=(), initializer="ones", trainable=True)
        self.clip.assign(self.initial_clip)
        self.temperature = self.add_weight(name="temperature", shape=(), initializer="ones", trainable=False)
        self.temperature.assign(self.initial_temperature)
        self.built = True

    def phi(self, training=False):
        return select(self.beta, self.temperature, self.mode, training)

    def hard_phi(self):
        """One-hot ``phi`` of the argmax precision (what :func:`tfjpq.freeze` keeps)."""
        return tf.one_hot(tf.argmax(self.beta), len(self.bits), dtype=tf.float32)

    def call(self, x, training=None):
        if len(self.bits) == 1:
            return quantizers.quantize_activations(x, self.clip, self.bits[0], self.signed)
        phi = self.phi(bool(training))
        out = 0.0
        for i, b in enumerate(self.bits):
            out = out + phi[i] * quantizers.quantize_activations(x, self.clip, b, self.signed)
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def selected_bits(self) -> int:
        return int(self.bits[int(np.argmax(self.beta.numpy()))])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(bits=list(self.bits), signed=self.signed, clip=self.initial_clip,
                   temperature=self.initial_temperature, mode=self.mode)
        return cfg


@_register
class ActivationQuantizer(keras.layers.Layer):
    """Fixed PACT fake quantization (``bits``, ``clip``) left in exported models.

    The TFLite converter reads its range as the tensor's int8 quantization.
    """

    def __init__(self, bits=8, clip=6.0, signed=False, **kwargs):
        super().__init__(**kwargs)
        quantizers.check_act_bits(bits)
        self.bits, self.clip, self.signed = int(bits), float(clip), bool(signed)

    def call(self, x):
        return quantizers.quantize_activations(x, self.clip, self.bits, self.signed)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        cfg = super().get_config()
        cfg.update(bits=self.bits, clip=self.clip, signed=self.signed)
        return cfg


class SearchLinear(keras.layers.Layer):
    """Shared machinery of the three search layers; see the module docstring."""

    kind = None
    channel_axis = -1  # of the kernel

    def __init__(self, layer_config, weight_bits=(0, 2, 4, 8), bn_config=None, input_layout=None,
                 input_repeat=1, act_quantizer=None, group=None, weight_quantizer="minmax", prune_gate="soft",
                 **kwargs):
        kwargs.setdefault("name", layer_config.get("name"))
        super().__init__(**kwargs)
        quantizers.check_weight_quantizer(weight_quantizer)
        check_prune_gate(prune_gate)
        self.weight_quantizer = weight_quantizer  # the scale rule of Q_p (quantizers.WEIGHT_QUANTIZERS)
        self.prune_gate = prune_gate  # how keep_c masks the output: "soft" (1 - theta_0) or "ste" (0/1, soft gradient)
        self.layer_config = dict(layer_config)
        self.weight_bits = tuple(int(b) for b in weight_bits)
        self.bn_config = dict(bn_config) if bn_config else None
        self.input_layout = [list(s) for s in (input_layout or [])]
        self.input_repeat = int(input_repeat)
        self.act_quantizer = act_quantizer
        self.group = group
        self.activation = keras.activations.get(self.layer_config.get("activation", "linear"))
        self.use_bias = bool(self.layer_config.get("use_bias", True))
        self.bn = None
        if self.bn_config:
            cfg = {k: v for k, v in self.bn_config.items() if k != "name"}
            self.bn = keras.layers.BatchNormalization(name=f"{self.name}_bn", **cfg)

    # -- subclasses -------------------------------------------------------
    def kernel_shape(self, in_channels):
        raise NotImplementedError

    def apply_kernel(self, x, kernel):
        raise NotImplementedError

    @property
    def out_channels(self):
        raise NotImplementedError

    def kernel_taps(self) -> int:
        """Kernel elements per (input, output) channel pair: k_h * k_w (1 for Dense)."""
        ks = self.layer_config.get("kernel_size", (1, 1))
        return int(np.prod(ks))

    # -- Keras --------------------------------------------------------------
    def build(self, input_shape):
        x_shape = input_shape[0]
        cin = int(x_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=self.kernel_shape(cin), initializer="glorot_uniform")
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.out_channels,), initializer="zeros")
        if self.bn is not None:
            out_shape = list(x_shape[:-1]) + [self.out_channels]
            self.bn.build(tuple(out_shape))
        self.input_shape_seen = tuple(x_shape)
        self.built = True

    def out_pixels(self) -> int:
        """Output positions per sample (H_out * W_out; 1 for Dense), for MAC counts."""
        shape = self.output_shape_for(self.input_shape_seen)
        n = 1
        for d in shape[1:-1]:
            if d is None:
                raise ValueError(f"layer {self.name!r} has a dynamic spatial size; MACs need a fixed input shape")
            n *= int(d)
        return n

    def in_channels(self) -> int:
        return int(self.input_shape_seen[-1])

    def mixed_kernel(self, theta):
        """``sum_{p>0} theta_p Q_p(W) / keep`` broadcast over the kernel, and ``keep`` (None if not prunable)."""
        shape = [1] * len(self.kernel.shape)
        shape[self.channel_axis] = self.out_channels
        keep = None
        w = 0.0
        for i, b in enumerate(self.weight_bits):
            if b == 0:
                keep = 1.0 - theta[i]
                continue
            w = w + tf.reshape(theta[i], shape) * quantizers.quantize_weights(self.kernel, b, self.channel_axis,
                                                                              self.weight_quantizer)
        if keep is not None:
            w = w / tf.reshape(tf.maximum(keep, 1e-3), shape)
        return w, keep

    def gated_output(self, y, theta, keep, training=False):
        """``y`` times the channels' gate: ``keep``, or with ``prune_gate="ste"`` its 0/1 argmax form.

        With the straight-through gate a channel whose most likely choice is
        0 bits outputs zero, as it will once frozen, while the backward pass
        is the soft relaxation's for a pruned channel: the gradient reaches
        its logits (``d/d keep = y``) and its inputs (``d/d y = keep``), so the
        task loss can still call a pruned channel back, also through a second
        gate of the same group (a depthwise layer after its producer). In
        training the zero is a leak of ``GATE_LEAK`` times the channel's value,
        because at exactly zero a following ReLU's gradient is zero; the 8-bit
        activation quantizer after it rounds the leak to zero.
        """
        if self.prune_gate != "ste":
            return y * keep
        zero = self.weight_bits.index(0)
        hard = tf.cast(tf.not_equal(tf.argmax(theta, axis=0), zero), keep.dtype)
        forward = tf.maximum(hard, GATE_LEAK) if training else hard
        backward = tf.maximum(hard, keep)  # d out / d y: 1 for a kept channel, the soft keep for a pruned one
        return (tf.stop_gradient(y * forward) + (y - tf.stop_gradient(y)) * tf.stop_gradient(backward)
                + (keep - tf.stop_gradient(keep)) * tf.stop_gradient(y))

    def call(self, inputs, training=None):
        x, theta = inputs
        kernel, keep = self.mixed_kernel(theta)
        y = self.apply_kernel(x, kernel)
        if self.use_bias:
            y = y + self.bias
        if self.bn is not None:
            y = self.bn(y, training=training)
        if keep is not None:
            y = self.gated_output(y, theta, keep, bool(training))
        return self.activation(y)

    def compute_output_spec(self, inputs, training=None):
        x = inputs[0]
        shape = self.output_shape_for(tuple(x.shape))
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def output_shape_for(self, shape):
        raise NotImplementedError

    def get_config(self):
        cfg = super().get_config()
        cfg.update(layer_config=self.layer_config, weight_bits=list(self.weight_bits), bn_config=self.bn_config,
                   input_layout=self.input_layout, input_repeat=self.input_repeat,
                   act_quantizer=self.act_quantizer, group=self.group, weight_quantizer=self.weight_quantizer,
                   prune_gate=self.prune_gate)
        return cfg


def _conv_out(size, k, s, d, padding):
    if size is None:
        return None
    if padding == "same":
        return -(-size // s)
    eff = (k - 1) * d + 1
    return (size - eff) // s + 1


class _SearchConvBase(SearchLinear):
    def _conv_params(self):
        cfg = self.layer_config
        strides = tuple(cfg.get("strides", (1, 1)))
        dil = tuple(cfg.get("dilation_rate", (1, 1)))
        return strides, dil, cfg.get("padding", "valid").upper()

    def output_shape_for(self, shape):
        cfg = self.layer_config
        ks, (sh, sw), (dh, dw) = cfg["kernel_size"], cfg.get("strides", (1, 1)), cfg.get("dilation_rate", (1, 1))
        pad = cfg.get("padding", "valid")
        return (shape[0], _conv_out(shape[1], ks[0], sh, dh, pad), _conv_out(shape[2], ks[1], sw, dw, pad),
                self.out_channels)


@_register
class SearchConv2D(_SearchConvBase):
    """Conv2D with a per-output-channel precision/pruning choice (and an absorbed BN)."""

    kind = "conv"
    channel_axis = -1

    @property
    def out_channels(self):
        return int(self.layer_config["filters"])

    def kernel_shape(self, cin):
        return tuple(self.layer_config["kernel_size"]) + (cin, self.out_channels)

    def apply_kernel(self, x, kernel):
        strides, dil, pad = self._conv_params()
        return tf.nn.convolution(x, kernel, strides=strides, padding=pad, dilations=dil)


@_register
class SearchDepthwiseConv2D(_SearchConvBase):
    """DepthwiseConv2D (multiplier 1) whose channels share their producer's choice."""

    kind = "depthwise"
    channel_axis = 2

    def build(self, input_shape):
        self._channels = int(input_shape[0][-1])
        super().build(input_shape)

    @property
    def out_channels(self):
        return self._channels

    def kernel_shape(self, cin):
        return tuple(self.layer_config["kernel_size"]) + (cin, 1)

    def apply_kernel(self, x, kernel):
        (sh, sw), dil, pad = self._conv_params()
        return tf.nn.depthwise_conv2d(x, kernel, strides=(1, sh, sw, 1), padding=pad, dilations=dil)

    def output_shape_for(self, shape):
        self._channels = int(shape[-1])
        return super().output_shape_for(shape)


@_register
class SearchDense(SearchLinear):
    """Dense with a per-output-unit precision/pruning choice (and an absorbed BN)."""

    kind = "dense"
    channel_axis = -1

    @property
    def out_channels(self):
        return int(self.layer_config["units"])

    def kernel_shape(self, cin):
        return (cin, self.out_channels)

    def apply_kernel(self, x, kernel):
        return tf.matmul(x, kernel)

    def output_shape_for(self, shape):
        return (shape[0], self.out_channels)


SEARCH_LAYERS = {"conv": SearchConv2D, "depthwise": SearchDepthwiseConv2D, "dense": SearchDense}
