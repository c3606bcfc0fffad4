"""A cost model that prices what a TFLite Micro board pays, by the exporter's own rules.

``objective="flash"`` (bytes): the smaller of (a) one tensor per precision
group (the channels at ``b`` bits) plus the graph bytes of the split
(``storage.split_overhead_bytes``: the extra operators and the Concatenate),
and (b) one tensor stored at its widest precision, the rule ``tfjpq.export``
follows. Each tensor takes the cheapest storage ``tflm_export.storage``
allows, evaluated at the soft channel counts:

* int8: ``N`` bytes; INT4 (conv / depthwise, ``b <= 4``): ``N / 2``;
* LUT (``b < 8``): ``N * b / 8`` index bytes + 16-byte header +
  ``channels * (2**b - 1)`` table bytes + the DECODE graph records of the lean flatbuffer
  (``storage.LUT_GRAPH_BYTES``, counted once the group has a channel);
* plus the int32 bias and the float32 weight scale, 4 + 4 bytes per kept channel;
* plus ``fixed_bytes``: everything else in the flatbuffer (operators, tensors,
  activation quantization, the layers that are not searched). ``tfjpq.wrap``
  measures it once by exporting the all-widest model with
  ``tflm_export.convert`` (:meth:`TFLMCost.calibrate`), so the cost, and a
  ``target``, are bytes of the whole flatbuffer; with ``target``,
  :func:`tfjpq.freeze` also checks the converted flatbuffer of its result.

``objective="latency"`` (ms on the board's core): MACs per precision group
times the exporter's cycles per MAC for the op and core
(``tflm_export.cycles``), plus the INT4 unpacking cost per filter value, over
the board's clock.

``objective="arena"`` is not offered: the arena is a peak over the schedule,
not a sum; ``tflm_export.emulate`` measures it.

Example::

    search = tfjpq.wrap(model, cost=tfjpq.tflm_cost.TFLMCost("nucleo-f746zg", "latency"), strength=0.05)
    search = tfjpq.wrap(model, cost="tflm", target=20_000)        # flash bytes on nano33ble

``TFLMCost`` is registered in :mod:`tfjpq.cost` as ``"tflm"`` (``"tflm:BOARD"`` for another board).
"""

from __future__ import annotations

import gc

import keras
import tensorflow as tf

from tfjpq.cost import CostModel, register
from tfjpq.graph import tflite_kernel_shape, tflite_op

__all__ = ["TFLMCost", "OBJECTIVES"]

OBJECTIVES = ("flash", "latency")


