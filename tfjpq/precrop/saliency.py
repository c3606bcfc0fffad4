"""Pruning-at-initialization scores (SNIP, GraSP, SynFlow) for Keras 3 models.

Every score has the same shape as the kernel it rates, and for every method a
*higher* score means *keep*:

* ``snip``    -- ``|w * dL/dw|`` on labelled data (Lee et al., 2019).
* ``grasp``   -- ``w * (H g)``, the Hessian-gradient product, by double
  back-propagation (Wang et al., 2020). The paper writes its score as
  ``S = -w * (H g)`` and removes the weights with the *largest* ``S``; we
  return ``-S`` so that, as for the other methods, the top scores are kept.
  Logits are divided by a temperature (200, as in the paper) before the loss.
* ``synflow`` -- ``|w * dR/dw|`` with ``R`` the sum of the outputs of the
  network run on an all-ones input with every parameter replaced by its
  absolute value (Tanaka et al., 2020). Data-free. BatchNorm is linearized:
  inference mode, moving mean 0, ``|gamma|``, ``|beta|``, ``|variance|``, so
  the whole network is a positive, (piecewise) linear function of its input.
  A softmax/sigmoid activation on an output layer is switched off while
  scoring (their sum would be constant).

Scored layers are the kernels of ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D`` and
``Dense`` (the registry's scorable kinds, :mod:`tfjpq.graph.registry`). Biases and normalization parameters are not scored (they are never
pruned). Scoring never changes the model: every variable is restored.

Example::

    from tfjpq import zoo, datasets, precrop
    (x, y), _ = datasets.load_digits()
    model = zoo.small_cnn()
    s = precrop.scores(model, "snip", data=(x[:128], y[:128]))
    s["conv2"].shape       # (3, 3, 16, 32), the kernel's shape
    m = precrop.masks(model, "synflow", density=0.2)   # iterative, data-free
    sum(v.sum() for v in m.values()) / sum(v.size for v in m.values())   # 0.2
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tfjpq.errors import UnsupportedModelError
from tfjpq.graph import KINDS, check_model, kind_of, layer_kind

__all__ = ["METHODS", "SCORED_LAYERS", "scored_layers", "scores", "global_top", "masks"]

METHODS = ("snip", "grasp", "synflow")

# Layers whose kernel is scored (and, for the unstructured baseline, masked): the registry's scorable kinds.
SCORED_LAYERS = tuple(c for kind in KINDS if kind.scorable for c in kind.classes)


# --------------------------------------------------------------------------- layers


def scored_layers(model) -> list:
    """The layers whose kernels are scored, in model order.

    The model must pass :func:`tfjpq.graph.check_model` for PreCrop (the models
    :func:`tfjpq.precrop.crop` accepts).

    Example::

        [l.name for l in precrop.scored_layers(zoo.small_cnn())]   # ['conv1', 'conv2', 'logits']
    """
    functional = check_model(model, "croppable", "precrop")
    found = [l for l in functional.layers if kind_of(l) is not None and kind_of(l).scorable]
    for layer in found:
        groups = getattr(layer, "groups", 1)
        if groups != 1:
            raise UnsupportedModelError(
                f"layer {layer.name!r} ({type(layer).__name__}) is a grouped convolution (groups={groups}); "
                "precrop scores only groups=1 convolutions, depthwise convolutions and Dense layers"
            )
    if not found:
        raise ValueError(
            f"model {model.name!r} has no Conv, DepthwiseConv or Dense layer to score"
        )
    return found


# --------------------------------------------------------------------------- state


@contextlib.contextmanager
def _logits_output(model, method):
    """SynFlow sums the outputs; a softmax would make that sum constant. Score the logits instead."""
    if method != "synflow":
        yield
        return
    outputs = [t._keras_history.operation for t in model.outputs] if getattr(model, "outputs", None) else []
    swapped = []
    for layer in outputs:
        if isinstance(layer, keras.layers.Softmax):
            raise ValueError(
                f"method='synflow' sums the model's outputs, and output layer {layer.name!r} (Softmax) makes "
                "that sum constant; score the model without its final Softmax layer"
            )
        act = getattr(layer, "activation", None)
        if act is not None and getattr(act, "__name__", "") in ("softmax", "sigmoid", "log_softmax"):
            swapped.append((layer, act))
            layer.activation = keras.activations.linear
    try:
        yield
    finally:
        for layer, act in swapped:
            layer.activation = act


@contextlib.contextmanager
def _restored(model):
    """Run a block that may change any variable of ``model``; restore them all afterwards."""
    saved = [(v, v.numpy()) for v in model.variables]
    try:
        yield
    finally:
        for v, value in saved:
            v.assign(value)


def _apply_masks_now(layers_, originals, masks):
    for layer, w0 in zip(layers_, originals):
        m = masks.get(layer.name) if masks else None
        layer.kernel.assign(w0 if m is None else w0 * m.astype(w0.dtype))


# --------------------------------------------------------------------------- data / loss


def _batches(data, batch_size, max_batches, method):
    if data is None:
        raise ValueError(
            f"method={method!r} needs labelled data: pass data=(x, y) (arrays) or a batched "
            "tf.data.Dataset of (x, y); only method='synflow' is data-free"
        )
    if isinstance(data, tf.data.Dataset):
        ds = data
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        from tfjpq.datasets import check_data

        check_data(x, y, what=f"precrop data (method={method!r})")
        if len(x) != len(y):
            raise ValueError(f"data=(x, y) must have as many labels as inputs; got {len(x)} and {len(y)}")
        if len(x) == 0:
            raise ValueError("data=(x, y) is empty")
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    else:
        raise TypeError(
            f"data must be (x, y) or a batched tf.data.Dataset of (x, y); got {type(data).__name__}"
        )
    if max_batches is not None:
        ds = ds.take(max_batches)
    return ds


def _output_is_probability(model):
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    if isinstance(last, keras.layers.Softmax):
        return True
    return act is not None and getattr(act, "__name__", "") in ("softmax", "sigmoid")


def _resolve_loss(model, loss, y):
    """The loss to differentiate: the given one, the compiled one, or cross-entropy on logits."""
    if loss is None and getattr(model, "compiled", False) and getattr(model, "loss", None) is not None:
        loss = model.loss
    if loss is not None:
        fn = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
        return fn, False
    probs = _output_is_probability(model)
    if len(y.shape) >= 2 and y.shape[-1] > 1:
        fn = keras.losses.CategoricalCrossentropy(from_logits=not probs)
    else:
        fn = keras.losses.SparseCategoricalCrossentropy(from_logits=not probs)
    return fn, not probs


# --------------------------------------------------------------------------- the three scores


def _snip(model, layers_, data, loss, batch_size, max_batches):
    kernels = [l.kernel for l in layers_]
    acc = [np.zeros(k.shape, np.float32) for k in kernels]
    seen = 0
    for x, y in _batches(data, batch_size, max_batches, "snip"):
        fn, _ = _resolve_loss(model, loss, y)
        with tf.GradientTape() as tape:
            loss_value = tf.reduce_mean(fn(y, model(x, training=True)))
        for a, g in zip(acc, tape.gradient(loss_value, kernels)):
            a += g.numpy()
        seen += 1
    if seen == 0:
        raise ValueError("method='snip' got no batch from data")
    return {l.name: np.abs(k.numpy() * a) for l, k, a in zip(layers_, kernels, acc)}


def _grasp(model, layers_, data, loss, batch_size, max_batches, temperature):
    kernels = [l.kernel for l in layers_]
    batches = list(_batches(data, batch_size, max_batches, "grasp"))
    if not batches:
        raise ValueError("method='grasp' got no batch from data")

    def loss_of(x, y):
        fn, logits = _resolve_loss(model, loss, y)
        out = model(x, training=True)
        if logits:
            out = out / temperature
        return tf.reduce_mean(fn(y, out))

    # First pass: the gradient g, summed over the batches, treated as a constant.
    g_const = [tf.zeros_like(k) for k in kernels]
    for x, y in batches:
        with tf.GradientTape() as tape:
            value = loss_of(x, y)
        g_const = [a + g for a, g in zip(g_const, tape.gradient(value, kernels))]
    # Second pass: H g = d(g . g_const)/dw, by differentiating the gradient again.
    hg = [np.zeros(k.shape, np.float32) for k in kernels]
    for x, y in batches:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                value = loss_of(x, y)
            grads = inner.gradient(value, kernels)
            z = tf.add_n([tf.reduce_sum(g * tf.stop_gradient(c)) for g, c in zip(grads, g_const)])
        for a, h in zip(hg, outer.gradient(z, kernels)):
            if h is not None:
                a += h.numpy()
    return {l.name: k.numpy() * h for l, k, h in zip(layers_, kernels, hg)}


def _linearize_for_synflow(model, layers_, originals, masks):
    for layer in model.layers:
        if layer_kind(layer) == "bn":
            if layer.scale:
                layer.gamma.assign(tf.abs(layer.gamma))
            if layer.center:
                layer.beta.assign(tf.abs(layer.beta))
            layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
            layer.moving_variance.assign(tf.abs(layer.moving_variance))
        else:
            for v in layer.trainable_weights:
                v.assign(tf.abs(v))
    _apply_masks_now(layers_, [np.abs(w) for w in originals], masks)


def _ones_inputs(model):
    ones = []
    for t in model.inputs:
        shape = tuple(t.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(
                f"method='synflow' runs the model on an all-ones input and needs a fixed input shape; "
                f"input {t.name!r} has shape {tuple(t.shape)}"
            )
        ones.append(tf.ones((1,) + shape, dtype=t.dtype or "float32"))
    return ones[0] if len(ones) == 1 else ones


def _synflow_grad_fn(model, kernels):
    @tf.function(reduce_retracing=True)
    def grad(x):
        with tf.GradientTape() as tape:
            out = model(x, training=False)
            r = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in tf.nest.flatten(out)])
        return r, tape.gradient(r, kernels)

    return grad


def _synflow(model, layers_, originals, masks, grad_fn=None):
    kernels = [l.kernel for l in layers_]
    _linearize_for_synflow(model, layers_, originals, masks)
    grad_fn = grad_fn or _synflow_grad_fn(model, kernels)
    r, grads = grad_fn(_ones_inputs(model))
    if not np.isfinite(float(r)):
        raise FloatingPointError(
            "SynFlow's R (the summed output on an all-ones input with |weights|) overflowed float32; "
            "the model is too deep or its weights too large for the data-free score - use method='snip'"
        )
    return {l.name: np.abs(k.numpy() * g.numpy()) for l, k, g in zip(layers_, kernels, grads)}


# --------------------------------------------------------------------------- public API


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def scores(
    model,
    method: str = "synflow",
    data=None,
    *,
    masks: dict | None = None,
    loss=None,
    batch_size: int = 128,
    max_batches: int | None = 4,
    temperature: float = 200.0,
) -> dict:
    """One-shot saliency scores of every scored kernel, higher = keep.

    Args:
        model: a built Keras model (any kind: the scores only need its variables).
        method: ``"snip"``, ``"grasp"`` or ``"synflow"``.
        data: ``(x, y)`` arrays, or a batched ``tf.data.Dataset`` of ``(x, y)``.
            Needed by ``snip`` and ``grasp``; ignored by ``synflow``.
        masks: optional ``{layer name: 0/1 array}``; masked weights are zeroed
            while scoring (used by the iterative loop in :func:`masks`).
        loss: loss for ``snip``/``grasp``; default: the compiled loss, else
            (sparse) categorical cross-entropy, on logits unless the last layer
            is a softmax.
        batch_size, max_batches: how much of ``data`` is used (gradients are
            summed over the batches); ``max_batches=None`` uses all of it.
        temperature: GraSP's logit temperature.

    Returns:
        ``{layer name: np.ndarray}``, each of the kernel's shape, in model order.

    Example::

        s = precrop.scores(zoo.small_cnn(), "grasp", data=(x[:256], y[:256]))
    """
    _check_method(method)
    layers_ = scored_layers(model)
    originals = [l.kernel.numpy() for l in layers_]
    with _restored(model), _logits_output(model, method):
        _apply_masks_now(layers_, originals, masks)
        if method == "snip":
            return _snip(model, layers_, data, loss, batch_size, max_batches)
        if method == "grasp":
            return _grasp(model, layers_, data, loss, batch_size, max_batches, temperature)
        return _synflow(model, layers_, originals, masks)


def global_top(scores_: dict, density: float, alive: dict | None = None) -> dict:
    """Keep the global top ``density`` fraction of all scores (exact count) -> boolean masks.

    ``alive`` (optional boolean masks) restricts the choice to weights still kept.

    >>> m = global_top({"a": np.array([3., 1.]), "b": np.array([2., 0.])}, 0.5)
    >>> m["a"].tolist(), m["b"].tolist()
    ([True, False], [True, False])
    """
    names = list(scores_)
    flat = [np.asarray(scores_[n], np.float64).ravel() for n in names]
    if alive:
        flat = [np.where(alive[n].ravel(), f, -np.inf) if n in alive else f for n, f in zip(names, flat)]
    allv = np.concatenate(flat)
    allv = np.where(np.isnan(allv), -np.inf, allv)
    k = int(round(density * allv.size))
    k = min(max(k, 1), allv.size)
    keep = np.zeros(allv.size, bool)
    keep[np.argpartition(-allv, k - 1)[:k]] = True
    out, start = {}, 0
    for n in names:
        size = np.size(scores_[n])
        out[n] = keep[start : start + size].reshape(np.shape(scores_[n]))
        start += size
    return out


def _check_density(density):
    if isinstance(density, bool) or not isinstance(density, (int, float, np.floating)) or not 0.0 < density <= 1.0:
        raise ValueError(f"density must be a number in (0, 1], the fraction of weights kept; got {density!r}")


def masks(
    model,
    method: str = "synflow",
    density: float = 0.2,
    data=None,
    *,
    iterations: int | None = None,
    loss=None,
    batch_size: int = 128,
    max_batches: int | None = 4,
    temperature: float = 200.0,
) -> dict:
    """Unstructured keep-masks at a global ``density`` (fraction of scored weights kept).

    The top ``density`` fraction of all scores, over all scored layers together,
    is kept. With ``iterations > 1`` (the default for ``synflow``: 100, as in
    the SynFlow paper) the pruning is iterative: round ``k`` of ``n`` re-scores
    the masked network and keeps ``density ** (k / n)`` (exponential schedule).
    ``snip`` and ``grasp`` default to one shot. The other arguments are those
    of :func:`scores`.

    Returns ``{layer name: bool array of the kernel's shape}``, in model order.

    Example::

        m = precrop.masks(model, "snip", density=0.1, data=(x, y))
        precrop.apply_masks(model, m)          # the unstructured baseline
    """
    _check_method(method)
    _check_density(density)
    if method != "synflow" and data is None:
        _batches(None, 1, None, method)  # raises the "needs data" error
    if iterations is None:
        iterations = 100 if method == "synflow" else 1
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer; got {iterations!r}")
    layers_ = scored_layers(model)
    originals = [l.kernel.numpy() for l in layers_]
    alive = None
    with _restored(model), _logits_output(model, method):
        grad_fn = _synflow_grad_fn(model, [l.kernel for l in layers_]) if method == "synflow" else None
        for k in range(1, iterations + 1):
            if method == "synflow":
                s = _synflow(model, layers_, originals, alive, grad_fn)
            else:
                _apply_masks_now(layers_, originals, alive)
                if method == "snip":
                    s = _snip(model, layers_, data, loss, batch_size, max_batches)
                else:
                    s = _grasp(model, layers_, data, loss, batch_size, max_batches, temperature)
            alive = global_top(s, density ** (k / iterations), alive)
    return alive
