"""``export``: a frozen search model -> a plain Keras model ready for int8 conversion.

What happens to each search layer:

1. Each kernel is quantized exactly as in training (every channel on its
   chosen grid, with the layer's ``weight_quantizer``), and BatchNorm is then
   folded into it and the bias (``Q(W) * g/sqrt(v+e)``,
   ``(b - m) * g/sqrt(v+e) + beta``): a per-channel factor keeps every
   channel's grid, so the stored grid is the searched one and the exported
   layer computes what the frozen model did.
2. Pruned output channels are dropped, and so are the matching input rows or
   channels of every consumer (through ReLU, pooling, Flatten, Concatenate,
   Add ...).
3. The kept channels are regrouped by precision where that saves flash (the
   storage rule of ``tflm_export.storage.layer_bytes``; ``split=`` overrides it):
   one ``Conv2D``/``Dense`` per bit-width (named ``<layer>__w<bits>``, each
   kernel on its grid), joined by a ``Concatenate``; consumers' input channels
   are permuted to match. A layer that is not split keeps one tensor whose
   channels carry their own grids, stored at its widest precision. Depthwise
   layers and layers whose channels reach a model output keep one tensor in the
   original order (a depthwise channel can only follow its input channel, and
   outputs keep their meaning); their channels carry mixed grids and the
   exporter stores the tensor at its widest precision.
4. Activation quantizers become fixed :class:`tfjpq.layers.ActivationQuantizer`
   layers whose ranges the TFLite converter uses.

The exported model's outputs equal the frozen model's (inference mode) within
float tolerance.
"""

from __future__ import annotations

import keras
import numpy as np

from tfjpq import graph, quantizers
from tfjpq.errors import UnsupportedModelError
from tfjpq.layers import ActivationChoice, ActivationQuantizer, PrecisionChoice, SearchLinear
from tfjpq.search import require_search_model

__all__ = ["folded_kernel_and_bias", "quantized_kernel_and_bias", "quantize_mixed", "SPLIT_MODES", "split_groups",
           "export"]


class _TensorState:
    """An exported tensor and how its channels map to the search model's."""

    def __init__(self, tensor, cmap, old_channels, repeat=1):
        self.tensor = tensor
        self.cmap = np.asarray(cmap, dtype=np.int64)  # old channel index of each new channel
        self.old_channels = int(old_channels)  # channels per position in the search model
        self.repeat = int(repeat)  # flattened spatial positions


def folded_kernel_and_bias(layer: SearchLinear, kernel=None):
    """Kernel and bias of a search layer with its BatchNorm folded in (float32).

    ``kernel`` replaces the layer's float kernel (export passes the quantized one).
    """
    w = (layer.kernel.numpy() if kernel is None else np.asarray(kernel)).astype(np.float64)
    c = layer.out_channels
    b = layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros(c)
    bn = layer.bn
    if bn is not None:
        gamma = bn.gamma.numpy().astype(np.float64) if bn.scale else np.ones(c)
        beta = bn.beta.numpy().astype(np.float64) if bn.center else np.zeros(c)
        mean = bn.moving_mean.numpy().astype(np.float64)
        var = bn.moving_variance.numpy().astype(np.float64)
        s = gamma / np.sqrt(var + bn.epsilon)
        shape = [1] * w.ndim
        shape[layer.channel_axis] = c
        w = w * s.reshape(shape)
        b = (b - mean) * s + beta
    return w.astype(np.float32), b.astype(np.float32)


def quantize_mixed(w, bits_per_channel, channel_axis, method="minmax"):
    """Quantize each output channel of ``w`` at its own bit-width (scale rule ``method``)."""
    w = np.moveaxis(np.asarray(w, np.float32), channel_axis, -1).copy()
    for b in np.unique(bits_per_channel):
        idx = np.where(bits_per_channel == b)[0]
        w[..., idx] = quantizers.quantize_weights_np(w[..., idx], int(b), method=method)
    return np.moveaxis(w, -1, channel_axis)


def quantized_kernel_and_bias(layer: SearchLinear, bits_per_channel):
    """The kernel as the frozen layer computes with it, on each channel's grid, and the bias, BN folded in."""
    q = quantize_mixed(layer.kernel.numpy(), np.asarray(bits_per_channel), layer.channel_axis,
                       getattr(layer, "weight_quantizer", "minmax"))
    return folded_kernel_and_bias(layer, kernel=q)


def _plain_config(layer: SearchLinear, name, out_channels, activation=None):
    cfg = dict(layer.layer_config)
    cfg["name"] = name
    cfg["use_bias"] = True
    if activation is not None:
        cfg["activation"] = activation
    if layer.kind == "conv":
        cfg["filters"] = int(out_channels)
    elif layer.kind == "dense":
        cfg["units"] = int(out_channels)
    for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint",
                "bias_constraint"):
        cfg.pop(key, None)
    return cfg


SPLIT_MODES = ("auto", "always", "never")


