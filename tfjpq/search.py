"""``wrap`` (float model -> search model), the search model itself, and ``freeze``."""

from __future__ import annotations

import copy

import keras
import numpy as np
import tensorflow as tf

from tfjpq import cost as cost_lib
from tfjpq import graph, quantizers
from tfjpq.errors import NotASearchModelError, UnsupportedModelError
from tfjpq.layers import SEARCH_LAYERS, ActivationChoice, PrecisionChoice, SearchLinear, check_mode

_register = keras.saving.register_keras_serializable(package="tfjpq")


@_register
class SearchModel(keras.Model):
    """A functional model with precision choices; trains with plain ``compile``/``fit``.

    The training loss is ``task loss + strength * cost``. ``compile`` also takes
    ``arch_optimizer``: an optimizer for the precision logits alone (the paper
    uses SGD 1e-2 with momentum 0.9); without it, the main optimizer trains them.
    Metrics ``cost``, ``kept`` (kept output channels) and ``bits_<b>`` (channels
    at each width) appear in the fit History and in TensorBoard.
    """

    def __init__(self, *args, cost="size", strength=1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.cost_model = cost_lib.get(cost)
        self._strength = tf.Variable(float(strength), trainable=False, dtype=tf.float32, name="strength")
        self.arch_optimizer = None
        self._cost_metric = keras.metrics.Mean(name="cost")
        self._kept_metric = keras.metrics.Mean(name="kept")
        bits = sorted({b for c in self.precision_choices() for b in c.bits})
        self._bits_metrics = {b: keras.metrics.Mean(name=f"bits_{b}") for b in bits}
        self._bits_metric_list = list(self._bits_metrics.values())

    # -- structure --------------------------------------------------------
    def search_layers(self):
        return [layer for layer in self.layers if isinstance(layer, SearchLinear)]

    def precision_choices(self):
        return [layer for layer in self.layers if isinstance(layer, PrecisionChoice)]

    def activation_choices(self):
        return [layer for layer in self.layers if isinstance(layer, ActivationChoice)]

    def arch_variables(self):
        """The precision logits (alpha of every group, beta of every activation choice)."""
        out = [c.alpha for c in self.precision_choices()]
        out += [a.beta for a in self.activation_choices()]
        return [v for v in out if v.trainable]

    @property
    def strength(self) -> float:
        return float(self._strength.numpy())

    @strength.setter
    def strength(self, value):
        self._strength.assign(float(value))

    # -- cost ---------------------------------------------------------------
    def cost(self, training=False):
        """The current soft cost (a scalar tensor, in ``self.cost_model.unit``)."""
        return self.cost_model.total(cost_lib.layer_terms(self, training))

    def compile(self, *args, arch_optimizer=None, **kwargs):
        super().compile(*args, **kwargs)
        self.arch_optimizer = keras.optimizers.get(arch_optimizer) if arch_optimizer is not None else None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if not training:
            return loss
        c = self.cost(training=True)
        self._cost_metric.update_state(c)
        counts = {b: 0.0 for b in self._bits_metrics}
        for choice in self.precision_choices():
            sel = tf.argmax(choice.alpha, axis=0)
            for i, b in enumerate(choice.bits):
                counts[b] = counts[b] + tf.reduce_sum(tf.cast(tf.equal(sel, i), tf.float32))
        for b, n in counts.items():
            self._bits_metrics[b].update_state(n)
        self._kept_metric.update_state(tf.add_n([n for b, n in counts.items() if b != 0]))
        return loss + self._strength * c

    def train_step(self, data):
        if self.arch_optimizer is None:
            return super().train_step(data)
        from keras.src.trainers.data_adapters import data_adapter_utils

        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            self._loss_tracker.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
        arch = self.arch_variables()
        arch_ids = {id(v) for v in arch}
        weights = [v for v in self.trainable_variables if id(v) not in arch_ids]
        grads = tape.gradient(loss, weights + arch)
        self.optimizer.apply_gradients(zip(grads[: len(weights)], weights))
        if arch:
            self.arch_optimizer.apply_gradients(zip(grads[len(weights):], arch))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        cfg = super().get_config()
        cfg["cost"] = cost_lib.serialize(self.cost_model)
        cfg["strength"] = self.strength
        return cfg


def _bits_tuple(bits, what):
    if isinstance(bits, (int, np.integer)):
        bits = (int(bits),)
    try:
        bits = tuple(sorted(int(b) for b in bits))
    except TypeError:
        raise ValueError(f"{what} must be a tuple of ints, got {bits!r}") from None
    if not bits or len(set(bits)) != len(bits):
        raise ValueError(f"{what} must be a non-empty tuple of distinct ints, got {bits!r}")
    return bits


def wrap(model, weight_bits=(0, 2, 4, 8), act_bits=(8,), cost="size", strength=1e-5, mode="soft",
         temperature=1.0, act_clip=6.0) -> SearchModel:
    """Turn a Keras 3 model into a joint pruning + channel-wise mixed-precision search model.

    Args:
      model: a Sequential or functional Keras 3 model (trained or fresh); its
        weights are copied, the model itself is left untouched.
      weight_bits: per-output-channel choices; 0 means pruned.
      act_bits: per-tensor activation precision choices (PACT).
      cost: "size" (bytes), "bitops", "mpic", "tflm", or a ``tfjpq.cost.CostModel``.
      strength: the weight of the cost in the loss (per cost unit).
      mode: "soft", "hard" (straight-through argmax) or "gumbel".
      temperature: initial softmax temperature (see ``callbacks.TemperatureDecay``).
      act_clip: initial PACT clip.

    Example::

        search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8), cost="size", strength=1e-5)
        search.compile(optimizer="adam", loss=loss, metrics=["accuracy"],
                       arch_optimizer=keras.optimizers.SGD(1e-2, momentum=0.9))
        search.fit(x, y, epochs=10, callbacks=[tfjpq.callbacks.TemperatureDecay()])
    """
    weight_bits = _bits_tuple(weight_bits, "weight_bits")
    act_bits = _bits_tuple(act_bits, "act_bits")
    for b in weight_bits:
        quantizers.check_weight_bits(b)
    for b in act_bits:
        quantizers.check_act_bits(b)
    if weight_bits == (0,):
        raise ValueError("weight_bits=(0,) would prune everything; add at least one non-zero bit-width")
    check_mode(mode)
    if mode == "fixed":
        raise ValueError("mode='fixed' is what tfjpq.freeze sets; wrap with 'soft', 'hard' or 'gumbel'")
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    cost_model = cost_lib.get(cost)
    cost_model.check(weight_bits, act_bits)

    model = graph.check_model(model)
    info = graph.analyze(model)
    if not info.linears:
        raise UnsupportedModelError(f"model {model.name!r} has no Conv2D, DepthwiseConv2D or Dense layer to search")

    new_inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name) for t in model.inputs]
    tensors = {id(old): new for old, new in zip(model.inputs, new_inputs)}

    group_names, group_bits, thetas = {}, {}, {}
    for gid, group in info.groups.items():
        name = f"{group.members[0]}_wbits"
        bits = weight_bits if group.prunable else tuple(b for b in weight_bits if b != 0)
        note = ""
        if not group.prunable and 0 in weight_bits:
            note = "never pruned: " + "; ".join(dict.fromkeys(group.reasons))
        choice = PrecisionChoice(group.channels, bits=bits, temperature=temperature, mode=mode,
                                 regroup=group.regroup, note=note, name=name)
        group_names[gid] = name
        group_bits[gid] = bits
        thetas[gid] = choice(new_inputs[0])

    # Tensors read by a linear layer get one activation quantizer, shared by all their consumers.
    quantized = {li.input_tensor_id for li in info.linears.values() if not li.input_raw}
    act_names = {}

    def finish(old_tensor, new_tensor, producer_name):
        tid = id(old_tensor)
        if tid in quantized:
            name = f"{producer_name}_aq"
            act_names[tid] = name
            new_tensor = ActivationChoice(bits=act_bits, signed=not info.nonneg[tid], clip=act_clip,
                                          temperature=temperature, mode=mode, name=name)(new_tensor)
        tensors[tid] = new_tensor

    for t in model.inputs:
        finish(t, tensors[id(t)], t.name)

    for node in info.nodes:
        layer = node.operation
        out = node.outputs[0]
        if layer.name in info.linears:
            li = info.linears[layer.name]
            cls = SEARCH_LAYERS[li.kind]
            layout = [[group_names[g] if g is not None else None, c] for g, c in li.input_layout.segments]
            search_layer = cls(
                layer_config=layer.get_config(), weight_bits=group_bits[li.group],
                bn_config=li.bn.get_config() if li.bn is not None else None, input_layout=layout,
                input_repeat=li.input_layout.repeat, act_quantizer=act_names.get(li.input_tensor_id),
                group=group_names[li.group], name=layer.name,
            )
            y = search_layer([tensors[li.input_tensor_id], thetas[li.group]])
            weights = layer.get_weights()
            search_layer.kernel.assign(weights[0])
            if search_layer.use_bias:
                search_layer.bias.assign(weights[1])
            if li.bn is not None:
                search_layer.bn.set_weights(li.bn.get_weights())
            finish(out if li.bn is None else _bn_output(info, li), y, layer.name)
            continue
        if layer.name in info.absorbed_bn:
            continue
        clone = layer.__class__.from_config(layer.get_config())
        args, kwargs = node.arguments.fill_in(tensors)
        y = clone(*args, **kwargs)
        if layer.weights:
            clone.set_weights(layer.get_weights())
        finish(out, y, layer.name)

    outputs = [tensors[id(t)] for t in model.outputs]
    return SearchModel(inputs=new_inputs if len(new_inputs) > 1 else new_inputs[0],
                       outputs=outputs if len(outputs) > 1 else outputs[0],
                       cost=cost_model, strength=strength, name=f"{model.name}_search")


