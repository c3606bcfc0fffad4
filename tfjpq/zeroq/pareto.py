"""ZeroQ mixed precision: per-layer weight bit-widths on the Pareto frontier of size vs sensitivity.

The problem: choose ``b_i`` in ``bits`` for every layer ``i`` to minimise
``sum_i S_i(b_i)`` (the sensitivities of :func:`tfjpq.zeroq.sensitivity`,
assumed additive as in the paper) subject to ``sum_i bytes_i(b_i) <= budget``,
where ``bytes_i(b)`` is the kernel's storage at ``b`` bits (biases and
per-channel scales are the same for every plan and not counted). Two costs:

The costs come from the registry of :mod:`tfjpq.cost` (any cost model
with ``kernel_bytes``, so in bytes):

* ``cost="ideal"`` (default; the ``"size"`` cost): ``ceil(params_i * b / 8)``, every bit counted.
* ``cost="tflm"`` (``"tflm:BOARD"`` alike): the bytes ``tflm_export.convert`` really stores for the
  tensor, from :func:`tflm_export.storage.plan_tensor` (int8 for 5-8 bits,
  INT4 for conv / depthwise at <= 4 bits, LUT compression where it is smaller,
  e.g. Dense below 8 bits, or conv at 2-3 bits when the tables pay off). A LUT
  tensor's flatbuffer record also carries two derived tensor names (about 100
  bytes, known only after conversion); that is left out.
* or a callable ``cost(name, class_name, kernel_shape, bits) -> bytes``.

It is a multiple-choice knapsack, solved exactly by dynamic programming over
size bins:

* bin size ``q`` bytes: ``bin_bytes`` if given, else 1 when the all-widest
  model is at most ``max_bins`` (2**20) bytes, else ``ceil(max_total / max_bins)``.
  With ``q = 1`` the DP is exact.
* rounding: each layer's cost is rounded **up** to whole bins,
  ``ceil(bytes_i(b) / q)``, and the budget **down**, ``floor(budget / q)``. So a
  plan the DP accepts always fits the budget in real bytes; with ``q > 1`` it
  may miss plans that fit with less than ``q`` bytes to spare per layer.
* ``best[j]`` = least total sensitivity of the layers so far using exactly ``j``
  bins; one pass per layer over every choice (vectorised in NumPy), with the
  argmin kept per layer and bin for backtracking. Cost ``O(L * |bits| * bins)``.
* The uniform plans that fit are checked too, so a returned plan is never worse
  than any uniform width that fits the same budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import keras
import numpy as np

from tfjpq import cost as cost_lib
from tfjpq import quantizers
from tfjpq.graph import check_model, layer_kind, layers_with
from tfjpq.zeroq.sensitivity import Sensitivity

__all__ = ["MAX_BINS", "Plan", "Frontier", "tflm_cost", "uniform_plan", "pareto"]

MAX_BINS = 2 ** 20


@dataclass
class Plan:
    """Per-layer weight bit-widths, with their size and total sensitivity.

    Attributes:
        bits: ``{layer name: bit-width}`` in model order.
        bytes: packed kernel bytes of the plan (exact, not binned).
        sensitivity: sum of the layers' sensitivities at their widths.
        budget_bytes: the budget it was chosen for (``None`` on a frontier).
        layer_bytes: ``{layer name: bytes at its width}``.
    """

    bits: dict
    bytes: int
    sensitivity: float
    budget_bytes: int | None = None
    layer_bytes: dict = field(default_factory=dict)

    def apply(self, model):
        """A clone of ``model`` whose planned kernels are fake-quantized per output channel.

        The clone holds float weights that lie on the planned grids (at most
        ``2**b - 1`` distinct values per output channel) and records the
        planned widths in ``clone.channel_bits``, so ``tflm_export.convert``
        packs each layer at its width. BN
        layers stay; folding them later scales whole channels, which keeps
        every channel's grid (symmetric per-channel quantization commutes with
        a per-channel scale).

        Example::

            plan = tfjpq.zeroq.pareto(model, sens, budget_bytes=20_000)
            deploy = plan.apply(model)
            art = tflm_export.convert(deploy, representative_data=x_syn)
        """
        check_model(model, "known", "zeroq.Plan.apply")
        by_name = {l.name: l for l in layers_with(model, "quantizable")}
        missing = [n for n in self.bits if n not in by_name]
        if missing:
            raise ValueError(f"plan layers {missing} are not Conv2D / DepthwiseConv2D / Dense layers of "
                             f"{model.name!r}; was the plan made for another model?")
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        recorded = {}  # the planned bits per output channel, read by tflm_export.convert and tfjpq.summary
        for name, b in self.bits.items():
            src, dst = by_name[name], clone.get_layer(name)
            w = np.asarray(src.kernel.numpy(), np.float32)
            if tuple(dst.kernel.shape) != w.shape:
                raise ValueError(f"layer {name!r}: kernel shape {w.shape} changed in the clone")
            dst.kernel.assign(quantizers.quantize_kernel_np(src, w, b))
            channels = w.shape[2] * w.shape[3] if layer_kind(src) == "depthwise" else w.shape[-1]
            recorded[name] = (int(b),) * int(channels)
        from tflm_export.packing import CHANNEL_BITS_ATTR

        setattr(clone, CHANNEL_BITS_ATTR, recorded)
        return clone

    def to_dict(self):
        return {"bits": dict(self.bits), "bytes": int(self.bytes), "sensitivity": float(self.sensitivity),
                "budget_bytes": self.budget_bytes, "layer_bytes": dict(self.layer_bytes)}

    def __str__(self):
        lines = [f"Plan: {self.bytes} bytes"
                 + (f" (budget {self.budget_bytes})" if self.budget_bytes is not None else "")
                 + f", total sensitivity {self.sensitivity:.4e}"]
        for n, b in self.bits.items():
            lines.append(f"  {n:<22}{b:>3} bits {self.layer_bytes.get(n, 0):>9} bytes")
        return "\n".join(lines)

    def plot(self, path=None, ax=None):
        """Bar chart of the bit-width per layer; saved as PNG when ``path`` is given. Returns the figure."""
        fig, ax = _figure(ax)
        names = list(self.bits)
        ax.bar(range(len(names)), [self.bits[n] for n in names], color="tab:blue")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("weight bits")
        ax.set_title(f"{self.bytes} B, sensitivity {self.sensitivity:.3g}")
        return _save(fig, path)


class Frontier(list):
    """The Pareto frontier: a list of ``(bytes, total sensitivity, Plan)``, bytes ascending.

    Every entry uses fewer bytes than the next and has a strictly larger
    sensitivity. ``frontier.plan_for(budget)`` picks the best entry that fits;
    ``frontier.plot("f.png")`` draws it.
    """

    def __init__(self, entries, sens: Sensitivity, bin_bytes: int, cost="ideal"):
        super().__init__(entries)
        self.sens = sens
        self.bin_bytes = bin_bytes
        self.cost = cost

    def plan_for(self, budget_bytes: int) -> Plan:
        fits = [e for e in self if e[0] <= budget_bytes]
        if not fits:
            raise ValueError(f"no plan fits {budget_bytes} bytes; the smallest takes {self[0][0]} bytes")
        return fits[-1][2]

    def to_dict(self):
        return [{"bytes": int(b), "sensitivity": float(s), "bits": dict(p.bits)} for b, s, p in self]

    def plot(self, path=None, ax=None, uniform=True):
        """Bytes vs total sensitivity (log scale) with the uniform plans marked. Returns the figure."""
        fig, ax = _figure(ax)
        xs = [e[0] for e in self]
        ys = [max(e[1], 1e-12) for e in self]
        ax.step(xs, ys, where="post", color="tab:blue", lw=1)
        ax.plot(xs, ys, ".", color="tab:blue", ms=3, label="mixed precision (DP frontier)")
        if uniform:
            for b in self.sens.bits:
                p = uniform_plan(self.sens, b, self.cost)
                ax.plot([p.bytes], [max(p.sensitivity, 1e-12)], "o", color="tab:red", ms=6)
                ax.annotate(f"uniform {b}b", (p.bytes, max(p.sensitivity, 1e-12)), fontsize=8,
                            textcoords="offset points", xytext=(4, 4))
        ax.set_yscale("log")
        ax.set_xlabel(f"weight bytes (cost={self.cost if isinstance(self.cost, str) else 'custom'})")
        ax.set_ylabel("total sensitivity (sum of KL)")
        ax.set_title("ZeroQ Pareto frontier")
        ax.legend(fontsize=8)
        return _save(fig, path)


def _figure(ax):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, format="png")
    return fig


def tflm_cost(name: str, cls: str, shape: tuple, bits: int) -> int:
    """Bytes ``tflm_export`` stores for this kernel at ``bits`` (the registered ``"tflm"`` cost's ``kernel_bytes``)."""
    return cost_lib.get("tflm").kernel_bytes(cls, tuple(shape), bits)


def _byte_cost(cost):
    """``cost(name, class_name, shape, bits) -> bytes`` for a registered byte cost, a CostModel or a callable."""
    if isinstance(cost, str) or isinstance(cost, cost_lib.CostModel):
        try:
            model = cost_lib.get("size" if cost == "ideal" else cost)
        except ValueError:
            model = None
        if model is not None and type(model).kernel_bytes is not cost_lib.CostModel.kernel_bytes:
            return lambda name, cls, shape, bits: model.kernel_bytes(cls, tuple(shape), bits)
    elif callable(cost):
        return cost
    raise ValueError(f"cost must be 'ideal' (= 'size'), a registered cost in bytes ({', '.join(_byte_costs())}), "
                     f"a CostModel with kernel_bytes, or a callable(name, class, shape, bits); got {cost!r}")


def _byte_costs():
    names = []
    for name in cost_lib.registered():
        try:
            model = cost_lib.get(name)
        except (TypeError, ValueError):  # a registered cost that needs arguments
            continue
        if type(model).kernel_bytes is not cost_lib.CostModel.kernel_bytes:
            names.append(name)
    return names


def _cost_table(sens: Sensitivity, cost) -> dict:
    """``{layer: {bits: bytes}}`` under ``cost`` (see :func:`pareto`)."""
    if cost in ("ideal", "size"):
        return {n: {b: sens.weight_bytes(n, b) for b in sens.bits} for n in sens.layers}
    fn = _byte_cost(cost)
    if not callable(cost) and not sens.shapes:
        raise ValueError(f"cost={cost!r} needs the kernel shapes; measure the sensitivity with zeroq.sensitivity")
    table = {}
    for n in sens.layers:
        table[n] = {}
        for b in sens.bits:
            v = fn(n, sens.classes.get(n, ""), tuple(sens.shapes.get(n, ())), b)
            if not (isinstance(v, (int, np.integer)) and v >= 0):
                raise ValueError(f"cost for layer {n!r} at {b} bits must be a non-negative int, got {v!r}")
            table[n][b] = int(v)
    return table


def _make_plan(sens: Sensitivity, choice: dict, budget=None, table=None) -> Plan:
    table = table or _cost_table(sens, "ideal")
    lb = {n: table[n][choice[n]] for n in sens.layers}
    return Plan(bits={n: int(choice[n]) for n in sens.layers}, bytes=int(sum(lb.values())),
                sensitivity=float(sum(sens.kl[n][choice[n]] for n in sens.layers)),
                budget_bytes=budget, layer_bytes=lb)


def uniform_plan(sens: Sensitivity, bits: int, cost="ideal") -> Plan:
    """Every measured layer at ``bits`` (must be one of ``sens.bits``), sized under ``cost``."""
    if int(bits) not in sens.bits:
        raise ValueError(f"{bits} bits was not measured; the sensitivity has {sens.bits}")
    return _make_plan(sens, {n: int(bits) for n in sens.layers}, table=_cost_table(sens, cost))


def _dp(sens: Sensitivity, q: int, max_bin: int, table: dict):
    """best[j], choice[i, j] for exactly j bins (inf where unreachable)."""
    bits = sens.bits
    best = np.full(max_bin + 1, np.inf)
    best[0] = 0.0
    choices = np.zeros((len(sens.layers), max_bin + 1), np.int8)
    costs = []
    for i, n in enumerate(sens.layers):
        cb = [-(-table[n][b] // q) for b in bits]
        costs.append(cb)
        new = np.full_like(best, np.inf)
        for k, (b, c) in enumerate(zip(bits, cb)):
            if c > max_bin:
                continue
            cand = np.full_like(best, np.inf)
            cand[c:] = best[: max_bin + 1 - c] + sens.kl[n][b]
            better = cand < new
            new[better] = cand[better]
            choices[i, better] = k
        best = new
    return best, choices, costs


def _backtrack(sens, choices, costs, j):
    choice = {}
    for i in range(len(sens.layers) - 1, -1, -1):
        k = int(choices[i, j])
        choice[sens.layers[i]] = sens.bits[k]
        j -= costs[i][k]
    assert j == 0
    return choice


def pareto(model, sensitivity: Sensitivity, budget_bytes=None, cost="ideal", bin_bytes=None, max_bins=MAX_BINS):
    """Per-layer weight bit-widths minimising total sensitivity under a weight-memory budget.

    Args:
        model: the model the sensitivity was measured on (its layer names are
            checked against the table); ``None`` skips the check.
        sensitivity: a :class:`Sensitivity` from :func:`tfjpq.zeroq.sensitivity`.
        budget_bytes: kernel bytes allowed, under ``cost``. ``None`` returns
            the whole frontier.
        cost: ``"ideal"`` / ``"size"`` (``ceil(params * bits / 8)``), ``"tflm"``
            (what tflm_export stores: int8 / INT4 / LUT), another registered
            byte cost of :mod:`tfjpq.cost`, a ``CostModel`` instance, or a callable
            ``(name, class_name, kernel_shape, bits) -> bytes``.
        bin_bytes: DP size bin in bytes (see the module docs for the default
            and the rounding: costs up, budget down, so budgets always hold).
        max_bins: bins the default bin size aims for.

    Returns:
        a :class:`Plan` when ``budget_bytes`` is given, else a :class:`Frontier`
        (a list of ``(bytes, sensitivity, Plan)`` with a ``plot`` method).

    Raises:
        ValueError: the budget is below the smallest plan, or the sensitivity
            names layers the model does not have.

    Example::

        sens = tfjpq.zeroq.sensitivity(model, x_syn, bits=(2, 4, 8))
        four = tfjpq.zeroq.uniform_plan(sens, 4)
        plan = tfjpq.zeroq.pareto(model, sens, budget_bytes=four.bytes)
        plan.sensitivity <= four.sensitivity      # True
        tfjpq.zeroq.pareto(model, sens).plot("frontier.png")
    """
    if not isinstance(sensitivity, Sensitivity):
        raise TypeError(f"pareto needs the Sensitivity returned by zeroq.sensitivity, got {type(sensitivity).__name__}")
    if model is not None:
        names = {l.name for l in layers_with(model, "quantizable")}
        unknown = [n for n in sensitivity.layers if n not in names]
        if unknown:
            raise ValueError(f"the sensitivity names layers {unknown} that model {model.name!r} does not have")
    sens = sensitivity
    table = _cost_table(sens, cost)
    max_total = sum(max(table[n].values()) for n in sens.layers)
    min_total = sum(min(table[n].values()) for n in sens.layers)
    if bin_bytes is None:
        q = 1 if max_total <= max_bins else math.ceil(max_total / max_bins)
    else:
        q = int(bin_bytes)
        if q < 1:
            raise ValueError(f"bin_bytes must be >= 1, got {bin_bytes}")
    if budget_bytes is not None and budget_bytes < min_total:
        raise ValueError(f"budget of {budget_bytes} bytes is below the smallest plan: every layer at "
                         f"its cheapest width takes {min_total} bytes (cost={cost!r})")

    top = sum(-(-max(table[n].values()) // q) for n in sens.layers)
    if budget_bytes is not None:
        top = min(top, int(budget_bytes) // q)
    best, choices, costs = _dp(sens, q, top, table)

    if budget_bytes is not None:
        candidates = []
        if np.isfinite(best).any():
            j = int(np.argmin(best))  # first (fewest bins) among the minima
            candidates.append(_make_plan(sens, _backtrack(sens, choices, costs, j), int(budget_bytes), table))
        for b in sens.bits:
            u = uniform_plan(sens, b, cost)
            if u.bytes <= budget_bytes:
                u.budget_bytes = int(budget_bytes)
                candidates.append(u)
        if not candidates:
            raise ValueError(f"no plan fits {budget_bytes} bytes at bin size {q} bytes (the smallest plan "
                             f"takes {min_total} bytes); pass bin_bytes=1 for an exact search")
        return min(candidates, key=lambda p: (p.sensitivity, p.bytes))

    # Pre-filter on bins (a frontier point needs less sensitivity than every smaller bin total),
    # then filter again on exact bytes.
    keep, floor = [], np.inf
    for j in np.flatnonzero(np.isfinite(best)):
        if best[j] < floor:
            keep.append(int(j))
            floor = best[j]
    plans = [_make_plan(sens, _backtrack(sens, choices, costs, j), None, table) for j in keep]
    plans += [uniform_plan(sens, b, cost) for b in sens.bits]
    plans.sort(key=lambda p: (p.bytes, p.sensitivity))
    entries, floor = [], np.inf
    for p in plans:
        if p.sensitivity < floor:
            entries.append((p.bytes, p.sensitivity, p))
            floor = p.sensitivity
    return Frontier(entries, sens, q, cost)
