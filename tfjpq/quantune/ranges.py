"""Activation range estimators: a tensor's float values -> the ``(low, high)`` its int8 grid covers.

Each estimator is ``f(values) -> (low, high)`` with ``low <= 0 <= high`` (an
int8 activation grid holds 0 exactly); :func:`estimator` turns a Quantune
``act_range`` name into the callable ``tflm_export.convert(activation_ranges=...)``
takes.

* ``minmax``: the observed range (what the TFLite converter calibrates).
* ``percentile-<p>``: the ``p``-th percentile of the values (and the
  ``100 - p``-th for the low end of signed tensors).
* ``kl``: TensorRT's entropy calibration: the clip whose 128-bin (signed,
  on ``|x|``) or 255-bin (non-negative) quantized histogram has the smallest KL
  divergence from the 2048-bin reference histogram.
* ``mse``: the clip (a fraction of the observed range, 64 candidates) minimizing
  the mean squared error of int8 quantize-dequantize.

Example::

    from tfjpq.quantune import ranges
    f = ranges.estimator("percentile-99.9")
    f("conv1", np.random.default_rng(0).exponential(size=10_000))   # (0.0, ~6.9)
"""

from __future__ import annotations

import numpy as np

__all__ = ["minmax", "percentile", "kl", "mse", "estimator"]

_BINS = 2048


def _split(v):
    v = np.asarray(v, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return v, 0.0, 0.0
    return v, min(0.0, float(v.min())), max(0.0, float(v.max()))


def minmax(values):
    """The observed range, widened to hold 0."""
    _, lo, hi = _split(values)
    return lo, hi


def percentile(values, p: float):
    """``(percentile(100 - p), percentile(p))``, widened to hold 0; min-max where that is narrower."""
    v, lo, hi = _split(values)
    if v.size == 0:
        return 0.0, 0.0
    plo = min(0.0, float(np.percentile(v, 100.0 - p))) if lo < 0 else 0.0
    phi = max(0.0, float(np.percentile(v, p))) if hi > 0 else 0.0
    return max(lo, plo), min(hi, phi)


def _kl_threshold(a, amax, nq):
    """TensorRT's entropy calibration on ``|x|`` values ``a``: the best clip of ``[0, amax]`` for ``nq`` bins."""
    hist, edges = np.histogram(a, bins=_BINS, range=(0.0, amax))
    hist = hist.astype(np.float64)
    best, best_i = np.inf, _BINS
    for i in range(nq, _BINS + 1, 16):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nz = p > 0
        if not nz.any():
            continue
        # merge i bins into nq, spread each merged count evenly over its non-zero source bins
        idx = (np.arange(i) * nq) // i
        merged = np.bincount(idx, weights=hist[:i], minlength=nq)
        counts = np.bincount(idx, weights=(hist[:i] > 0).astype(np.float64), minlength=nq)
        q = np.where(hist[:i] > 0, merged[idx] / np.maximum(counts[idx], 1), 0.0)
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-12)
        m = nz & (qs > 0)
        if (nz & ~m).any():
            div = np.inf if not m.any() else float(np.sum(ps[m] * np.log(ps[m] / qs[m]))) + 1.0
        else:
            div = float(np.sum(ps[m] * np.log(ps[m] / qs[m])))
        if div < best:
            best, best_i = div, i
    return float(edges[best_i])


def kl(values):
    """Entropy (KL) calibration; signed tensors clip ``|x|`` symmetrically (128 bins), others use 255 bins."""
    v, lo, hi = _split(values)
    if v.size == 0 or hi - lo <= 0:
        return lo, hi
    if lo < 0:
        t = _kl_threshold(np.abs(v), max(-lo, hi), 128)
        return max(lo, -t), min(hi, t)
    return 0.0, _kl_threshold(v, hi, 255)


def _qdq_error(v, lo, hi):
    scale = (hi - lo) / 255.0
    if scale <= 0:
        return float(np.mean(v * v))
    zp = np.round(-128 - lo / scale)
    q = np.clip(np.round(v / scale) + zp, -128, 127)
    return float(np.mean(((q - zp) * scale - v) ** 2))


def mse(values, candidates: int = 64, max_values: int = 50_000):
    """The clip ``alpha * (low, high)``, alpha in (0, 1], minimizing the int8 quantization MSE."""
    v, lo, hi = _split(values)
    if v.size == 0 or hi - lo <= 0:
        return lo, hi
    if v.size > max_values:
        v = np.random.default_rng(0).choice(v, max_values, replace=False)
    best, best_a = np.inf, 1.0
    for a in np.linspace(1.0 / candidates, 1.0, candidates):
        e = _qdq_error(v, a * lo, a * hi)
        if e < best:
            best, best_a = e, a
    return best_a * lo, best_a * hi


def estimator(name: str):
    """The ``convert(activation_ranges=...)`` callable ``(tensor_name, values) -> (low, high)`` for ``name``."""
    if name == "minmax":
        fn = minmax
    elif name.startswith("percentile-"):
        p = float(name[len("percentile-"):])

        def fn(v):
            return percentile(v, p)
    elif name == "kl":
        fn = kl
    elif name == "mse":
        fn = mse
    else:
        from tfjpq.quantune.space import QuantuneError

        raise QuantuneError(f"unknown activation range method {name!r}")

    def ranges(tensor_name, values):
        return fn(values)

    ranges.__name__ = f"ranges_{name}"
    return ranges
