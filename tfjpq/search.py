"""``wrap`` (float model -> search model), the search model itself, and ``freeze``."""

from __future__ import annotations

import copy

import keras
import numpy as np
import tensorflow as tf

from keras.src.losses import loss as loss_module

from tfjpq import budget, graph, quantizers, search_init
from tfjpq import cost as cost_lib
from tfjpq.errors import NotASearchModelError, UnsupportedModelError
from tfjpq.layers import SEARCH_LAYERS, ActivationChoice, PrecisionChoice, SearchLinear, check_mode, check_prune_gate

__all__ = [
    "DEFAULT_STRENGTH", "DEFAULT_ARCH_LR", "DEFAULT_WEIGHT_QUANTIZER", "DEFAULT_PRUNE_GATE", "SearchModel", "wrap",
    "require_search_model", "freeze", "live_input_mask",
]

_register = keras.saving.register_keras_serializable(package="tfjpq")


DEFAULT_STRENGTH = 0.05
"""Default weight of the normalised cost (cost / all-8-bit cost) in the loss; see docs/search.md."""
DEFAULT_WEIGHT_QUANTIZER = "mse"
"""The weight scale rule ``wrap`` gives the search layers (``tfjpq.quantizers.WEIGHT_QUANTIZERS``)."""
DEFAULT_PRUNE_GATE = "ste"
"""How a channel's pruning probability masks its output during the search (``tfjpq.layers.PRUNE_GATES``)."""
DEFAULT_ARCH_LR = 0.02
"""Learning rate of the Adam optimizer the precision logits get when ``compile`` is given no ``arch_optimizer``."""


COLD_TEMPERATURE = 0.5
DEFAULT_TEMPERATURE = "auto"
"""The initial softmax temperature of ``wrap``'s choices when none is given.

``"auto"``: :data:`COLD_TEMPERATURE` (0.5) where the cost model prices layer
splits (``CostModel.prices_splits``: ``"tflm"``), else 1.0 (the paper's). At
1.0 the flat start (logits ``p / max(P)``) puts 41 % of a channel's weight on
8 bits, so the one search epoch trains the weights in a blend of mostly
narrower widths; at 0.5, 58 %, and each of Adam's steps moves the choice
twice as far. On ResNet-8 with the ``"tflm"`` cost (3 seeds) that gave
97.5 % against 96.4 % at 40 % of the all-8-bit file and 93.6 % against
92.9 % at half of the all-2-bit one, the other budgets within 0.4 points;
0.25 gave 97.4 % and 89.9 % (benchmarks/RESULTS.md). With the other costs it
was not measured, so they keep 1.0."""


PRUNE_THEN_WIDTH = "auto"
"""Whether ``wrap`` makes its prunable groups decide "prune or keep" apart from "which width".

True: a channel's 0-bit logit alone sets its prune probability, and its other
logits compete only among the widths of a kept channel
(``tfjpq.layers.PrecisionChoice(conditional=True)``); after each step of the
logits, the training step shifts the width logits back to their logsumexp of
before, so Adam's steps on them do not move the prune probability. With the
plain softmax, a cost that prunes a channel for many more bytes than a
narrower width saves lowers the expected cost below every kept width's: every
kept width's logit gets a gradient of one sign, Adam lowers them all at one
speed, and a kept channel stays at its initial preference, the widest width.
``"auto"``: True where the cost model prices layer splits
(``CostModel.prices_splits``: ``"tflm"``, whose bias, scale and graph bytes go
with a pruned channel), else False. See docs/search.md."""


def _kept_levels(choices):
    return [(c, c.kept_level()) for c in choices if c.conditional and c.mode != "fixed"]


