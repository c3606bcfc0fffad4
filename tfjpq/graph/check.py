"""The one model check every tfjpq entry point runs first.

``check_model(model, capability, entry)`` accepts a Keras 3 functional (or
built Sequential) model on the TensorFlow backend whose graph is flat (no
nested models), whose layers are each called once and return one tensor, and
whose every layer is a kind :mod:`tfjpq.graph.registry` knows (and, given a
capability such as ``"croppable"``, a kind that has it). Anything else raises
:class:`~tfjpq.errors.UnsupportedModelError` naming the layer (or model), its
class and what to do, the same class and wording from every entry point.
"""

from __future__ import annotations

import keras

from tfjpq.errors import UnsupportedModelError
from tfjpq.graph.registry import kind_of, supported_names

__all__ = ["check_model", "topological_nodes", "single_input_shape", "layers_with", "load_model", "check_finite_weights",
           "check_search_arguments",
           "warn_untrained_batchnorm"]


def check_model(model, capability: str | None = "searchable", entry: str = "tfjpq.wrap") -> keras.Model:
    """Reject what ``entry`` cannot handle; return the model as a functional model.

    ``capability``: a :class:`~tfjpq.graph.registry.LayerKind` flag every layer's
    kind must have (``"searchable"``, ``"croppable"``), ``"known"`` for any kind
    in the registry, or None to check the graph's structure only.
    """
    _check_backend()
    _check_keras3(model)
    model = _as_functional(model)
    _check_flat(model)
    nodes = topological_nodes(model)
    _check_calls(nodes)
    if capability is not None:
        _check_layer_kinds(nodes, capability, entry)
    return model


def topological_nodes(model):
    """The model's call nodes in execution order (input nodes excluded)."""
    out = []
    for depth in sorted(model._nodes_by_depth.keys(), reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            out.append(node)
    return out


def single_input_shape(model, entry: str) -> tuple:
    """The one input's shape without the batch axis; every dimension must be known."""
    if len(model.inputs) != 1:
        raise UnsupportedModelError(f"{entry} supports models with one input; {model.name!r} has {len(model.inputs)}")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise UnsupportedModelError(
            f"{entry} needs a fully defined input shape; {model.name!r} takes {(None,) + shape}. "
            "Build the model with keras.Input(shape=(H, W, C)) without None dimensions."
        )
    return shape


def layers_with(model, capability: str) -> list:
    """The model's layers whose kind has ``capability`` ("quantizable", "scorable", ...), in ``model.layers`` order."""
    out = []
    for layer in model.layers:
        kind = kind_of(layer)
        if kind is not None and getattr(kind, capability):
            out.append(layer)
    return out


def _check_backend():
    if keras.backend.backend() != "tensorflow":
        raise UnsupportedModelError(
            f"tfjpq needs the TensorFlow backend of Keras, but KERAS_BACKEND is {keras.backend.backend()!r}. "
            "Set KERAS_BACKEND=tensorflow before importing keras."
        )


def _check_keras3(model):
    module = type(model).__module__ or ""
    if module.startswith("tf_keras") or module.startswith("tensorflow.python.keras"):
        raise UnsupportedModelError(
            f"model {getattr(model, 'name', '?')!r} ({type(model).__name__}) is a tf_keras (Keras 2) model; tfjpq "
            "works on Keras 3 models. Rebuild it with `import keras` (Keras 3), or load its weights into a Keras 3 copy."
        )
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"expected a keras.Model, got {type(model).__name__} ({module}); tfjpq works on Keras 3 models"
        )


def _as_functional(model):
    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise UnsupportedModelError(
                f"Sequential model {model.name!r} has no input shape yet; start it with keras.Input(shape) "
                "or call it on data once before using it with tfjpq"
            )
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not hasattr(model, "_nodes_by_depth"):
        raise UnsupportedModelError(
            f"model {model.name!r} ({type(model).__name__}) is a subclassed model: its graph cannot be read. "
            "Build it with the functional API (keras.Input ... keras.Model(inputs, outputs)) or as a Sequential."
        )
    return model


