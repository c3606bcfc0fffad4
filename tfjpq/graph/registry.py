"""The one table of Keras layer kinds tfjpq knows, and what each method may do with them.

Every method asks this table, never ``isinstance`` lists of its own:

* :func:`kind_of` / :func:`layer_kind`: which :class:`LayerKind` a layer is;
* ``LayerKind.channels``: how the kind treats the channel axis, read by the
  channel-group analysis (:mod:`tfjpq.graph.channels`);
* ``searchable`` / ``croppable`` / ``tunable``: whether ``tfjpq.wrap`` /
  ``precrop.crop`` / ``quantune.tune`` accept the kind in a model; ``scorable`` / ``quantizable``: whether
  ``precrop`` scores its kernel and ``zeroq`` quantizes it;
* ``channel_axis`` and ``tflite_op``: where a kernel's output channels are and
  which TFLite builtin the converter turns the layer into (:func:`tflite_op`).

A model that holds a layer no kind :meth:`~LayerKind.supports` is rejected by
:func:`tfjpq.graph.check_model`, whatever the entry point.
"""

from __future__ import annotations

import dataclasses

import keras

__all__ = [
    "LayerKind", "KINDS", "kind_of", "layer_kind", "supports", "tflite_op", "tflite_kernel_shape", "keras_class", "kernel_channel_axis",
    "supported_names", "activation_name", "ZERO_PRESERVING_ACTIVATIONS", "NONNEGATIVE_ACTIVATIONS",
    "OTHER_ACTIVATIONS", "WEIGHTED",
]

# Element-wise activations with f(0) == 0: a pruned (all-zero) channel stays zero.
ZERO_PRESERVING_ACTIVATIONS = frozenset({
    "relu", "relu6", "leaky_relu", "linear", "elu", "selu", "gelu", "swish", "silu",
    "tanh", "hard_swish", "hard_silu", "mish", "softsign",
})
NONNEGATIVE_ACTIVATIONS = frozenset({"relu", "relu6", "sigmoid", "hard_sigmoid", "softmax", "softplus"})
OTHER_ACTIVATIONS = frozenset({"sigmoid", "hard_sigmoid", "softmax", "softplus", "exponential", "log_softmax"})

# How a kind treats the channel axis (LayerKind.channels).
NEW = "new"          # starts a channel group of its own (Conv, Dense)
FOLLOW = "follow"    # output channels follow the input's, times depth_multiplier (depthwise)
KEEP = "keep"        # same channels in, same out (BN, activations, pooling, padding, ...)
JOIN = "join"        # element-wise merge: the inputs' channels become one group (Add, ...)
STACK = "stack"      # concatenation: the inputs' groups side by side
FLATTEN = "flatten"  # spatial positions folded into the channel axis (Flatten, Reshape to 1-D)


def _classes(*names):
    return tuple(getattr(keras.layers, n) for n in names if hasattr(keras.layers, n))


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """One kind of layer: which classes it covers and what each tfjpq method may do with it."""

    name: str
    classes: tuple
    channels: str = KEEP
    channel_axis: int | None = None  # output-channel axis of the kernel
    tflite_op: str | None = None
    searchable: bool = False  # tfjpq.wrap accepts it in a model
    croppable: bool = False  # precrop.crop accepts it in a model
    scorable: bool = False  # precrop scores (and masks) its kernel
    quantizable: bool = False  # zeroq quantizes its kernel
    tunable: bool = False  # quantune tunes the post-training quantization of models made of it

    def supports(self, layer) -> bool:
        """Whether ``layer`` is of this kind."""
        return isinstance(layer, self.classes) and not isinstance(layer, keras.Model)


_BOTH = {"searchable": True, "croppable": True, "tunable": True}
_WEIGHTS = {"scorable": True, "croppable": True}

