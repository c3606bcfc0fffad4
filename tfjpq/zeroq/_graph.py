"""Graph helpers shared by the ZeroQ steps: which layers, which tensors, which kernels.

Kept private: the public names are :func:`tfjpq.zeroq.distill`,
:func:`tfjpq.zeroq.sensitivity` and :func:`tfjpq.zeroq.pareto`.
"""

from __future__ import annotations

import keras
import numpy as np

from tfjpq import quantizers

# Layers whose kernel ZeroQ quantizes, in the order they appear in ``model.layers``.
QUANTIZABLE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def check_functional(model, what: str) -> None:
    """Raise a clear error unless ``model`` is a built Keras functional (or Sequential) model."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what} needs a keras.Model, got {type(model).__name__}")
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise TypeError(
            f"{what} needs a functional Keras model (keras.Model(inputs, outputs) or a built "
            f"keras.Sequential); {model.name!r} of class {type(model).__name__} has no symbolic "
            "inputs (subclassed models hide their graph). Rebuild it with the functional API."
        )


def single_input_shape(model, what: str) -> tuple:
    if len(model.inputs) != 1:
        raise ValueError(f"{what} supports models with one input; {model.name!r} has {len(model.inputs)}")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            f"{what} needs a fully defined input shape; {model.name!r} takes {(None,) + shape}. "
            "Build the model with keras.Input(shape=(H, W, C)) without None dimensions."
        )
    return shape


def nested_models(model):
    return [l for l in model.layers if isinstance(l, keras.Model)]


def _find_nested(model, cls):
    out = []
    for sub in nested_models(model):
        for l in sub.layers:
            if isinstance(l, cls):
                out.append((sub.name, l.name))
        out.extend(_find_nested(sub, cls))
    return out


def batchnorm_layers(model):
    """Top-level BatchNormalization layers; error if some hide in nested models."""
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    hidden = _find_nested(model, keras.layers.BatchNormalization)
    if hidden:
        raise ValueError(
            "BatchNormalization layers inside nested models are not supported: "
            + ", ".join(f"{l!r} in {m!r}" for m, l in hidden[:5])
            + ". Build the model as one flat functional graph."
        )
    return bns


def quantizable_layers(model):
    """Top-level Conv2D / DepthwiseConv2D / Dense layers, in ``model.layers`` order."""
    return [l for l in model.layers if isinstance(l, QUANTIZABLE) and not isinstance(l, keras.Model)]


def kernel_variable(layer):
    return layer.kernel


def quantize_kernel_np(layer, w: np.ndarray, bits: int) -> np.ndarray:
    """Per-output-channel symmetric quantization of ``layer``'s kernel at ``bits``.

    Conv2D ``(kh, kw, cin, cout)`` and Dense ``(in, out)``: channel axis -1.
    DepthwiseConv2D ``(kh, kw, cin, mult)``: channel axis 2 (with ``mult > 1``,
    each of the ``cin * mult`` output channels gets its own scale, as TFLite stores it).
    """
    w = np.asarray(w, np.float32)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, cin, mult = w.shape
        if mult == 1:
            return quantizers.quantize_weights_np(w, bits, channel_axis=2)
        flat = w.reshape(kh, kw, 1, cin * mult)
        return quantizers.quantize_weights_np(flat, bits, channel_axis=-1).reshape(w.shape)
    return quantizers.quantize_weights_np(w, bits, channel_axis=-1)


def kernel_channel_axis(layer) -> int:
    return 2 if isinstance(layer, keras.layers.DepthwiseConv2D) else -1
