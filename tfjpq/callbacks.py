"""Keras ``fit`` callbacks for the search schedule.

Example::

    search.fit(x, y, epochs=20, callbacks=[
        tfjpq.callbacks.StrengthWarmup(epochs=3),
        tfjpq.callbacks.TemperatureDecay(rate=0.045),
        tfjpq.callbacks.SearchLogger(),
    ])
"""

from __future__ import annotations

import math

import keras
import numpy as np

from tfjpq.layers import ActivationChoice, PrecisionChoice

__all__ = ["TemperatureDecay", "StrengthWarmup", "SearchLogger"]


def _temperatures(model):
    return [layer.temperature for layer in model.layers if isinstance(layer, (PrecisionChoice, ActivationChoice))]


class TemperatureDecay(keras.callbacks.Callback):
    """``T <- T * exp(-rate)`` after every epoch, down to ``minimum`` (the paper: rate 0.045)."""

    def __init__(self, rate=0.045, minimum=1e-3):
        super().__init__()
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        self.rate, self.minimum = float(rate), float(minimum)

    def on_epoch_end(self, epoch, logs=None):
        factor = math.exp(-self.rate)
        value = None
        for t in _temperatures(self.model):
            value = max(float(t.numpy()) * factor, self.minimum)
            t.assign(value)
        if logs is not None and value is not None:
            logs["temperature"] = value


class StrengthWarmup(keras.callbacks.Callback):
    """Ramp the cost strength linearly from ``start`` x to 1 x its value over ``epochs`` epochs."""

    def __init__(self, epochs=3, start=0.0):
        super().__init__()
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.epochs, self.start = int(epochs), float(start)
        self.target = None

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "strength"):
            raise TypeError("StrengthWarmup needs a model made by tfjpq.wrap")
        if getattr(self.model, "target", None) is not None:
            raise ValueError("StrengthWarmup ramps a fixed strength; with target= the strength is adapted by the "
                             "search itself (tfjpq.budget): drop StrengthWarmup")
        self.target = self.model.strength

    def on_epoch_begin(self, epoch, logs=None):
        frac = min(1.0, self.start + (1.0 - self.start) * epoch / self.epochs)
        self.model.strength = self.target * frac

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["strength"] = self.model.strength

    def on_train_end(self, logs=None):
        self.model.strength = self.target


class SearchLogger(keras.callbacks.Callback):
    """Per-epoch search state: hard cost vs target, multiplier, kept channels, bit-width histogram, per layer.

    Prints, each epoch, the hard cost (what :func:`tfjpq.freeze` would keep
    now), the target and the gap to it when there is one, and the strength
    (the adapted multiplier in target mode). Adds ``size_bytes``,
    ``kept_fraction``, ``hard_cost`` (end of epoch), ``strength`` and
    ``target`` to the epoch logs (so they land in the History and in a
    TensorBoard callback placed after it; ``cost``, ``kept`` and ``bits_<b>``
    are already model metrics). ``self.records`` keeps the per-layer rows of
    every epoch. With ``log_dir``, bit-width histograms are also written as
    TensorBoard histograms.

    Example::

        logger = tfjpq.callbacks.SearchLogger()
        search.fit(x, y, epochs=6, callbacks=[logger])
        # [tfjpq] epoch 6: hard cost 2.01e+04 bytes / target 2e+04 (+0.5%), strength 0.31, ...
        logger.records[-1]["hard_cost"]
    """

    def __init__(self, verbose=1, log_dir=None):
        super().__init__()
        self.verbose, self.log_dir = verbose, log_dir
        self.records = []
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        from tfjpq.summary import profile

        prof = profile(self.model)
        t = prof.totals
        self.records.append({"epoch": epoch, "totals": t, "rows": prof.rows})
        hard = float(self.model.hard_cost())
        target = self.model.target
        strength = self.model.strength
        self.records[-1].update(hard_cost=hard, target=target, strength=strength)
        if logs is not None:
            logs["size_bytes"] = t["weight_bytes"]
            logs["kept_fraction"] = t["channels_kept"] / max(t["channels"], 1)
            logs["hard_cost"] = hard
            logs["strength"] = strength
            if target is not None:
                logs["target"] = target
        if self.verbose:
            hist = " ".join(f"{b}b:{n}" for b, n in sorted(t["bits_histogram"].items()))
            unit = t["cost_unit"]
            goal = f" / target {target:.4g} ({hard / target - 1:+.1%})" if target is not None else ""
            print(f"[tfjpq] epoch {epoch + 1}: hard cost {hard:.4g} {unit}{goal}, strength {strength:.3g}, "
                  f"soft cost {t['cost']:.4g}, kept {t['channels_kept']}/{t['channels']} channels, "
                  f"weights {t['weight_bytes']:,.0f} B, {hist}")
        if self.log_dir:
            import tensorflow as tf

            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default(step=epoch):
                for row in prof.rows:
                    values = np.repeat(list(row["bits_histogram"].keys()), list(row["bits_histogram"].values()))
                    tf.summary.histogram(f"bits/{row['name']}", values.astype(np.float32))
                tf.summary.scalar("tfjpq/size_bytes", t["weight_bytes"])
                tf.summary.scalar("tfjpq/hard_cost", hard)
                tf.summary.scalar("tfjpq/strength", strength)
            self._writer.flush()