@register("tflm")
@keras.saving.register_keras_serializable(package="tfjpq")
class TFLMCost(CostModel):
    """Flash bytes (default) or estimated latency on a board, following ``tflm_export``."""

    name = "tflm"
    prices_splits = True

    def __init__(self, board="nano33ble", objective="flash", kernels="cmsis-nn", fixed_bytes=None):
        from tflm_export import boards, cycles

        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.board = boards.get_board(board)
        self.objective = objective
        self.kernels = kernels
        self.unit = "bytes" if objective == "flash" else "ms"
        self.fixed_bytes = None if fixed_bytes is None else float(fixed_bytes)
        cycles.mac_cycles("CONV_2D", self.board.core, kernels)  # validates core and kernels

    def check(self, weight_bits, act_bits):
        if any(a != 8 for a in act_bits):
            raise ValueError(f"the tflm cost prices int8 TFLite Micro kernels; act_bits must be (8,), got {act_bits}")

    @staticmethod
    def _cheapest(op, n, channels, b):
        """Soft bytes of one tensor of ``n`` weights in ``channels`` channels on a ``b``-bit grid."""
        from tflm_export import storage

        cands = [storage.int8_bytes(n, exact=False)]
        if op in storage.INT4_OPS and b <= storage.INT4_MAX_BITS:
            cands.append(storage.int4_bytes(n, exact=False))
        if b < 8 and b <= storage.LUT_MAX_INDEX_BITS:
            lut = storage.lut_bytes(n, channels, b, storage.grid_values(b), exact=False, graph=False)
            cands.append(lut + storage.LUT_GRAPH_BYTES * tf.minimum(channels, 1.0))
        return tf.reduce_min(tf.stack([tf.cast(c, tf.float32) for c in cands]))

    def _flash(self, t):
        from tflm_export import storage

        op = tflite_op(t.kind)
        per_channel = t.taps * (1.0 if t.kind == "depthwise" else t.cin_eff)
        nonzero = [(i, b) for i, b in enumerate(t.weight_bits) if b != 0]
        # one tensor, stored by its widest channel: expectation over that maximum
        kept = t.kept_channels()
        one = 0.0
        below = 0.0  # P(every channel is at most the previous width)
        for i, b in nonzero:
            at_most = [k for k, bb in enumerate(t.weight_bits) if bb <= b]
            p_le = _all_at_most(tf.add_n([t.theta[k] for k in at_most]))
            one = one + (p_le - below) * self._cheapest(op, per_channel * kept, kept, b)
            below = p_le
        total = one
        if t.regroup:  # or one tensor per precision group, plus the split's operators, whichever is smaller
            split, parts = 0.0, 0.0
            for i, b in nonzero:
                count = tf.reduce_sum(t.theta[i])
                split = split + self._cheapest(op, per_channel * count, count, b)
                parts = parts + tf.minimum(count, 1.0)
            extra = tf.maximum(parts - 1.0, 0.0)
            split = split + tf.minimum(extra, 1.0) * storage.SPLIT_CONCAT_BYTES + extra * storage.SPLIT_PART_BYTES
            total = tf.minimum(split, one)
        return total + (storage.BIAS_BYTES_PER_CHANNEL + SCALE_BYTES_PER_CHANNEL) * kept

    def total(self, terms):
        total = super().total(terms)
        if self.objective == "flash" and self.fixed_bytes:
            total = total + self.fixed_bytes
        return total

    def for_model(self, search):
        """A flash cost fitted to ``search``: a copy whose ``fixed_bytes`` is measured on it (:meth:`calibrate`).

        The instance given is left as it is, so it is never reused with another model's figure.
        """
        if self.objective != "flash":
            return self
        fitted = TFLMCost.from_config({**self.get_config(), "fixed_bytes": None})
        fitted.calibrate(search)
        return fitted

    def measure(self, search):
        """Bytes of the converted flatbuffer of ``search``'s hard choices (flash, once calibrated), else None."""
        if self.objective != "flash" or self.fixed_bytes is None:
            return None
        return flatbuffer_bytes(search)

    def calibrate(self, search, seed=0):
        """Measure ``fixed_bytes`` on ``search`` (just wrapped: every channel at its widest width).

        Exports the model as it stands, converts it and keeps the flatbuffer
        bytes the per-layer terms do not account for. The conversion is of a
        trained model's file (:func:`flatbuffer_bytes` with
        ``distinct_clips=True``): in a model just wrapped every activation
        clip is still 6.0, and the lean flatbuffer stores equal quantization
        records once, so the untrained file is smaller (80 B on the zoo's
        DS-CNN, 128 B on ResNet-8) than any trained one.

        Example::

            search = tfjpq.wrap(model, cost="tflm")   # wrap calibrates its own copy
            search.cost_model.fixed_bytes             # e.g. 4,700 bytes of graph on ResNet-8
        """
        self.fixed_bytes = 0.0
        measured = flatbuffer_bytes(search, seed=seed, distinct_clips=True)
        modeled = float(self.total(_hard_terms(search)))
        self.fixed_bytes = float(measured - modeled)
        return self.fixed_bytes

    def _latency(self, t):
        from tflm_export import cycles

        op = tflite_op(t.kind)
        core = self.board.core
        per_mac = cycles.mac_cycles(op, core, self.kernels)
        total = 0.0
        for b, macs in t.macs_by_bits().items():
            c = macs * per_mac
            if op in ("CONV_2D", "DEPTHWISE_CONV_2D") and b <= 4:
                i = t.weight_bits.index(b)
                filt = t.taps * (1.0 if t.kind == "depthwise" else t.cin_eff) * tf.reduce_sum(t.theta[i])
                c = c + filt * cycles.INT4_UNPACK * cycles.CORE_FACTORS[core][1]
            total = total + c
        return total / (self.board.clock_mhz * 1000.0)

    def layer_cost(self, t):
        return self._flash(t) if self.objective == "flash" else self._latency(t)

    def kernel_bytes(self, kind, shape, bits):
        """Bytes ``tflm_export`` stores for one kernel at ``bits`` (int8, INT4 or LUT, by :mod:`tflm_export.storage`)."""
        from tflm_export import storage

        if self.objective != "flash":
            return super().kernel_bytes(kind, shape, bits)
        return int(storage.plan_tensor(tflite_op(kind), tflite_kernel_shape(kind, shape), bits=int(bits)).weight_bytes)

    def get_config(self):
        b = self.board
        board = b.name if b.name in _builtin_boards() and _builtin_boards()[b.name] == b else {
            "name": b.name, "core": b.core, "clock_mhz": b.clock_mhz, "sram_bytes": b.sram_bytes,
            "flash_bytes": b.flash_bytes, "ram_reserved_bytes": b.ram_reserved_bytes,
            "flash_reserved_bytes": b.flash_reserved_bytes}
        return {"board": board, "objective": self.objective, "kernels": self.kernels, "fixed_bytes": self.fixed_bytes}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("board"), dict):
            from tflm_export import Board

            config["board"] = Board(**config["board"])
        return cls(**config)


