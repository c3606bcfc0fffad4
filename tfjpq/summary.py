"""``profile`` and ``summary``: channels kept, bit-widths, weight bytes and MACs per layer.

Works on search models (the current argmax choices: what ``freeze`` would
fix), frozen models, exported models (the bit-widths ``tfjpq.export``
recorded in ``model.channel_bits``) and any plain Keras model. For plain
models each output channel's precision is read from its weights: the smallest
bit-width whose symmetric grid holds them; float weights count as 8 bits (what
int8 conversion stores). An all-zero channel of a plain model (a mask, not a
removal) still counts: it is stored and computed, at 2 bits.

Weight bytes are the ideal packed size, ``sum(weights x bits) / 8``; biases
(int32 after conversion) are counted apart. ``packed_bytes`` is what
``tflm_export.convert`` will store for the weights (INT4, LUT or int8 per
tensor, by ``tflm_export.storage``; LUT tables and headers included, the
DECODE operator's graph records not).

Example::

    prof = tfjpq.profile(model)
    prof.totals["weight_bytes"], prof.totals["macs"]
    tfjpq.summary(model)     # the same as a table
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfjpq import graph
from tfjpq.layers import SearchLinear
from tfjpq.search import SearchModel, live_input_mask

__all__ = ["BITS_CANDIDATES", "detect_channel_bits", "Profile", "packed_bytes", "profile", "summary"]

BITS_CANDIDATES = (2, 3, 4, 5, 6, 7, 8)


def detect_channel_bits(w, channel_axis=-1, rtol=1e-4) -> np.ndarray:
    """Per output channel, the smallest bit-width whose symmetric grid holds the weights (8 if none; 0 if all zero)."""
    w = np.moveaxis(np.asarray(w, np.float64), channel_axis, -1).reshape(-1, np.asarray(w).shape[channel_axis])
    out = np.full(w.shape[1], 8, dtype=np.int64)
    for c in range(w.shape[1]):
        col = w[:, c]
        m = np.max(np.abs(col))
        if m == 0:
            out[c] = 0
            continue
        for b in BITS_CANDIDATES:
            n = 2 ** (b - 1) - 1
            q = col / (m / n)
            if np.all(np.abs(q - np.round(q)) < rtol * n + 1e-6):
                out[c] = b
                break
    return out


@dataclasses.dataclass
class Profile:
    rows: list
    totals: dict

    def __str__(self):
        head = f"{'layer':<22}{'kind':<10}{'channels':>12}{'bits (count)':>26}{'act':>5}{'weight B':>11}{'MACs':>12}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            hist = " ".join(f"{b}:{n}" for b, n in sorted(r["bits_histogram"].items()))
            lines.append(f"{r['name'][:21]:<22}{r['kind']:<10}{r['channels_kept']:>5}/{r['channels']:<6}{hist:>26}"
                         f"{r['act_bits'] or '-':>5}{r['weight_bytes']:>11.0f}{r['macs']:>12,d}")
        t = self.totals
        lines.append("-" * len(head))
        hist = " ".join(f"{b}:{n}" for b, n in sorted(t["bits_histogram"].items()))
        lines.append(f"{'total':<32}{t['channels_kept']:>5}/{t['channels']:<6}{hist:>26}{'':>5}"
                     f"{t['weight_bytes']:>11.0f}{t['macs']:>12,d}")
        lines.append(f"params kept {t['params']:,d}; weight bytes {t['weight_bytes']:,.0f} "
                     f"(all-8-bit {t['weight_bytes_int8']:,.0f}, {t['size_ratio']:.1%}; TFLM-packed "
                     f"{t['packed_bytes']:,d}); "
                     f"bias bytes {t['bias_bytes']:,d}; MACs {t['macs']:,d}")
        for r in self.rows:
            if r.get("note"):
                lines.append(f"  {r['name']}: {r['note']}")
        if t.get("flatbuffer"):
            lines.append(format_breakdown(t["flatbuffer"]))
        return "\n".join(lines)


def format_breakdown(b) -> str:
    """One line per part of :func:`tflm_export.lean.breakdown`, largest first, with its share of the file."""
    total = b["total"]
    parts = sorted(b["parts"].items(), key=lambda kv: -kv[1])
    return (f"flatbuffer {total:,d} B: "
            + ", ".join(f"{name} {n:,d} ({n / total:.1%})" for name, n in parts if n))


def packed_bytes(kind, bits, per_channel_weights, regroup) -> int:
    """Weight bytes ``tflm_export`` stores for one layer's kept channels.

    ``regroup``: the layer is split into one tensor per precision (as
    ``tfjpq.export.split_groups`` decides for its group).
    """
    from tflm_export import storage

    kept = bits[bits != 0]
    if len(kept) == 0:
        return 0
    groups = [kept[kept == b] for b in np.unique(kept)] if regroup else [kept]
    total = 0
    for g in groups:
        n = int(per_channel_weights)
        shape = {"dense": (len(g), n), "conv": (len(g), n, 1, 1), "depthwise": (1, n, 1, len(g))}[kind]
        plan = storage.plan_tensor(graph.tflite_op(kind), shape, bits=[int(b) for b in g])
        total += plan.weight_bytes - (storage.lut_overhead_bytes(len(g)) if plan.method == "lut" else 0)
    return int(total)


def _row(name, kind, channels, bits, cin_kept, taps, pixels, act_bits, regroup=False):
    kept = bits[bits != 0]
    per_channel_weights = taps if kind == "depthwise" else taps * cin_kept
    hist = {int(b): int(n) for b, n in zip(*np.unique(bits, return_counts=True))}
    return {
        "name": name, "kind": kind, "channels": int(channels), "channels_kept": int(len(kept)),
        "bits_histogram": hist, "act_bits": act_bits, "in_channels_kept": int(cin_kept),
        "params": int(per_channel_weights * len(kept)),
        "weight_bytes": float(per_channel_weights * kept.sum() / 8.0),
        "weight_bytes_int8": float(per_channel_weights * len(kept)),
        "packed_bytes": packed_bytes(kind, bits, per_channel_weights, regroup),
        "bias_bytes": int(4 * len(kept)),
        "macs": int(pixels * per_channel_weights * len(kept)),
    }


def _search_rows(model):
    choices = {c.name: c for c in model.precision_choices()}
    acts = {a.name: a for a in model.activation_choices()}
    selected = {n: c.selected_bits() for n, c in choices.items()}
    from tfjpq.export import split_groups

    splits = split_groups(model)
    rows = []
    for layer in model.search_layers():
        note = choices[layer.group].note
        cin = int(live_input_mask(layer, selected).sum())
        act = acts[layer.act_quantizer].selected_bits() if layer.act_quantizer else None
        regroup = splits[layer.group] and layer.kind != "depthwise"
        rows.append(_row(layer.name, layer.kind, layer.out_channels, selected[layer.group], cin,
                         layer.kernel_taps(), layer.out_pixels(), act, regroup))
        if note:
            rows[-1]["note"] = note
    return rows


def _plain_rows(model):
    from tflm_export.packing import recorded_channel_bits

    recorded = recorded_channel_bits(model)  # what tfjpq.export recorded; detected from the values otherwise
    model = graph.check_model(model, None, "tfjpq.summary")
    rows = []
    for node in graph.topological_nodes(model):
        layer = node.operation
        kind = graph.layer_kind(layer)
        if kind not in ("conv", "depthwise", "dense"):
            continue
        w = layer.get_weights()[0]
        out_shape = node.outputs[0].shape
        pixels = int(np.prod([int(d) for d in out_shape[1:-1]])) if len(out_shape) > 2 else 1
        if layer.name in recorded:
            bits = np.array(recorded[layer.name], dtype=np.int64)
        else:
            bits = detect_channel_bits(w, graph.kernel_channel_axis(layer))
        bits[bits == 0] = 2  # an all-zero channel (a mask, not a removal) is still stored and computed
        taps = int(np.prod(w.shape[:2])) if kind != "dense" else 1
        cin = int(w.shape[-2]) if kind != "depthwise" else 1
        act = None
        src = node.input_tensors[0]._keras_history.operation
        if src.__class__.__name__ == "ActivationQuantizer":
            act = src.bits
        rows.append(_row(layer.name, kind, len(bits), bits, cin, taps, pixels, act))
    return rows


def profile(model) -> Profile:
    """Per-layer and total figures (see module docstring); ``rows`` are dicts, ``totals`` a dict."""
    rows = _search_rows(model) if isinstance(model, SearchModel) else _plain_rows(model)
    hist = {}
    for r in rows:
        for b, n in r["bits_histogram"].items():
            hist[b] = hist.get(b, 0) + n
    totals = {k: sum(r[k] for r in rows) for k in
              ("channels", "channels_kept", "params", "weight_bytes", "weight_bytes_int8", "packed_bytes", "bias_bytes",
               "macs")}
    totals["bits_histogram"] = hist
    totals["size_ratio"] = totals["weight_bytes"] / max(totals["weight_bytes_int8"], 1.0)
    if isinstance(model, SearchModel):
        totals["cost"] = float(model.cost())
        totals["cost_unit"] = model.cost_model.unit
    return Profile(rows=rows, totals=totals)


def summary(model, print_fn=print, flatbuffer=None) -> Profile:
    """Print the per-layer table of :func:`profile` and return the profile.

    With ``flatbuffer`` (a ``tflm_export.Artifact``, or .tflite bytes), the
    table ends with where every byte of that file goes (weights, biases, LUT
    tables, quantization, graph, names, metadata, padding), also in
    ``profile.totals["flatbuffer"]``.

    Example::

        tfjpq.summary(search)
        art = tflm_export.convert(deploy, x[:200])
        tfjpq.summary(deploy, flatbuffer=art)
        # ... flatbuffer 29,472 B: weights 21,133 (71.7%), graph 4,565 (15.5%), ...
    """
    prof = profile(model)
    if flatbuffer is not None:
        from tflm_export import lean

        data = flatbuffer.model_bytes if hasattr(flatbuffer, "model_bytes") else bytes(flatbuffer)
        prof.totals["flatbuffer"] = lean.breakdown(data)
    print_fn(f"tfjpq summary of {model.name!r}")
    print_fn(str(prof))
    return prof