@_register
class SearchModel(keras.Model):
    """A functional model with precision choices; trains with plain ``compile``/``fit``.

    The training loss is ``task loss + strength * cost / reference_cost``, where
    ``reference_cost`` is the cost of the same model unpruned at 8 bits
    (weights and activations): ``strength`` is dimensionless, and means the
    same on a small and a large model. With a ``target`` (a budget in the
    cost's unit), ``strength`` is a Lagrange multiplier adapted in every
    training step so that the hard cost (:meth:`hard_cost`) meets the target
    (see :mod:`tfjpq.budget`).

    ``compile`` also takes ``arch_optimizer``: the optimizer of the precision
    logits alone. Without one they get ``Adam(DEFAULT_ARCH_LR)`` (0.02): the
    weights' optimizer (Adam 1e-3, or the paper's SGD 1e-2) barely moves them
    in a short search. ``arch_optimizer="shared"`` trains them with the main
    optimizer. ``teacher=`` (a float Keras model with the same outputs) adds
    knowledge distillation: the task loss becomes ``(1 - distill) * task +
    distill * T^2 * KL(teacher/T || student/T)``.

    Metrics ``cost`` (soft cost, in ``cost_model.unit``), ``hard_cost``,
    ``strength``, ``kept`` (kept output channels) and ``bits_<b>`` (channels at
    each width) appear in the fit History and in TensorBoard.

    Example::

        search = tfjpq.wrap(model, target=20_000)          # bytes of weights
        search.compile(optimizer="adam", loss=loss)        # logits get Adam(0.02)
        search.fit(x, y, epochs=6)
        search.hard_cost(), search.strength, search.target
    """

    def __init__(self, *args, cost="size", strength=DEFAULT_STRENGTH, target=None,
                 tolerance=budget.DEFAULT_TOLERANCE, **kwargs):
        super().__init__(*args, **kwargs)
        self._cost_model = cost_lib.get(cost)
        self.tolerance = float(tolerance)
        self._target = None if target is None else float(target)
        self._strength = self.add_weight(name="strength", shape=(), initializer="zeros", trainable=False)
        self._strength.assign(float(strength))
        self._multiplier = self.add_weight(name="multiplier", shape=(), initializer="zeros", trainable=False)
        self._multiplier.assign(float(strength))
        self._target_var = self.add_weight(name="target", shape=(), initializer="zeros", trainable=False)
        self._target_var.assign(self._target or 0.0)
        self._hard_cost_var = self.add_weight(name="hard_cost", shape=(), initializer="zeros", trainable=False)
        # the budget ramp of target mode (tfjpq.budget.start_ramp): start cost, steps left, ramp length
        self._ramp_from = self.add_weight(name="ramp_from", shape=(), initializer="zeros", trainable=False)
        self._ramp_left = self.add_weight(name="ramp_left", shape=(), initializer="zeros", trainable=False)
        self._ramp_total = self.add_weight(name="ramp_total", shape=(), initializer="zeros", trainable=False)
        # bytes of the converted file minus the modelled hard cost, where the cost model can measure
        # (tfjpq.budget.measure_offset); the controller steers on hard cost + offset
        self._measured_offset = self.add_weight(name="measured_offset", shape=(), initializer="zeros",
                                                trainable=False)
        self._reference = self.add_weight(name="cost_reference", shape=(), initializer="ones", trainable=False)
        self._reference.assign(cost_lib.reference_cost(self, self._cost_model))
        self.arch_optimizer = None
        object.__setattr__(self, "teacher", None)
        self.distill, self.distill_temperature = 0.0, 1.0
        self._cost_metric = keras.metrics.Mean(name="cost")
        self._hard_metric = keras.metrics.Mean(name="hard_cost")
        self._strength_metric = keras.metrics.Mean(name="strength")
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
        """Weight of the normalised cost in the loss (with a target: the current multiplier)."""
        return float(self._strength.numpy())

    @strength.setter
    def strength(self, value):
        self._strength.assign(float(value))
        if self._target is None:  # a fixed strength: the multiplier keeps it (what StrengthWarmup ramps up to)
            self._multiplier.assign(float(value))

    @property
    def target(self):
        """The budget in ``cost_model.unit``, or None (fixed strength). Settable; checked like ``wrap``'s."""
        return self._target

    @target.setter
    def target(self, value):
        if value is not None:
            value = budget.check_target(self, value, self.tolerance)
        self._target = value
        self._target_var.assign(value or 0.0)
        self._ramp_left.assign(0.0)  # a new budget: the next fit ramps to it afresh
        self._ramp_total.assign(0.0)
        self.train_function = None  # the controller is part of the compiled step

    @property
    def cost_model(self):
        """The :class:`tfjpq.cost.CostModel` of the search; assigning one also re-prices the reference."""
        return self._cost_model

    @cost_model.setter
    def cost_model(self, value):
        self._cost_model = cost_lib.get(value)
        if hasattr(self, "_reference"):
            self._reference.assign(cost_lib.reference_cost(self, self._cost_model))
        self.train_function = None

    @property
    def reference_cost(self) -> float:
        """Cost of the unpruned all-8-bit model: what the loss divides the cost by."""
        return float(self._reference.numpy())

    # -- cost ---------------------------------------------------------------
    def cost(self, training=False):
        """The current soft cost (a scalar tensor, in ``self.cost_model.unit``)."""
        return self.cost_model.total(cost_lib.layer_terms(self, training))

    def hard_cost(self):
        """The cost of the choices :func:`tfjpq.freeze` keeps now (argmax), in ``self.cost_model.unit``.

        Example::

            float(search.hard_cost())     # what the frozen model will cost
        """
        return self.cost_model.total(cost_lib.layer_terms(self, hard=True))

    def fit(self, *args, callbacks=None, **kwargs):
        """``keras.Model.fit``; in target mode its first call also starts the budget ramp (:func:`budget.start_ramp`).

        With a cost that can measure the deployed file (``cost="tflm"``), the file
        of a search is also converted once when the ramp ends and after every
        epoch, and the controller steers the modelled cost plus the measured
        difference (:func:`budget.measure_offset`). A frozen model's ``fit``
        converts nothing, and prices its (constant) cost once, before the first step.
        """
        if not self.arch_variables():  # frozen (or one width everywhere): the cost the step reports is this
            self._hard_cost_var.assign(float(self.hard_cost()))
        return super().fit(*args, callbacks=list(callbacks or []) + [_BudgetCallback()], **kwargs)

    @property
    def budget_goal(self) -> float:
        """The budget the controller steers to now: the target, or during the ramp the point on its way there."""
        if self._target is None:
            return float("nan")
        return float(budget.ramp_target(self._target_var, self._ramp_from, self._ramp_left, self._ramp_total))

    def compile(self, *args, arch_optimizer=None, teacher=None, distill=0.5, distill_temperature=2.0, **kwargs):
        """``keras.Model.compile`` plus the logits' optimizer and optional distillation (see the class doc)."""
        super().compile(*args, **kwargs)
        with self.distribute_strategy.scope():
            if arch_optimizer is None:
                arch_optimizer = keras.optimizers.Adam(DEFAULT_ARCH_LR)
            self.arch_optimizer = None if arch_optimizer == "shared" else keras.optimizers.get(arch_optimizer)
            self._build_optimizers()
        if teacher is not None and not 0.0 <= distill <= 1.0:
            raise ValueError(f"distill must be in [0, 1], got {distill}")
        # untracked: the teacher's weights must not join this model's variables (optimizer, saving)
        object.__setattr__(self, "teacher", teacher)
        self.distill, self.distill_temperature = float(distill), float(distill_temperature)
        if teacher is not None:
            self._teacher_probs = _outputs_probabilities(teacher)
            self._student_probs = _outputs_probabilities(self)

    def _weight_variables(self):
        """The trainable variables the main optimizer updates (all of them with ``arch_optimizer="shared"``)."""
        if self.arch_optimizer is None:
            return list(self.trainable_variables)
        arch_ids = {id(v) for v in self.arch_variables()}
        return [v for v in self.trainable_variables if id(v) not in arch_ids]

    def _build_optimizers(self):
        """Create the optimizers' slots now, each on the variables it updates.

        Otherwise the logits' optimizer would be built inside the first
        (distributed) train step, which ``tf.distribute`` cannot do, and
        ``keras.callbacks.BackupAndRestore`` would build the main optimizer on
        every trainable variable, logits included, and then skip restoring both
        optimizers' states (their variable counts would not match the backup).
        """
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self._weight_variables())
        arch = self.arch_variables()
        if self.arch_optimizer is not None and arch and not self.arch_optimizer.built:
            self.arch_optimizer.build(arch)

    def _distill_loss(self, x, y_pred):
        t = self.distill_temperature

        def log_p(y, probs):
            y = tf.cast(y, tf.float32)
            logits = tf.math.log(tf.maximum(y, 1e-8)) if probs else y
            return tf.nn.log_softmax(logits / t, axis=-1)

        teacher_logp = tf.stop_gradient(log_p(self.teacher(x, training=False), self._teacher_probs))
        student_logp = log_p(y_pred, self._student_probs)
        kl = tf.reduce_sum(tf.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1)
        return t * t * tf.reduce_mean(kl)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if not training:
            return loss
        # Under tf.distribute, Keras divides the task loss by the number of replicas (the gradients are summed
        # over them); the terms added here get the same scale. On one device it does nothing.
        scale = loss_module.scale_loss_for_distribution
        if self.teacher is not None and self.distill > 0:
            loss = (1.0 - self.distill) * loss + scale(self.distill * self._distill_loss(x, y_pred))
        searching = bool(self.arch_variables())
        if searching:
            c = self.cost(training=True)
            hard = tf.stop_gradient(self.hard_cost())
            self._hard_cost_var.assign(hard)
        else:  # fixed choices: a constant, priced once per fit (see fit), not traced into every step
            c = hard = tf.convert_to_tensor(self._hard_cost_var)
        if self._target is not None and searching:
            goal = budget.ramp_target(self._target_var, self._ramp_from, self._ramp_left, self._ramp_total)
            budget.controller_update(self._multiplier, self._strength, hard + self._measured_offset, goal)
            self._ramp_left.assign(tf.maximum(self._ramp_left - 1.0, 0.0))
        strength = tf.stop_gradient(tf.convert_to_tensor(self._strength))
        self._cost_metric.update_state(c)
        self._hard_metric.update_state(hard)
        self._strength_metric.update_state(strength)
        counts = {b: 0.0 for b in self._bits_metrics}
        for choice in self.precision_choices():
            sel = tf.argmax(choice.alpha, axis=0)
            for i, b in enumerate(choice.bits):
                counts[b] = counts[b] + tf.reduce_sum(tf.cast(tf.equal(sel, i), tf.float32))
        for b, n in counts.items():
            self._bits_metrics[b].update_state(n)
        self._kept_metric.update_state(tf.add_n([n for b, n in counts.items() if b != 0]))
        if not searching:  # frozen: the cost is a constant, and a last negative strength made the loss < 0
            return loss
        return loss + scale(strength * c / self._reference)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' build from the first batch, also without a strategy; per worker under ``MultiWorkerMirroredStrategy``.

        Without a ``tf.distribute`` strategy Keras 3 leaves the compiled
        metrics (``metrics=["accuracy"]``) to be built inside the first trace
        of the train step; the variables created there make ``tf.function``
        trace the whole step a second time, which on ResNet-8 with the
        ``tflm`` cost is 10 s of Python per ``fit``. They are built here
        instead, from the first batch's shapes.

        Under ``MultiWorkerMirroredStrategy`` Keras 3 reduces the whole first
        batch (a nested structure) across the replicas in one call, which that
        strategy refuses (keras-team/keras#20585); only the shapes matter, so
        this worker's own values are used instead.
        """
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is None:
            if iterator is not None or data_batch is not None:
                self._symbolic_build(iterator=iterator, data_batch=data_batch)
            return None
        if iterator is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            break
        local = tf.nest.map_structure(
            lambda v: strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues)
            else v, batch)
        with strategy.scope():
            self._symbolic_build(data_batch=local)

    def train_step(self, data):
        logs = self._train_step(data)
        self._sync_batchnorm_statistics()
        return self._multi_worker_logs(logs)

    def test_step(self, data):
        return self._multi_worker_logs(super().test_step(data))

    def _multi_worker_logs(self, logs):
        """Under ``MultiWorkerMirroredStrategy``, give each scalar log an axis of length 1.

        Keras 3 averages a step's logs over the workers *and* over their first
        axis there, which a scalar has not (keras-team/keras#20585); the result is
        the same scalar. Elsewhere the logs are returned as they are.
        """
        if not isinstance(getattr(self, "_distribute_strategy", None), tf.distribute.MultiWorkerMirroredStrategy):
            return logs
        return tf.nest.map_structure(lambda v: tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0 else v,
                                     logs)

    def _sync_batchnorm_statistics(self):
        """Average the BatchNorm moving statistics over the replicas, after every distributed step.

        Keras 3 creates them without a distributed aggregation, so under
        ``tf.distribute`` each replica keeps its own (from its share of every
        batch) and ``freeze`` / ``export`` / saving read only the first
        replica's, while ``predict`` and ``evaluate`` use each replica's on its
        part of the data. The mean over replicas is what ``tf.keras`` kept. On
        one device, and for ``BatchNormalization(synchronized=True)``, nothing
        is done.
        """
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return
        stats = [v for layer in self._flatten_layers(include_self=False)
                 if isinstance(layer, keras.layers.BatchNormalization) and not getattr(layer, "synchronized", False)
                 for v in (layer.moving_mean, layer.moving_variance)]
        if stats:
            local = []
            for v in stats:  # placed: a reduction needs each value's device (MultiWorkerMirroredStrategy)
                with tf.device(v.value.device):
                    local.append(tf.identity(v.value))
            mean = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, local)
            for v, m in zip(stats, mean):
                v.assign(m)

    def _train_step(self, data):
        if self.arch_optimizer is None:
            return super().train_step(data)
        from keras.src.trainers.data_adapters import data_adapter_utils

        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            self._loss_tracker.update_state(loss_module.unscale_loss_for_distribution(loss),
                                            sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
        arch = self.arch_variables()
        weights = self._weight_variables()
        grads = tape.gradient(loss, weights + arch)
        self.optimizer.apply_gradients(zip(grads[: len(weights)], weights))
        if arch:
            kept = _kept_levels(self.precision_choices())
            self.arch_optimizer.apply_gradients(zip(grads[len(weights):], arch))
            for choice, level in kept:
                choice.set_kept_level(level)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        cfg = super().get_config()
        cfg["cost"] = cost_lib.serialize(self.cost_model)
        cfg["strength"] = self.strength
        cfg["target"] = self._target
        cfg["tolerance"] = self.tolerance
        return cfg


class _BudgetCallback(keras.callbacks.Callback):
    """Starts the budget ramp when ``fit`` knows its steps (see :func:`tfjpq.budget.start_ramp`); measures the file.

    In target mode with a cost that can measure the deployed file, the
    offset between the file and the modelled hard cost is measured when the
    ramp has just reached the target and at the end of every epoch
    (:func:`tfjpq.budget.measure_offset`), while the choices train: the
    fine-tune of a frozen model converts nothing.
    """

    def on_train_begin(self, logs=None):
        budget.start_ramp(self.model, self.params)
        # fixed choices (a frozen model's fine-tune): nothing steers on the offset, so nothing is converted
        self._measuring = bool(self.model.arch_variables())
        self._ramp_was_on = self._measuring and float(self.model._ramp_left.numpy()) > 0

    def on_train_batch_end(self, batch, logs=None):
        if self._ramp_was_on and float(self.model._ramp_left.numpy()) == 0:
            self._ramp_was_on = False
            budget.measure_offset(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if self._measuring:
            budget.measure_offset(self.model)


def _initial_temperature(temperature, cost_model):
    """``wrap``'s ``temperature``, with None and ``"auto"`` resolved (see :data:`DEFAULT_TEMPERATURE`)."""
    if temperature is None:
        temperature = DEFAULT_TEMPERATURE
    if isinstance(temperature, str):
        if temperature != "auto":
            raise ValueError(f"temperature must be a number > 0, None or 'auto', got {temperature!r}")
        return COLD_TEMPERATURE if getattr(cost_model, "prices_splits", False) else 1.0
    return temperature


def _outputs_probabilities(model) -> bool:
    """Whether a model's (first) output is a softmax (probabilities) rather than logits."""
    layer = model.outputs[0]._keras_history.operation
    if isinstance(layer, keras.layers.Softmax):
        return True
    act = getattr(layer, "activation", None)
    return act is not None and getattr(act, "__name__", "") == "softmax"


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


def wrap(model, weight_bits=(0, 2, 4, 8), act_bits=(8,), cost="size", strength=DEFAULT_STRENGTH, target=None,
         tolerance=budget.DEFAULT_TOLERANCE, min_channels=1, mode="soft", temperature=None,
         act_clip=6.0, weight_quantizer=DEFAULT_WEIGHT_QUANTIZER, prune_gate=DEFAULT_PRUNE_GATE,
         init=search_init.DEFAULT_INIT) -> SearchModel:
    """Turn a Keras 3 model into a joint pruning + channel-wise mixed-precision search model.

    Args:
      model: a Sequential or functional Keras 3 model (trained or fresh); its
        weights are copied, the model itself is left untouched.
      weight_bits: per-output-channel choices; 0 means pruned.
      act_bits: per-tensor activation precision choices (PACT).
      cost: "size" (bytes), "bitops", "mpic", "tflm", or a ``tfjpq.cost.CostModel``.
      strength: the weight of the *normalised* cost (cost / cost of the
        all-8-bit model) in the loss; dimensionless. 0.05 (the default)
        typically roughly halves the bytes of a trained CNN in a few epochs;
        see docs/search.md for a sweep. With ``target``, it is the starting
        value of the adapted multiplier.
      target: a budget in the cost's unit (bytes for "size"/"tflm", BitOps,
        cycles, ms). The strength is then adapted during ``fit`` so that the
        hard cost meets it, and :func:`freeze` projects the final choices to
        within ``tolerance`` of it (:mod:`tfjpq.budget`).
      tolerance: relative tolerance of the target (0.03: within +-3 %).
      min_channels: kept channels a prunable group never goes below when
        frozen: an int, or a float in (0, 1) for a fraction of each group.
      mode: "soft", "hard" (straight-through argmax) or "gumbel".
      temperature: initial softmax temperature (see ``callbacks.TemperatureDecay``);
        None: :data:`DEFAULT_TEMPERATURE` (0.5 with ``"tflm"``, else 1.0).
      act_clip: initial PACT clip.
      weight_quantizer: how each channel's scale is chosen at every width:
        "mse" (default; the clip ratio of least squared error, which makes
        2 and 4 bits usable) or "minmax" (``max|W_c| / n``, the paper's);
        see :mod:`tfjpq.quantizers` and docs/search.md.
      prune_gate: how a channel's pruning probability masks its output during
        the search: "ste" (default; the channel outputs exactly zero while
        0 bits is its most likely choice, as after ``freeze``, with the soft
        gradient) or "soft" (scaled by ``1 - theta_0``, the paper's
        relaxation, which lets the network lean on channels it then prunes).
      init: where the logits start (:mod:`tfjpq.search_init`): "flat"
        (default; ``p / max(P)`` everywhere, the paper's), "magnitude"
        (tilted by each channel's weight magnitude) or "budget" (tilted and,
        with a ``target``, already projected onto it; measured worse).

    Raises:
      ValueError: bad bit-widths, strength < 0, a target <= 0, below the
        cheapest model the search space holds (the message names that
        minimum), or given with a cost model that has no unit.

    Example::

        search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8), cost="size", target=30_000)  # bytes
        search.compile(optimizer="adam", loss=loss, metrics=["accuracy"])  # logits: Adam(0.02)
        search.fit(x, y, epochs=6, callbacks=[tfjpq.callbacks.SearchLogger()])
        tuned = tfjpq.freeze(search)    # hard cost within 3 % of 30 kB
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
    quantizers.check_weight_quantizer(weight_quantizer)
    check_prune_gate(prune_gate)
    if init not in search_init.INITS:
        raise ValueError(f"init must be one of {search_init.INITS}, got {init!r}")
    if mode == "fixed":
        raise ValueError("mode='fixed' is what tfjpq.freeze sets; wrap with 'soft', 'hard' or 'gumbel'")
    cost_model = cost_lib.get(cost)
    temperature = _initial_temperature(temperature, cost_model)
    graph.check.check_search_arguments(strength, target, temperature, act_clip,  # finite; strength 0 + target
                                       has_choices=len(weight_bits) > 1 or len(act_bits) > 1)
    if isinstance(min_channels, float) and not 0 < min_channels < 1 or min_channels <= 0:
        raise ValueError(f"min_channels must be an int >= 1 or a fraction in (0, 1), got {min_channels}")
    cost_model.check(weight_bits, act_bits)

    model = graph.check_model(model)
    graph.check.check_finite_weights(model, "tfjpq.wrap")
    graph.check.warn_untrained_batchnorm(model, "tfjpq.wrap")
    info = graph.analyze(model)
    if not info.linears:
        raise UnsupportedModelError(f"model {model.name!r} has no Conv2D, DepthwiseConv2D or Dense layer to search")

    new_inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name) for t in model.inputs]
    tensors = {id(old): new for old, new in zip(model.inputs, new_inputs)}

    conditional = (bool(getattr(cost_model, "prices_splits", False)) if PRUNE_THEN_WIDTH == "auto"
                   else bool(PRUNE_THEN_WIDTH))
    group_names, group_bits, thetas = {}, {}, {}
    for gid, group in info.groups.items():
        name = f"{group.members[0]}_wbits"
        bits = weight_bits if group.prunable else tuple(b for b in weight_bits if b != 0)
        note = ""
        if not group.prunable and 0 in weight_bits:
            note = "never pruned: " + "; ".join(dict.fromkeys(group.reasons))
        floor = int(np.ceil(min_channels * group.channels)) if isinstance(min_channels, float) else min_channels
        choice = PrecisionChoice(group.channels, bits=bits, temperature=temperature, mode=mode,
                                 regroup=group.regroup, note=note, min_channels=floor, name=name,
                                 conditional=conditional)
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
                group=group_names[li.group], weight_quantizer=weight_quantizer, prune_gate=prune_gate,
                name=layer.name,
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
    search = SearchModel(inputs=new_inputs if len(new_inputs) > 1 else new_inputs[0],
                         outputs=outputs if len(outputs) > 1 else outputs[0],
                         cost=cost_model, strength=strength, tolerance=tolerance, name=f"{model.name}_search")
    fitted = cost_model.for_model(search)
    if fitted is not cost_model:  # e.g. the tflm cost with the flatbuffer's fixed bytes measured on this model
        search._cost_model = fitted
        search._reference.assign(cost_lib.reference_cost(search, fitted))
    if target is not None:
        search.target = target  # checked against the cheapest model of the search space
    search.initial_projection = search_init.initialize(search, init)
    return search


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


def freeze(search: SearchModel, project=None) -> SearchModel:
    """Fix every precision choice (argmax), for fine-tuning (weights keep training).

    A prunable group keeps at least its ``min_channels`` channels (1 by
    default): the pruned channels with the highest non-zero logit come back.
    When the search has a ``target`` (and ``project`` is not False), the
    choices are then projected onto the budget (:func:`tfjpq.budget.project`):
    if the hard cost is more than ``tolerance`` off the target, channels are
    moved one precision step at a time, those whose logits least prefer their
    choice first (with ``cost="tflm"``: per byte the move changes, and a
    channel may be pruned in one move), until it lands at or just below the
    target. Where the search
    measured its file (``cost="tflm"``, :func:`tfjpq.budget.measure_offset`),
    the projection aims at the budget less that offset, and the converted file
    is checked after it (:func:`tfjpq.budget.check_flatbuffer`). What the
    projection did is in ``frozen.projection`` (a dict, or None).

    Example::

        tuned = tfjpq.freeze(search)
        tuned.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
        tuned.fit(x, y, epochs=3)
    """
    require_search_model(search, "tfjpq.freeze")
    graph.check.check_finite_weights(search, "tfjpq.freeze")
    config = copy.deepcopy(search.get_config())
    for layer_cfg in config["layers"]:
        if layer_cfg["class_name"] in ("PrecisionChoice", "ActivationChoice"):
            layer_cfg["config"]["mode"] = "fixed"
    frozen = SearchModel.from_config(config)
    src = {v.path: v for v in search.variables}
    for v in frozen.variables:
        if v.path in src:
            v.assign(src[v.path].numpy())
    for choice in frozen.precision_choices():  # make the argmax the kept selection (min_channels rescue included)
        alpha = choice.alpha.numpy()
        sel = choice.selected_index()
        for c in np.nonzero(sel != np.argmax(alpha, axis=0))[0]:
            alpha[sel[c], c] = alpha[:, c].max() + 1.0
        choice.alpha.assign(alpha)
    frozen.projection = None
    if frozen.target is not None and project is not False:
        offset, tol = float(frozen._measured_offset.numpy()), frozen.tolerance
        if offset:  # the file was measured during the search: aim the modelled cost where the file meets the budget
            low, high = budget.ceiling_window(frozen.target, tol)  # the window the flatbuffer check accepts
            aim = budget.ceiling_aim(frozen.target, tol, offset)
            frozen.projection = budget.project(frozen, aim, (high - low) / 2 / frozen.target)
        else:
            frozen.projection = budget.project(frozen, frozen.target, tol)
        budget.check_flatbuffer(frozen, frozen.projection)
    frozen._hard_cost_var.assign(float(frozen.hard_cost()))
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