def _check_flat(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise UnsupportedModelError(
                f"layer {layer.name!r} ({type(layer).__name__}) is a nested model; tfjpq needs a flat graph. "
                "Rebuild the model so the inner model's layers are called directly."
            )


def _check_calls(nodes):
    seen = set()
    for node in nodes:
        layer = node.operation
        if id(layer) in seen:
            raise UnsupportedModelError(
                f"layer {layer.name!r} ({type(layer).__name__}) is called more than once; shared layers are not "
                "supported. Give each call its own layer."
            )
        seen.add(id(layer))
        if len(node.outputs) != 1:
            raise UnsupportedModelError(
                f"layer {layer.name!r} ({type(layer).__name__}) has {len(node.outputs)} outputs; "
                "tfjpq supports single-output layers"
            )


def _check_layer_kinds(nodes, capability, entry):
    for node in nodes:
        layer = node.operation
        kind = kind_of(layer)
        if kind is not None and (capability == "known" or getattr(kind, capability)):
            continue
        wanted = None if capability == "known" else capability
        raise UnsupportedModelError(
            f"layer {layer.name!r} ({type(layer).__name__}) is not supported by {entry}. Replace it with "
            f"supported layers: {', '.join(supported_names(wanted))}"
        )


def load_model(path, compile: bool = False):
    """Load a ``.keras`` file (a float model, a search model or an exported one) with clear errors.

    Keras reports a truncated archive as "File not found"; this raises
    :class:`~tfjpq.errors.ModelFileError` naming the file and what is wrong with it
    (not a zip archive, no ``config.json``, a layer it cannot rebuild, ...), and
    ``FileNotFoundError`` only when the file does not exist.

    Example::

        model = tfjpq.load_model("build/quickstart/deploy.keras")
    """
    import os
    import zipfile

    import tfjpq.export  # noqa: F401  (registers tfjpq's layers and models for deserialization)
    import tfjpq.search  # noqa: F401
    from tfjpq.errors import ModelFileError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such .keras file: {path!r}")
    if os.path.isdir(path) or not zipfile.is_zipfile(path):
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        raise ModelFileError(
            f"{path!r} ({size:,} bytes) is not a .keras archive (not a zip file): truncated, corrupted, "
            "or saved in another format (a .h5 file or a SavedModel directory). Save it again with model.save('x.keras')")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            bad = z.testzip()
        if bad is not None:
            raise ModelFileError(f"{path!r} is corrupted: the member {bad!r} fails its CRC check")
        if "config.json" not in names:
            raise ModelFileError(f"{path!r} is a zip archive without config.json: not a Keras 3 .keras file")
        return keras.saving.load_model(path, compile=compile)
    except ModelFileError:
        raise
    except Exception as e:   # zipfile, JSON, h5 and deserialization errors alike
        raise ModelFileError(f"{path!r} could not be loaded as a Keras model ({type(e).__name__}: "
                             f"{str(e).strip()[:500]})") from e


def check_finite_weights(model, entry: str = "tfjpq.wrap") -> None:
    """Raise :class:`~tfjpq.errors.DataError` naming the first layer whose weights hold NaN or Inf.

    A model trained on data with NaN (or with a diverged loss) has such weights; searching,
    freezing or exporting it would only hand on a broken model.
    """
    import numpy as np

    from tfjpq.errors import DataError

    for layer in model.layers:
        for var in layer.weights:
            value = np.asarray(var.numpy() if hasattr(var, "numpy") else var)
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                bad = int((~np.isfinite(value)).sum())
                raise DataError(
                    f"{entry}: layer {layer.name!r} has {bad:,} NaN or Inf values in {var.path if hasattr(var, 'path') else var.name!r}; "
                    "the model was trained on data with NaN / Inf or its loss diverged. Check the data with "
                    "tfjpq.check_data and train again (keras.callbacks.TerminateOnNaN stops such a run early).")


def check_search_arguments(strength, target=None, temperature=1.0, act_clip=6.0, has_choices=True) -> None:
    """``wrap``'s numeric arguments: finite, and a strength the target controller can scale.

    ``strength=0`` without a target trains with no cost pressure (a warning); with a target it
    is refused: the controller scales the multiplier multiplicatively and could never leave 0.
    """
    import math
    import warnings

    def number(value, name):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
        return value

    strength = number(strength, "strength")
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if target is not None:
        number(target, "target")   # (its range is checked against the model by budget.check_target)
        if strength == 0:
            raise ValueError("strength=0 with a target: strength is the starting multiplier of the target "
                             "controller, which scales it up or down by a factor per step and cannot leave 0; "
                             "pass a positive strength (the default 0.05 is fine)")
    elif strength == 0 and has_choices:  # (one width and one activation width: plain QAT, nothing to search)
        warnings.warn("tfjpq.wrap(strength=0) without a target: the cost has no weight in the loss, so the search "
                      "will not prune or lower precision; pass strength > 0 or a target", UserWarning, stacklevel=3)
    if number(temperature, "temperature") <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if number(act_clip, "act_clip") <= 0:
        raise ValueError(f"act_clip must be > 0, got {act_clip}")


def warn_untrained_batchnorm(model, entry: str) -> list:
    """Warn (UserWarning) about BatchNormalization layers whose moving statistics were never updated.

    A fresh BN layer holds moving mean 0 and moving variance 1; ZeroQ distils data to match
    those statistics and the search folds them into the kernels, so both need a trained model.
    Returns the names of such layers.
    """
    import warnings

    import numpy as np

    fresh = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.built:
            mean, var = np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)
            if mean.size and not mean.any() and np.all(var == 1.0):
                fresh.append(layer.name)
    if fresh:
        warnings.warn(
            f"{entry}: the BatchNormalization layer(s) {fresh} still hold their initial statistics (moving mean 0, "
            "moving variance 1): the model was never trained, or trained with BN frozen. "
            + ("ZeroQ distils data to match these statistics, " if "zeroq" in entry else
               "The search folds these statistics into the kernels, ")
            + "so the result will not reflect the real model. Train it first (BN momentum 0.9 settles in a few epochs).",
            UserWarning, stacklevel=3)
    return fresh