def split_groups(model, split: str = "auto") -> dict:
    """{precision group: True if export splits its layers into one layer per precision}.

    Layers of one group (the sides of an Add) share their channel order, so the
    group decides as a whole: with ``"auto"``, it splits when the summed bytes of
    its layers (``tflm_export.storage.layer_bytes``) are smaller split than as one
    tensor each.
    """
    from tflm_export import storage

    from tfjpq.search import live_input_mask

    choices = {c.name: c for c in model.precision_choices()}
    selected = {n: c.selected_bits() for n, c in choices.items()}
    members = {}
    for layer in model.search_layers():
        members.setdefault(layer.group, []).append(layer)
    decision = {}
    for group, layers in members.items():
        kept = selected[group][selected[group] != 0]
        if not choices[group].regroup or len(np.unique(kept)) < 2 or split == "never":
            decision[group] = False
            continue
        if split == "always":
            decision[group] = True
            continue
        one = parts = 0
        for layer in layers:
            if layer.kind == "depthwise":
                continue
            per_channel = layer.kernel_taps() * int(live_input_mask(layer, selected).sum())
            one += storage.layer_bytes(graph.tflite_op(layer.kind), per_channel, kept, split=False)[1]
            parts += storage.layer_bytes(graph.tflite_op(layer.kind), per_channel, kept, split=True)[1]
        decision[group] = parts < one
    return decision


def _export_linear(layer: SearchLinear, sel_bits, regroup, x: _TensorState, activation, record: dict) -> _TensorState:
    """The plain layer(s) for one search layer; ``record`` gets each new layer's per-channel bits."""
    w, b = quantized_kernel_and_bias(layer, sel_bits)
    if layer.kind == "depthwise":
        order = x.cmap
        w = w[:, :, order, :]
        new = keras.layers.DepthwiseConv2D.from_config(_plain_config(layer, layer.name, len(order), activation))
        y = new(x.tensor)
        new.set_weights([w, b[order]])
        record[new.name] = tuple(int(v) for v in sel_bits[order])
        return _TensorState(y, order, layer.out_channels)

    if layer.kind == "dense":
        rows = (np.arange(x.repeat)[:, None] * x.old_channels + x.cmap[None, :]).reshape(-1)
        w = w[rows, :]
    else:
        w = w[:, :, x.cmap, :]
    kept_bits = sorted(int(v) for v in np.unique(sel_bits) if v != 0)
    if regroup and len(kept_bits) > 1:
        parts, order = [], []
        for bits in kept_bits:
            idx = np.where(sel_bits == bits)[0]
            config = _plain_config(layer, f"{layer.name}__w{bits}", len(idx), activation)
            sub = graph.keras_class(layer.kind).from_config(config)
            parts.append(sub(x.tensor))
            sub.set_weights([w[..., idx], b[idx]])
            record[sub.name] = (bits,) * len(idx)
            order.extend(idx.tolist())
        y = keras.layers.Concatenate(axis=-1, name=f"{layer.name}__concat")(parts)
        return _TensorState(y, order, layer.out_channels)
    order = np.where(sel_bits != 0)[0]
    new = graph.keras_class(layer.kind).from_config(_plain_config(layer, layer.name, len(order), activation))
    y = new(x.tensor)
    new.set_weights([w[..., order], b[order]])
    record[new.name] = tuple(int(v) for v in sel_bits[order])
    return _TensorState(y, order, layer.out_channels)