def _bn_output(info, li):
    for node in info.nodes:
        if node.operation is li.bn:
            return node.outputs[0]
    raise AssertionError("absorbed BatchNormalization not found")


def require_search_model(model, what):
    if not isinstance(model, SearchModel):
        raise NotASearchModelError(
            f"{what} needs a model made by tfjpq.wrap (or tfjpq.freeze), got {type(model).__name__} "
            f"{getattr(model, 'name', '')!r}"
        )


def freeze(search: SearchModel) -> SearchModel:
    """Fix every precision choice at its argmax, for fine-tuning (weights keep training).

    A group whose channels would all be pruned keeps its most likely channel at
    its best non-zero width, so no layer disappears entirely.

    Example::

        tuned = tfjpq.freeze(search)
        tuned.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
        tuned.fit(x, y, epochs=3)
    """
    require_search_model(search, "tfjpq.freeze")
    config = copy.deepcopy(search.get_config())
    for layer_cfg in config["layers"]:
        if layer_cfg["class_name"] in ("PrecisionChoice", "ActivationChoice"):
            layer_cfg["config"]["mode"] = "fixed"
    frozen = SearchModel.from_config(config)
    src = {v.path: v for v in search.variables}
    for v in frozen.variables:
        if v.path in src:
            v.assign(src[v.path].numpy())
    for choice in frozen.precision_choices():
        alpha = choice.alpha.numpy()
        sel = np.argmax(alpha, axis=0)
        if choice.prunable and np.all(sel == choice.bits.index(0)):
            nz = [i for i, b in enumerate(choice.bits) if b != 0]
            sub = alpha[nz]
            c = int(np.argmax(sub.max(axis=0)))
            alpha[nz[int(np.argmax(sub[:, c]))], c] = alpha[:, c].max() + 1.0
            choice.alpha.assign(alpha)
    _zero_dead_inputs(frozen)
    return frozen


def live_input_mask(layer, selected) -> np.ndarray:
    """Boolean mask over a search layer's input features: False where the producer pruned the channel."""
    parts = []
    for gname, channels in layer.input_layout:
        parts.append(selected[gname] != 0 if gname is not None else np.ones(channels, bool))
    return np.tile(np.concatenate(parts), layer.input_repeat)


def _zero_dead_inputs(frozen):
    """Zero the kernel rows that read pruned channels.

    They only ever multiply zeros, so outputs do not change; but the per-channel
    quantization scale must not see them, or the grid would differ from the
    exported layer's, whose pruned rows are gone.
    """
    selected = {c.name: c.selected_bits() for c in frozen.precision_choices()}
    for layer in frozen.search_layers():
        if layer.kind == "depthwise":
            continue
        live = live_input_mask(layer, selected)
        w = layer.kernel.numpy()
        w[..., ~live, :] = 0.0
        layer.kernel.assign(w)