# First match wins.
KINDS = (
    LayerKind("depthwise", _classes("DepthwiseConv2D"), FOLLOW, 2, "DEPTHWISE_CONV_2D", searchable=True,
              quantizable=True, tunable=True, **_WEIGHTS),
    LayerKind("depthwise1d", _classes("DepthwiseConv1D"), FOLLOW, 1, "DEPTHWISE_CONV_2D", **_WEIGHTS),
    LayerKind("conv", _classes("Conv2D"), NEW, -1, "CONV_2D", searchable=True, quantizable=True, tunable=True, **_WEIGHTS),
    LayerKind("conv1d", _classes("Conv1D"), NEW, -1, "CONV_2D", **_WEIGHTS),
    LayerKind("conv3d", _classes("Conv3D"), NEW, -1, "CONV_3D", **_WEIGHTS),
    LayerKind("dense", _classes("Dense"), NEW, -1, "FULLY_CONNECTED", searchable=True, quantizable=True, tunable=True, **_WEIGHTS),
    LayerKind("bn", _classes("BatchNormalization"), **_BOTH),
    LayerKind("act", _classes("ReLU", "LeakyReLU", "ELU", "Activation", "Softmax"), **_BOTH),
    LayerKind("pass", _classes("MaxPooling2D", "AveragePooling2D", "ZeroPadding2D", "Cropping2D", "Dropout",
                               "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "Identity",
                               "ActivityRegularization"), **_BOTH),
    LayerKind("global_pool", _classes("GlobalAveragePooling2D", "GlobalMaxPooling2D"), **_BOTH),
    LayerKind("flatten", _classes("Flatten"), FLATTEN, **_BOTH),
    LayerKind("reshape", _classes("Reshape"), FLATTEN, **_BOTH),
    LayerKind("concat", _classes("Concatenate"), STACK, **_BOTH),
    LayerKind("add", _classes("Add"), JOIN, **_BOTH),
    LayerKind("rescale", _classes("Rescaling"), searchable=True, tunable=True),
    LayerKind("input", _classes("InputLayer"), **_BOTH),
    # Kinds only PreCrop narrows (the search has no rule for them yet).
    LayerKind("merge", _classes("Subtract", "Multiply", "Average", "Maximum", "Minimum"), JOIN, croppable=True),
    LayerKind("same_channels", _classes(
        "LayerNormalization", "PReLU", "AlphaDropout", "SpatialDropout1D", "SpatialDropout3D",
        "MaxPooling1D", "MaxPooling3D", "AveragePooling1D", "AveragePooling3D",
        "GlobalAveragePooling1D", "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling3D",
        "ZeroPadding1D", "ZeroPadding3D", "Cropping1D", "Cropping3D",
        "UpSampling1D", "UpSampling2D", "UpSampling3D",
    ), croppable=True),
)
_BY_NAME = {k.name: k for k in KINDS}

# Kinds with a kernel whose output channels the methods prune, crop or quantize.
WEIGHTED = frozenset(k.name for k in KINDS if k.tflite_op is not None)


def kind_of(layer) -> LayerKind | None:
    """The :class:`LayerKind` of ``layer``, or None if tfjpq does not know it."""
    for kind in KINDS:
        if kind.supports(layer):
            return kind
    return None


def layer_kind(layer) -> str:
    """The kind's name ("conv", "bn", "act", "add", ...), or "unsupported"."""
    kind = kind_of(layer)
    return kind.name if kind is not None else "unsupported"


def supports(layer, capability: str | None = None) -> bool:
    """Whether tfjpq knows ``layer`` (and, given a capability such as "searchable", whether the kind has it)."""
    kind = kind_of(layer)
    return kind is not None and (capability is None or getattr(kind, capability))


def tflite_op(kind) -> str:
    """The TFLite builtin a weighted kind converts to, e.g. "CONV_2D".

    ``kind``: a kind name ("conv"), a :class:`LayerKind` or a Keras class name ("Conv2D")."""
    name = kind.name if isinstance(kind, LayerKind) else kind
    spec = _BY_NAME.get(name) or next((k for k in KINDS if name in {c.__name__ for c in k.classes}), None)
    op = spec.tflite_op if spec is not None else None
    if op is None:
        raise KeyError(f"layer kind {name!r} has no TFLite weight op")
    return op


def tflite_kernel_shape(kind, shape) -> tuple:
    """A Keras kernel shape as the TFLite flatbuffer stores it (OHWI for conv, 1HWO for depthwise, OI for Dense).

    ``kind`` as for :func:`tflite_op`.
    """
    op = tflite_op(kind)
    if op == "CONV_2D" and len(shape) == 4:
        kh, kw, cin, cout = shape
        return (cout, kh, kw, cin)
    if op == "DEPTHWISE_CONV_2D" and len(shape) == 4:
        kh, kw, cin, mult = shape
        return (1, kh, kw, cin * mult)
    if op == "FULLY_CONNECTED":
        return (shape[1], shape[0])
    raise KeyError(f"no TFLite kernel layout for layer kind {kind!r} with kernel shape {tuple(shape)}")


def keras_class(kind: str):
    """The Keras class a kind is rebuilt as (its first class), e.g. ``keras.layers.Conv2D`` for "conv"."""
    return _BY_NAME[kind].classes[0]


def kernel_channel_axis(layer) -> int:
    """The output-channel axis of ``layer``'s kernel (2 for a depthwise 2-D kernel, else -1)."""
    kind = kind_of(layer)
    if kind is None or kind.channel_axis is None:
        raise KeyError(f"layer {layer.name!r} ({type(layer).__name__}) has no kernel tfjpq knows")
    return kind.channel_axis


def supported_names(capability: str | None = None) -> list:
    """Class names of the kinds that have ``capability`` (all known kinds if None), for error messages."""
    return [c.__name__ for k in KINDS if capability is None or getattr(k, capability)
            for c in k.classes if k.name != "input"]


def activation_name(fn) -> str:
    """The name of a Keras activation (a string, a function or None for "linear")."""
    if fn is None:
        return "linear"
    if isinstance(fn, str):
        return fn
    return keras.activations.serialize(fn) if not hasattr(fn, "__name__") else fn.__name__