def export(model, name=None, split="auto") -> keras.Model:
    """A plain Keras model: pruned channels removed, BN folded, weights on their chosen grids.

    Takes the model from :func:`tfjpq.freeze` (a search model is frozen first at
    its current argmax choices).

    ``split`` decides when a layer with several precisions becomes one layer per
    precision: ``"auto"`` where that saves flash by the exporter's storage rules
    (``tflm_export.storage.layer_bytes``: the parts' extra operators cost about
    200 bytes each), ``"always"``, or ``"never"`` (one tensor stored at its
    widest precision).

    The result records each layer's per-output-channel bit-widths in
    ``deploy.channel_bits`` (``{layer name: (bits, ...)}``), where
    ``tflm_export.convert`` and ``tfjpq.summary`` read them instead of
    detecting grids from the values. The record is not saved with the model:
    a reloaded model is a plain model, whose grids are detected again.

    Example::

        deploy = tfjpq.export(tfjpq.freeze(search))
        deploy.channel_bits["conv1"]      # (4, 4, 8, ...)
        deploy.save("deploy.keras")
    """
    require_search_model(model, "tfjpq.export")
    if split not in SPLIT_MODES:
        raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
    if any(c.mode != "fixed" for c in model.precision_choices()):
        from tfjpq.search import freeze

        model = freeze(model)
    choices = {c.name: c for c in model.precision_choices()}
    selected = {n: c.selected_bits() for n, c in choices.items()}
    splits = split_groups(model, split)

    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name) for t in model.inputs]
    states = {}
    for old, new in zip(model.inputs, inputs):
        c = int(old.shape[-1])
        states[id(old)] = _TensorState(new, np.arange(c), c)

    channel_bits = {}  # exported layer name -> per-output-channel bits, recorded on the result
    nodes = graph.topological_nodes(model)
    fused = _fusable_activations(nodes)
    fused_ids = {id(n) for n in fused.values()}
    for node in nodes:
        layer = node.operation
        out = node.outputs[0]
        if isinstance(layer, PrecisionChoice):
            continue
        ins = [states[id(t)] for t in node.input_tensors if id(t) in states]
        if isinstance(layer, SearchLinear):
            choice = choices[layer.group]
            act_node = fused.get(layer.name)
            activation = _activation_of(act_node.operation) if act_node is not None else None
            st = _export_linear(layer, selected[layer.group], splits[layer.group], ins[0], activation, channel_bits)
            states[id(out)] = st
            if act_node is not None:
                states[id(act_node.outputs[0])] = st
            continue
        if id(node) in fused_ids:
            continue  # folded into the layer before it
        if isinstance(layer, ActivationChoice):
            q = ActivationQuantizer(bits=layer.selected_bits(), clip=float(layer.clip.numpy()), signed=layer.signed,
                                    name=layer.name)
            x = ins[0]
            states[id(out)] = _TensorState(q(x.tensor), x.cmap, x.old_channels, x.repeat)
            continue
        states[id(out)] = _export_other(layer, node, ins)

    outputs = []
    for t in model.outputs:
        st = states[id(t)]
        if not np.array_equal(st.cmap, np.arange(st.old_channels)):
            raise AssertionError(f"output {t.name} lost its channel order in export")  # groups reaching outputs never reorder
        outputs.append(st.tensor)
    deploy = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                         name=name or model.name.replace("_search", "") + "_deploy")
    from tflm_export.packing import CHANNEL_BITS_ATTR

    setattr(deploy, CHANNEL_BITS_ATTR, channel_bits)
    return deploy


def _activation_of(layer):
    """'relu' or 'relu6' for a plain ReLU-type layer, else None."""
    if isinstance(layer, keras.layers.ReLU):
        cfg = layer.get_config()
        if float(cfg.get("negative_slope", 0.0)) != 0.0 or float(cfg.get("threshold", 0.0)) != 0.0:
            return None
        mv = cfg.get("max_value")
        return "relu" if mv is None else ("relu6" if float(mv) == 6.0 else None)
    if isinstance(layer, keras.layers.Activation):
        name = graph.activation_name(layer.get_config().get("activation"))
        return name if name in ("relu", "relu6") else None
    return None


def _fusable_activations(nodes):
    """{search layer name: the ReLU node right after it}, fused at export.

    With channels regrouped, a Concatenate would otherwise stand between the
    convolution and its ReLU, the converter could not fuse them, and every
    output would be rounded twice (to the conv's range, then to the ReLU's).
    """
    consumers = {}
    for node in nodes:
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)
    fused = {}
    for node in nodes:
        layer = node.operation
        if not isinstance(layer, SearchLinear) or graph.activation_name(layer.layer_config.get("activation")) != "linear":
            continue
        users = consumers.get(id(node.outputs[0]), [])
        if len(users) == 1 and _activation_of(users[0].operation) is not None:
            fused[layer.name] = users[0]
    return fused


def _export_other(layer, node, ins):
    kind = graph.layer_kind(layer)
    cfg = layer.get_config()
    x = ins[0]
    if kind == "concat":
        cmaps, offset = [], 0
        for st in ins:
            cmaps.append(st.cmap + offset)
            offset += st.old_channels
        y = layer.__class__.from_config(cfg)([st.tensor for st in ins])
        return _TensorState(y, np.concatenate(cmaps), offset)
    if kind == "add":
        for st in ins[1:]:
            if not np.array_equal(st.cmap, x.cmap):
                raise AssertionError(f"the inputs of {layer.name} disagree on their channels in export")
        y = layer.__class__.from_config(cfg)([st.tensor for st in ins])
        return _TensorState(y, x.cmap, x.old_channels, x.repeat)
    if kind in ("flatten", "reshape"):
        shape = node.input_tensors[0].shape
        spatial = int(np.prod([int(d) for d in shape[1:-1]])) if len(shape) > 2 else 1
        if kind == "reshape":
            cfg["target_shape"] = (int(spatial * x.repeat * len(x.cmap)),)
        y = layer.__class__.from_config(cfg)(x.tensor)
        return _TensorState(y, x.cmap, x.old_channels, x.repeat * spatial)
    clone = layer.__class__.from_config(cfg)
    y = clone(x.tensor)
    weights = layer.get_weights()
    if weights:
        if kind != "bn":
            raise UnsupportedModelError(f"layer {layer.name!r} ({type(layer).__name__}) has weights tfjpq cannot export")
        weights = [w[x.cmap] for w in weights]
        clone.set_weights(weights)
    return _TensorState(y, x.cmap, x.old_channels, x.repeat)
