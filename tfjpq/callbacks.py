"""Keras ``fit`` callbacks for the search schedule.

Example::

    search.fit(x, y, epochs=20, callbacks=[
        tfjpq.callbacks.StrengthWarmup(epochs=3),
        tfjpq.callbacks.TemperatureDecay(rate=0.045),
        tfjpq.callbacks.SearchLogger(),
    ])
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings

import keras
import numpy as np

from tfjpq.layers import ActivationChoice, PrecisionChoice

__all__ = ["TemperatureDecay", "StrengthWarmup", "SearchLogger", "save_records", "load_records"]


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
    """Ramp the cost strength linearly from ``start`` x to 1 x its value over ``epochs`` epochs.

    The value ramped to is the strength set on the model (``wrap(strength=)``
    or ``search.strength = ...``), which a model variable keeps apart from the
    ramped one, so a fit resumed by ``keras.callbacks.BackupAndRestore`` ramps
    to the same value.

    Example::

        search = tfjpq.wrap(model, strength=0.2)
        search.fit(x, y, epochs=6, callbacks=[tfjpq.callbacks.StrengthWarmup(epochs=3)])
    """

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
        # with a fixed strength the multiplier holds the strength set; the ramp only writes the effective one
        self.target = float(self.model._multiplier.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        frac = min(1.0, self.start + (1.0 - self.start) * epoch / self.epochs)
        self.model._strength.assign(self.target * frac)

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

    With ``backup_path`` (a JSON file), the records are rewritten there
    (atomically) after every epoch, and a ``fit`` that starts past epoch 0
    (resumed by ``keras.callbacks.BackupAndRestore``, or given
    ``initial_epoch``) reads them back when this logger holds none, keeping
    those of the epochs before it. A resumed run then has the records of the
    uninterrupted one. Place it before ``BackupAndRestore`` in the callbacks,
    so an epoch's records are on disk before its backup.

    Example::

        logger = tfjpq.callbacks.SearchLogger()
        search.fit(x, y, epochs=6, callbacks=[logger])
        # [tfjpq] epoch 6: hard cost 2.01e+04 bytes / target 2e+04 (+0.5%), strength 0.31, ...
        logger.records[-1]["hard_cost"]

        # resumable: the backup and the records survive a killed process
        search.fit(x, y, epochs=6, callbacks=[keras.callbacks.BackupAndRestore("ckpt/backup"),
                                              tfjpq.callbacks.SearchLogger(backup_path="ckpt/records.json")])
    """

    def __init__(self, verbose=1, log_dir=None, backup_path=None):
        super().__init__()
        self.verbose, self.log_dir = verbose, log_dir
        self.backup_path = None if backup_path is None else os.fspath(backup_path)
        self.records = []
        self._writer = None
        self._fit_started = False

    def on_train_begin(self, logs=None):
        self._fit_started = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._fit_started:
            return
        self._fit_started = True
        if epoch > 0:  # a resumed fit: the records of the epochs before it, each once
            loaded = False
            if not self.records and self.backup_path and os.path.exists(self.backup_path):
                self.records, loaded = load_records(self.backup_path), True
            self.records = [r for r in self.records if r["epoch"] < epoch]
            missing = sorted(set(range(epoch)) - {r["epoch"] for r in self.records})
            if loaded and missing:
                warnings.warn(f"SearchLogger: {self.backup_path} has no records of epoch(s) {missing} before the "
                              f"resumed epoch {epoch}; place the SearchLogger before BackupAndRestore in the "
                              "callbacks, so an epoch's records are written before its backup", stacklevel=2)

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
            ramp = getattr(self.model, "budget_goal", float("nan"))
            if target is not None and np.isfinite(ramp) and abs(ramp / target - 1) > 1e-3:
                goal += f" (ramping: now steering to {ramp:.4g})"
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
        if self.backup_path:
            save_records(self.backup_path, self.records)


def save_records(path, records):
    """Write :class:`SearchLogger` records as JSON, atomically (a temporary sibling file, then a rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".records-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(records, f, default=_json_default)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_records(path):
    """Read records written by :func:`save_records` (bit-width histogram keys back to ints).

    Example::

        records = tfjpq.callbacks.load_records("ckpt/records.json")
        records[-1]["hard_cost"]
    """
    try:
        with open(path) as f:
            records = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"SearchLogger records file {os.fspath(path)!r} is not valid JSON ({e}); delete it to start "
                         "the records afresh") from None
    for r in records:
        for part in [r["totals"]] + list(r["rows"]):
            if "bits_histogram" in part:
                part["bits_histogram"] = {int(b): n for b, n in part["bits_histogram"].items()}
    return records


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
