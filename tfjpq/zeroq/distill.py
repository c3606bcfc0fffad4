"""ZeroQ distilled data: inputs optimised so every BatchNorm sees the statistics it was trained on.

For each BatchNormalization layer ``l`` with running mean ``mu_l`` and running
variance ``var_l`` (per channel), and a batch of candidate inputs ``x``, let
``m_l(x)`` and ``s_l(x)`` be the per-channel mean and standard deviation of the
tensor *entering* ``l`` (over batch and spatial positions). The loss is::

    L(x) = 1/|BN| * sum_l [ mean_c (m_l - mu_l)^2 + mean_c (s_l - sqrt(var_l))^2 ]
           + mean_k (m_in,k - mu_in)^2 + mean_k (s_in,k - sigma_in)^2

where the last line is the input term over the input channels ``k``
(``mu_in = 0``, ``sigma_in = 1`` by default, as in the paper). ``x`` starts as
standard Gaussian noise and is updated by Adam on ``x`` itself. The model runs
in inference mode, so BN layers between the input and ``l`` use their running
statistics. No labels and no real data are involved.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from tfjpq.graph import check_model, layer_kind, single_input_shape, topological_nodes

__all__ = ["bn_loss", "distill"]

_EPS = 1e-6


def _bn_nodes(model):
    """(bn_layer, input_tensor) for every BatchNormalization call of a checked model, input side first."""
    pairs = [(node.operation, node.input_tensors[0]) for node in topological_nodes(model)
             if layer_kind(node.operation) == "bn"]
    if not pairs:
        raise ValueError(
            f"model {model.name!r} has no BatchNormalization layer: ZeroQ distillation matches the "
            "BN running statistics, so it needs a model with BatchNormalization (un-folded). "
            "Use real calibration images (or another data-free method) for this model."
        )
    return pairs


class _Objective:
    """The BN-statistics loss for one model, as a compiled function of a batch."""

    def __init__(self, model, input_stats=(0.0, 1.0)):
        model = check_model(model, "known", "zeroq.distill")
        from tfjpq.graph.check import warn_untrained_batchnorm

        warn_untrained_batchnorm(model, "zeroq.distill")
        self.input_shape = single_input_shape(model, "zeroq.distill")
        pairs = _bn_nodes(model)
        self.bn_names = [bn.name for bn, _ in pairs]
        self.features = keras.Model(model.inputs[0], [t for _, t in pairs], name=f"{model.name}_bn_inputs")
        self.targets = []
        for bn, t in pairs:
            rank = len(t.shape)
            axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
            axis %= rank
            axes = [a for a in range(rank) if a != axis]
            mean = tf.constant(np.asarray(bn.moving_mean, np.float32))
            std = tf.constant(np.sqrt(np.maximum(np.asarray(bn.moving_variance, np.float32), 0.0)))
            self.targets.append((axes, mean, std))
        in_rank = len(self.input_shape) + 1
        self.input_axes = list(range(in_rank - 1))  # channels last
        self.input_stats = input_stats

    def terms(self, x):
        """Per-BN losses (a list of scalars) and the input term."""
        feats = self.features(x, training=False)
        if not isinstance(feats, (list, tuple)):
            feats = [feats]
        per_bn = []
        for f, (axes, mu, sd) in zip(feats, self.targets):
            m, v = tf.nn.moments(f, axes=axes)
            s = tf.sqrt(v + _EPS)
            per_bn.append(tf.reduce_mean(tf.square(m - mu)) + tf.reduce_mean(tf.square(s - sd)))
        if self.input_stats is None:
            inp = tf.constant(0.0)
        else:
            mu_in, sd_in = self.input_stats
            m, v = tf.nn.moments(x, axes=self.input_axes)
            inp = tf.reduce_mean(tf.square(m - mu_in)) + tf.reduce_mean(tf.square(tf.sqrt(v + _EPS) - sd_in))
        return per_bn, inp

    def loss(self, x):
        per_bn, inp = self.terms(x)
        return tf.add_n(per_bn) / float(len(per_bn)) + inp


def bn_loss(model, x, batch_size=None, input_stats=(0.0, 1.0)):
    """The distillation loss of ``x`` for ``model`` (lower: closer to the BN running statistics).

    ``x`` is split into batches of ``batch_size`` (default: all at once) and the
    losses are averaged, so it measures what :func:`distill` optimises. Handy to
    compare distilled data with noise and with real images::

        from tfjpq import zeroq
        zeroq.bn_loss(model, x_real[:64]), zeroq.bn_loss(model, zeroq.distill(model))
    """
    obj = _Objective(model, input_stats)
    x = np.asarray(x, np.float32)
    bs = len(x) if batch_size is None else int(batch_size)
    vals = [float(obj.loss(tf.constant(x[i:i + bs]))) for i in range(0, len(x), bs)]
    return float(np.mean(vals))


def distill(model, num_samples=64, iterations=500, batch_size=None, lr=0.5, seed=0, verbose=1,
            input_stats="auto", input_range=None, tol=0.1, patience=50, jit_compile=False,
            return_info=False):
    """Data-free inputs for ``model``: Gaussian noise optimised to match every BN's running statistics.

    Args:
        model: a trained functional (or Sequential) Keras model with
            BatchNormalization layers, wherever they sit (after conv, depthwise,
            dense or an Add).
        num_samples: how many inputs to return.
        iterations: Adam steps per batch.
        batch_size: samples optimised together (their batch statistics are
            matched). Default ``min(num_samples, 64)``. With ``num_samples >
            batch_size`` the batches are distilled one after the other.
        lr: Adam learning rate on the inputs (the paper's 0.5).
        seed: seed of the initial noise.
        verbose: 0 silent, 1 a progress bar, 2 one line every 100 steps.
        input_stats: ``(mean, std)`` the input term pulls every input channel
            toward, or ``None`` for no input term. ``"auto"`` (default): the
            paper's ``(0, 1)`` (inputs standardised per channel) when no
            ``input_range`` is given, and no input term when one is (a range
            like ``(0, 1)`` cannot hold std 1; the range is the input prior
            then). Measured on MNIST-5k (inputs in [0, 1]): the ``(0, 1)`` term
            fights the first BN and leaves outlier pixels that stretch the int8
            input range, costing 2.5 points at W8A8; ``input_range=(0, 1)``
            matches real-image calibration.
        input_range: ``(low, high)`` the inputs are clipped to after every
            step (projected Adam), e.g. ``(0, 1)`` for pixels / 255. It is
            knowledge of the preprocessing, not data. ``None``: no clipping.
        tol, patience: stop a batch early once the best loss of the last
            ``patience`` steps improves on the best before by less than
            ``tol`` (relative); checked every ``patience`` steps from step
            ``2 * patience`` on. ``tol=0`` always runs ``iterations`` steps.
            The default (10 % per 50 steps) typically stops after 150-300
            steps; on MNIST-5k the W8A8 accuracy was the same from 50 to 500
            steps.
        jit_compile: compile the step with XLA (about 5 s of compilation;
            pays off for bigger models and many iterations).
        return_info: also return a dict with the ``steps`` run, the
            ``initial_loss`` / ``final_loss`` per batch, every step's loss
            (``losses``), the wall ``seconds`` and the ``input_stats`` used.

    Returns:
        ``np.ndarray`` of shape ``(num_samples,) + model input shape``, float32
        (with ``return_info``: ``(array, info)``).

    Raises:
        ValueError: the model has no BatchNormalization layer, more than one
            input, or an input shape with ``None``.
        TypeError: the model is not functional (subclassed models hide their graph).

    Example::

        import tfjpq
        from tfjpq import zoo
        model = zoo.small_cnn()           # train it first
        x_syn = tfjpq.zeroq.distill(model, num_samples=64, iterations=500)
        x_syn.shape                       # (64, 8, 8, 1)
        # inputs scaled to [0, 1] (pixels / 255): say so; it keeps the int8 input range right
        x_syn = tfjpq.zeroq.distill(model, input_range=(0, 1))
    """
    if int(num_samples) < 2:
        raise ValueError(f"num_samples must be >= 2 (batch statistics need a batch), got {num_samples}")
    if isinstance(input_stats, str):
        if input_stats != "auto":
            raise ValueError(f"input_stats must be 'auto', None or (mean, std), got {input_stats!r}")
        input_stats = (0.0, 1.0) if input_range is None else None
    obj = _Objective(model, input_stats)
    num_samples, iterations = int(num_samples), int(iterations)
    bs = min(num_samples, 64) if batch_size is None else int(batch_size)
    if bs < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")
    n_batches = -(-num_samples // bs)
    rng = np.random.default_rng(seed)
    shape = (bs,) + tuple(obj.input_shape)

    x = tf.Variable(tf.zeros(shape), name="zeroq_x")
    m = tf.Variable(tf.zeros(shape), name="zeroq_adam_m")
    v = tf.Variable(tf.zeros(shape), name="zeroq_adam_v")
    t = tf.Variable(0.0, name="zeroq_adam_t")
    b1, b2, eps = 0.9, 0.999, 1e-8
    lr = float(lr)
    lo = hi = None
    if input_range is not None:
        lo, hi = (float(v) for v in input_range)
        if not lo < hi:
            raise ValueError(f"input_range must be (low, high) with low < high, got {input_range}")

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = obj.loss(x)
        g = tape.gradient(loss, x)
        t.assign_add(1.0)
        m.assign(b1 * m + (1 - b1) * g)
        v.assign(b2 * v + (1 - b2) * tf.square(g))
        mhat = m / (1 - tf.pow(b1, t))
        vhat = v / (1 - tf.pow(b2, t))
        x.assign_sub(lr * mhat / (tf.sqrt(vhat) + eps))
        if lo is not None:
            x.assign(tf.clip_by_value(x, lo, hi))
        return loss

    out, info = [], {"steps": [], "initial_loss": [], "final_loss": [], "losses": []}
    total = n_batches * iterations
    bar = keras.utils.Progbar(total, stateful_metrics=["loss"], verbose=1) if verbose == 1 else None
    start = time.perf_counter()
    window = int(patience)
    for b in range(n_batches):
        x0 = rng.standard_normal(shape).astype(np.float32)
        if lo is not None:  # start inside the range: Gaussian around its middle
            x0 = np.clip((lo + hi) / 2 + x0 * (hi - lo) / 4, lo, hi)
        x.assign(x0)
        m.assign(tf.zeros(shape))
        v.assign(tf.zeros(shape))
        t.assign(0.0)
        losses = []
        for i in range(iterations):
            losses.append(float(step()))
            done = b * iterations + i + 1
            stop = (tol > 0 and window > 0 and len(losses) >= 2 * window and len(losses) % window == 0
                    and min(losses[:-window]) - min(losses[-window:]) < tol * min(losses[:-window]))
            if bar is not None and (i % 10 == 9 or i == iterations - 1 or stop):
                bar.update(done, values=[("loss", losses[-1])])
            elif verbose == 2 and (i % 100 == 0 or i == iterations - 1 or stop):
                print(f"zeroq.distill: batch {b + 1}/{n_batches} step {i + 1}/{iterations} "
                      f"loss {losses[-1]:.4g} ({time.perf_counter() - start:.1f} s)", flush=True)
            if stop:
                if bar is not None:
                    bar.update((b + 1) * iterations, values=[("loss", losses[-1])])
                break
        info["steps"].append(len(losses))
        if losses:
            info["initial_loss"].append(losses[0])
            info["final_loss"].append(float(obj.loss(x)))
        info["losses"].append(losses)
        out.append(x.numpy())
    if iterations == 0 and bar is not None:
        bar.update(total)
    info["seconds"] = time.perf_counter() - start
    info["input_stats"] = input_stats
    if verbose == 2:
        print(f"zeroq.distill: {num_samples} samples, {sum(info['steps'])} steps in {info['seconds']:.1f} s", flush=True)
    x_out = np.concatenate(out)[:num_samples]
    return (x_out, info) if return_info else x_out