def _hard_terms(search):
    from tfjpq import cost

    return cost.layer_terms(search, hard=True)


def flatbuffer_bytes(search, seed=0, distinct_clips=False) -> int:
    """Bytes of the lean flatbuffer ``tflm_export.convert`` makes of the hard choices of ``search`` now.

    Works on a copy (``freeze`` without projection, then ``tfjpq.export``);
    calibrates on random inputs, which changes the scales but not the bytes,
    except where two activation tensors get equal quantization parameters:
    the lean flatbuffer stores equal records once. With ``distinct_clips``
    the copy's activation clips are first spread by a thousandth each, as
    training leaves them, so nothing is shared by coincidence.

    Example::

        flatbuffer_bytes(frozen)     # what tflm_export.convert(tfjpq.export(frozen), x).size gives
    """
    import numpy as np

    import tflm_export
    from tfjpq.export import export
    from tfjpq.search import freeze

    probe = freeze(search, project=False)
    if distinct_clips:
        for i, choice in enumerate(probe.activation_choices()):
            choice.clip.assign(float(choice.clip.numpy()) * (1.0 + (i + 1) / 1000.0))
    rng = np.random.default_rng(seed)
    shapes = [tuple(int(d) for d in t.shape[1:]) for t in probe.inputs]
    data = [rng.uniform(0, 1, (8,) + sh).astype("float32") for sh in shapes]
    art = tflm_export.convert(export(probe), representative_data=data[0] if len(data) == 1 else data,
                              check_tflm=False)
    size = len(art.model_bytes)
    # The copies and the converter leave cyclic garbage; freed whenever Python's collector next runs, in
    # the middle of training, it moves where TensorFlow allocates later tensors, and that moved a ResNet-8
    # search by float rounding from one process to another (docs/reliability.md, "Determinism").
    del probe, art
    gc.collect()
    return size


# The gradient of P(every channel of a layer is at most b bits), which prices the layer stored
# as one tensor. The exact product gives one channel's move almost no gradient until every other
# channel has moved too, so a search whose layers sit at their widest width only ever sees the
# saving of pruning. With True, the value stays the exact product (the hard cost is unchanged)
# and the gradient is that of the mean over channels: each channel gets its share of the saving
# of the whole layer moving down, as if the layer's width were one choice.
SHARED_WIDTH_GRADIENT = True


def _all_at_most(p_channels):
    """P(all channels at most a width) from the per-channel probabilities; gradient per SHARED_WIDTH_GRADIENT."""
    exact = tf.reduce_prod(p_channels)
    if not SHARED_WIDTH_GRADIENT:
        return exact
    shared = tf.reduce_mean(p_channels)
    return shared + tf.stop_gradient(exact - shared)


SCALE_BYTES_PER_CHANNEL = 4  # float32 per-channel weight scale kept by the lean flatbuffer


def _builtin_boards():
    from tflm_export import BOARDS

    return BOARDS
