"""PreCropping: turn per-layer densities into a narrower, dense, freshly initialized model.

The density-to-channels rule
----------------------------
Channels come in *groups* (the shared channel walk of
:mod:`tfjpq.graph.channels`): a group is one width that several layers must
share. A ``Conv``/``Dense`` layer starts a group with its output channels;
layers that keep the channel count (BatchNorm, activations, pooling, dropout,
padding, ...) pass it on; a depthwise convolution passes its input's group on
(times its ``depth_multiplier``); an ``Add`` (and ``Subtract``, ``Multiply``,
``Average``, ``Maximum``, ``Minimum``) *joins* the groups of its inputs into
one (union-find), so residual branches keep equal widths; ``Concatenate``
lays groups side by side; ``Flatten`` repeats them once per spatial position.
The model's input, every group that reaches a model output, and groups whose
channels a merge cannot match one to one (an Add of a Concatenate and a single
convolution) are fixed (width multiplier 1).

Give each free group ``g`` a width multiplier ``a_g <= 1``. The kernel of a
``Conv``/``Dense`` layer ``l`` then holds about ``a_out(l) * a_in(l)`` of its
weights (``a_in`` is the channel-weighted mean over the groups feeding it), a
depthwise kernel ``a_in(l)``. ``crop`` picks the multipliers so that every
layer's parameter count follows its density ``d_l`` as closely as possible,
a linear least-squares problem in ``log a``::

    minimize    sum_l d_l n_l (log a_out(l) + log a_in(l) - log d_l) ** 2     (per-layer fit)
              + BALANCE sum_g N_g (log a_g - 1/2 log dbar_g) ** 2              (balance)
    subject to  a_g = 1 for fixed groups,  a_g <= 1

``n_l`` is layer ``l``'s kernel size, so a layer weighs as many weights as it
should keep: a small layer that the method pruned away (a 1x1 shortcut at
density 0) follows its neighbours instead of dragging a shared width to zero.
The balance term (``BALANCE = 0.1``; ``dbar_g`` the density of the group's
producers, ``N_g`` the kept weights of the layers touching it) only settles
what the fit leaves open: in a chain whose layers all have density ``d``, any
wide/narrow alternation fits, and the balance picks the rule *output channels
x sqrt(d), input channels following the producer*, so each layer keeps ``d``
of its weights. The bound ``a <= 1`` is kept by an active set (pin at 1,
solve again).

Then one common factor rescales all free multipliers so the total kernel
parameter count hits ``sum_l d_l n_l`` (what an unstructured mask at the same
densities keeps; or the whole model's count, see ``match`` and
``target_params`` of :func:`crop`), and widths are rounded (at least
``min_channels``).

The cropped model is rebuilt layer by layer from each layer's ``get_config``
with new ``filters``/``units`` (``keras.models.clone_model``), so its weights
are freshly initialized; nothing is copied from the original.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import keras
import numpy as np

from tfjpq.errors import UnsupportedModelError
from tfjpq.graph import check_model, kind_of, registry, supported_names
from tfjpq.graph.channels import ChannelWalk
from tfjpq.precrop.saliency import SCORED_LAYERS

SUPPORTED = tuple(supported_names("croppable"))

# The old name of the error crop raises; the same class as every tfjpq entry point's.
UnsupportedLayerError = UnsupportedModelError


def _unsupported(layer, why):
    return UnsupportedModelError(
        f"precrop.crop cannot handle layer {layer.name!r} ({type(layer).__name__}): {why}"
    )


# --------------------------------------------------------------------------- channel bookkeeping


@dataclasses.dataclass
class _LayerInfo:
    layer: object
    kind: str  # "source" | "depthwise" | "other"
    in_segs: tuple = ()  # (group | None, factor): channels = sum(factor * width(group)), width(None) = 1
    out_group: int | None = None
    kernel_elems: int = 1  # spatial size of the kernel
    multiplier: int = 1  # depthwise depth_multiplier
    bias: bool = False
    in_channels: int = 0
    other_params: list = dataclasses.field(default_factory=list)  # [(size, scales_with_channels)]


class _CropWalk(ChannelWalk):
    """The shared channel walk (:mod:`tfjpq.graph.channels`) with PreCrop's rules and parameter bookkeeping."""

    def step(self, node, kind, ins):
        layer = node.operation
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            raise _unsupported(layer, "only channels_last layers are supported")
        if kind.channels == registry.NEW and getattr(layer, "groups", 1) != 1:
            raise _unsupported(layer, f"grouped convolutions (groups={layer.groups}) are not supported")
        if kind.channels not in (registry.NEW, registry.FOLLOW) and layer.weights and len(node.input_tensors) != 1:
            raise _unsupported(layer, "a layer with weights and several inputs is not supported")
        return super().step(node, kind, ins)

    def on_join(self, node, kind, ins):
        # Broadcast operands with one channel (e.g. a scalar gate) keep their width.
        widths = [t.shape[-1] for t in node.input_tensors]
        wide = [lay for lay, w in zip(ins, widths) if w != 1]
        if wide and len(wide) < len(ins):
            for lay, w in zip(ins, widths):
                if w == 1:
                    self.fix(lay, f"{node.operation.name} broadcasts it")
            ins = wide
        return super().on_join(node, kind, ins)

    def finish(self):
        super().finish()
        self.width = {gid: g.channels for gid, g in self.groups.items()}
        self.width[None] = 1
        self.fixed_roots = {gid for gid, g in self.groups.items() if not g.prunable}
        self.source_group = self.producer_group
        self.info = {}
        for node in self.nodes:
            self._note_layer(node)

    def _segs(self, layout):
        return tuple((g, layout.repeat * c // self.width[g]) for g, c in layout.segments)

    def _note_layer(self, node):
        layer, x = node.operation, node.input_tensors[0]
        rule = kind_of(layer).channels
        segs = self._segs(self.layouts[id(x)])
        if rule == registry.NEW:
            self.info[layer.name] = _LayerInfo(
                layer, "source", segs, self.producer_group[layer.name],
                kernel_elems=int(np.prod(layer.kernel_size)) if hasattr(layer, "kernel_size") else 1,
                bias=bool(layer.use_bias), in_channels=int(x.shape[-1]),
            )
        elif rule == registry.FOLLOW:
            self.info[layer.name] = _LayerInfo(
                layer, "depthwise", segs, kernel_elems=int(np.prod(layer.kernel_size)),
                multiplier=int(layer.depth_multiplier), bias=bool(layer.use_bias), in_channels=int(x.shape[-1]),
            )
        elif layer.weights:
            ch = int(x.shape[-1])
            params = [(int(np.prod(w.shape)), bool(len(w.shape) and w.shape[-1] == ch)) for w in layer.weights]
            self.info[layer.name] = _LayerInfo(layer, "other", segs, in_channels=ch, other_params=params)

    # the union-find view the plan below reads (every id is a root once the walk is done)
    @staticmethod
    def find(gid):
        return gid

    def is_fixed(self, gid):
        return gid in self.fixed_roots

    def channels(self, segs, widths=None):
        w = widths if widths is not None else {}
        return sum(f * w.get(g, self.width[g]) for g, f in segs)


def _checked(model):
    return check_model(model, "croppable", "precrop.crop")


def _analyse(model):
    return _CropWalk(model).run()


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass
class CropPlan:
    """What :func:`crop` will build.

    Attributes:
        widths: ``{layer name: (original, new)}`` output channels of every
            Conv / Dense / DepthwiseConv layer.
        groups: lists of Conv/Dense layers whose outputs are joined (by an Add
            or similar) and therefore share one width.
        fixed: layers whose width is fixed (they feed a model output, or are
            joined with the input).
        kernel_params: ``(original, new)`` kernel weights of the scored layers.
        params: ``(original, new)`` trainable + non-trainable parameter counts.
        multipliers: ``{layer name: new / original}`` output width ratio.
    """

    widths: dict
    groups: list
    fixed: list
    kernel_params: tuple
    params: tuple

    @property
    def multipliers(self):
        return {n: new / old for n, (old, new) in self.widths.items()}


def _counts(g, widths):
    """(kernel params, all params) at the given root widths."""
    kernels = total = 0
    for info in g.info.values():
        cin = g.channels(info.in_segs, widths)
        if info.kind == "source":
            cout = widths.get(g.find(info.out_group), g.width[g.find(info.out_group)])
            k = info.kernel_elems * cin * cout
            kernels += k
            total += k + (cout if info.bias else 0)
        elif info.kind == "depthwise":
            k = info.kernel_elems * cin * info.multiplier
            kernels += k
            total += k + (cin * info.multiplier if info.bias else 0)
    return kernels, total


def _other_params(g, widths):
    """Parameters of BatchNorm-like layers: those with a channel axis scale with it."""
    total = 0.0
    for info in g.info.values():
        if info.kind == "other":
            ratio = g.channels(info.in_segs, widths) / info.in_channels
            total += sum(size * ratio if scales else size for size, scales in info.other_params)
    return int(round(total))


def _total(g, widths):
    return _counts(g, widths)[1] + _other_params(g, widths)


def _widths_from_multipliers(g, roots, a, min_channels):
    out = {}
    for r, m in zip(roots, a):
        w = g.width[r]
        out[r] = int(min(w, max(min(min_channels, w), round(m * w))))
    return out


BALANCE = 0.1  # weight of the pull toward sqrt(density), relative to the per-layer fit
MIN_DENSITY = 1e-3


def _solve_log_multipliers(g, roots, dens):
    """Weighted least squares in log space, with log a <= 0 (see the module docstring)."""
    if not roots:
        return np.zeros(0)
    index = {r: i for i, r in enumerate(roots)}
    rows, rhs, weights = [], [], []
    touching = np.zeros(len(roots))  # kept weights of the layers that read or write each group
    produced = np.zeros(len(roots))
    produced_kept = np.zeros(len(roots))
    for name, info in g.info.items():
        if info.kind not in ("source", "depthwise"):
            continue
        d = min(max(float(dens.get(name, 1.0)), 0.0), 1.0)
        n = _layer_kernel(g, info)
        row = np.zeros(len(roots))
        if info.kind == "source":
            r = g.find(info.out_group)
            if r in index:
                row[index[r]] += 1.0
                produced[index[r]] += n
                produced_kept[index[r]] += n * d
        cin = g.channels(info.in_segs)
        for grp, f in info.in_segs:
            r = g.find(grp)
            if r in index:
                row[index[r]] += f * g.width[r] / cin
        touching += n * d * (row != 0)
        rows.append(row)
        rhs.append(math.log(max(d, MIN_DENSITY)))
        weights.append(math.sqrt(n * d))  # by kept weights: a layer pruned away just follows its neighbours
    # The balance rows: each group toward sqrt(its producers' density). They decide the
    # directions the per-layer fit leaves open (e.g. wide/narrow alternation in a chain).
    for i in range(len(roots)):
        row = np.zeros(len(roots))
        row[i] = 1.0
        rows.append(row)
        d_bar = produced_kept[i] / produced[i] if produced[i] else 1.0
        rhs.append(0.5 * math.log(max(d_bar, MIN_DENSITY)))
        weights.append(math.sqrt(BALANCE * max(touching[i], 1.0)))
    w = np.asarray(weights)
    a_mat, b_vec = np.asarray(rows) * w[:, None], np.asarray(rhs) * w
    # Active set for the bound log a <= 0 (no layer grows): pin violators at 0, re-solve.
    free = np.ones(len(roots), bool)
    x = np.zeros(len(roots))
    for _ in range(len(roots) + 1):
        x[:] = 0.0
        if free.any():
            x[free], *_ = np.linalg.lstsq(a_mat[:, free], b_vec, rcond=None)
        if not (x > 1e-12).any():
            break
        free &= x <= 1e-12
    return np.minimum(x, 0.0)


def _layer_kernel(g, info):
    cin = g.channels(info.in_segs)
    if info.kind == "source":
        return info.kernel_elems * cin * g.width[g.find(info.out_group)]
    return info.kernel_elems * cin * info.multiplier


def _match(g, roots, a0, target, count, min_channels):
    """Scale all free multipliers by one factor s so that count(widths) is closest to target."""
    if not roots:
        return {}

    def widths_at(log_s):
        return _widths_from_multipliers(g, roots, np.minimum(np.exp(a0 + log_s), 1.0), min_channels)

    lo, hi = -12.0, float(-np.min(a0)) + 1e-9  # at hi every multiplier is 1
    if count(widths_at(hi)) <= target:
        return widths_at(hi)
    if count(widths_at(lo)) >= target:
        warnings.warn(
            f"precrop.crop: even at {min_channels} channel(s) per group the model keeps "
            f"{count(widths_at(lo))} parameters, above the target {int(target)}",
            stacklevel=3,
        )
        return widths_at(lo)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if count(widths_at(mid)) >= target:
            hi = mid
        else:
            lo = mid
    below, above = widths_at(lo), widths_at(hi)
    return below if abs(count(below) - target) < abs(count(above) - target) else above


def _check_names(g, given, what):
    unknown = [n for n in given if n not in g.info or g.info[n].kind == "other"]
    if unknown:
        names = [n for n, i in g.info.items() if i.kind != "other"]
        raise ValueError(f"{what} name layers that are not Conv/Dense/DepthwiseConv layers of the model: "
                         f"{unknown}; the model's are {names}")


def crop_plan(model, densities=None, *, width_multipliers=None, match: str | None = "kernels",
              target_params: int | None = None, min_channels: int = 1) -> CropPlan:
    """Work out the narrower widths :func:`crop` builds, without building anything.

    Arguments as for :func:`crop`. Returns a :class:`CropPlan`.

    Example::

        plan = precrop.crop_plan(model, precrop.densities(model, "synflow", 0.2))
        plan.widths["block2_conv1"]    # (32, 14)
        plan.groups                    # [['block1_conv2', 'stem'], ...]: joined by Adds
    """
    model = _checked(model)
    _check_plan_arguments(densities, width_multipliers, match, target_params, min_channels)
    g = _analyse(model)
    roots = sorted({g.find(s) for s in g.source_group.values()} - g.fixed_roots)
    if width_multipliers is not None:
        widths = _widths_from_multipliers_given(g, roots, width_multipliers, min_channels)
    else:
        widths = _widths_from_densities(g, roots, densities, match, target_params, min_channels)
    return _make_plan(g, widths)


def _check_plan_arguments(densities, width_multipliers, match, target_params, min_channels):
    if (densities is None) == (width_multipliers is None):
        raise ValueError("give exactly one of densities (per-layer kept fractions, or one number) "
                         "and width_multipliers (per-layer output width ratios, or one number)")
    if match not in ("kernels", "total", None):
        raise ValueError(f"match must be 'kernels', 'total' or None; got {match!r}")
    if target_params is not None:
        if width_multipliers is not None:
            raise ValueError("target_params goes with densities, not with width_multipliers")
        if isinstance(target_params, bool) or not isinstance(target_params, (int, np.integer)) or target_params < 1:
            raise ValueError(f"target_params must be a positive integer; got {target_params!r}")
    if isinstance(min_channels, bool) or not isinstance(min_channels, (int, np.integer)) or min_channels < 1:
        raise ValueError(f"min_channels must be a positive integer; got {min_channels!r}")


def _widths_from_multipliers_given(g, roots, width_multipliers, min_channels):
    """Root widths from per-layer output width ratios (one per joined group)."""
    if isinstance(width_multipliers, (int, float, np.floating)) and not isinstance(width_multipliers, bool):
        mults = {n: float(width_multipliers) for n in g.source_group if not g.is_fixed(g.source_group[n])}
    elif isinstance(width_multipliers, dict):
        mults = dict(width_multipliers)
    else:
        raise TypeError(f"width_multipliers must be a number or a dict; got {type(width_multipliers).__name__}")
    _check_names(g, mults, "width_multipliers")
    per_root = {}
    for name, m in mults.items():
        if not isinstance(m, (int, float, np.floating)) or not 0 < m <= 1:
            raise ValueError(f"width multiplier of {name!r} must be in (0, 1]; got {m!r}")
        if g.info[name].kind == "depthwise":
            if m != 1:
                raise ValueError(f"layer {name!r} is a depthwise convolution: its channels follow its input, "
                                 "so it takes no width multiplier of its own (set the producer's)")
            continue
        r = g.find(g.source_group[name])
        if r in g.fixed_roots:
            if m != 1:
                raise ValueError(f"layer {name!r} feeds a model output (or is joined with the input), so its "
                                 f"width is fixed; it cannot take width multiplier {m}")
            continue
        prev = per_root.get(r)
        if prev is not None and prev[1] != m:
            raise ValueError(
                f"layers {prev[0]!r} and {name!r} are joined (e.g. by an Add) and must keep equal widths, "
                f"but got width multipliers {prev[1]} and {m}; give them the same value"
            )
        per_root[r] = (name, float(m))
    a = np.asarray([per_root.get(r, (None, 1.0))[1] for r in roots])
    return _widths_from_multipliers(g, roots, a, min_channels)


def _widths_from_densities(g, roots, densities, match, target_params, min_channels):
    """Root widths from per-layer densities: the least-squares rule, then the parameter match."""
    scored = [n for n, i in g.info.items() if i.kind in ("source", "depthwise")]
    if isinstance(densities, (int, float, np.floating)) and not isinstance(densities, bool):
        dens = {n: float(densities) for n in scored}
    elif isinstance(densities, dict):
        dens = dict(densities)
    else:
        raise TypeError(f"densities must be a number or a dict; got {type(densities).__name__}")
    _check_names(g, dens, "densities")
    for name, d in dens.items():
        if not isinstance(d, (int, float, np.floating)) or isinstance(d, bool) or not 0 <= d <= 1:
            raise ValueError(f"density of {name!r} must be in [0, 1]; got {d!r}")
    log_a = _solve_log_multipliers(g, roots, dens)
    sizes = {n: _layer_kernel(g, g.info[n]) for n in scored}
    kept = sum(dens.get(n, 1.0) * sizes[n] for n in scored)
    if target_params is not None:
        return _match(g, roots, log_a, int(target_params), lambda w: _total(g, w), min_channels)
    if match is None:
        return _widths_from_multipliers(g, roots, np.exp(log_a), min_channels)
    if match == "kernels":
        return _match(g, roots, log_a, kept, lambda w: _counts(g, w)[0], min_channels)
    target = _total(g, {}) * kept / sum(sizes.values())
    return _match(g, roots, log_a, target, lambda w: _total(g, w), min_channels)


def _make_plan(g, widths):
    out = {}
    for name, info in g.info.items():
        if info.kind == "source":
            r = g.find(info.out_group)
            out[name] = (g.width[r], widths.get(r, g.width[r]))
        elif info.kind == "depthwise":
            out[name] = (info.in_channels * info.multiplier, g.channels(info.in_segs, widths) * info.multiplier)
    roots = {}
    for name, s in g.source_group.items():
        roots.setdefault(g.find(s), []).append(name)
    groups = [sorted(v) for v in roots.values() if len(v) > 1]
    fixed = sorted(n for n, s in g.source_group.items() if g.is_fixed(s))
    return CropPlan(
        widths=out, groups=groups, fixed=fixed,
        kernel_params=(_counts(g, {})[0], _counts(g, widths)[0]),
        params=(_total(g, {}), _total(g, widths)),
    )


# --------------------------------------------------------------------------- build


def crop(model, densities=None, *, width_multipliers=None, match: str | None = "kernels",
         target_params: int | None = None, min_channels: int = 1, seed: int | None = None) -> keras.Model:
    """A new, narrower, freshly initialized model of the same structure (PreCropping).

    Args:
        model: a functional or Sequential Keras model (flat, channels_last).
        densities: ``{layer name: kept fraction}`` as returned by
            :func:`tfjpq.precrop.densities`, or one number for every layer.
            Layers left out keep density 1.
        width_multipliers: instead of densities, ``{layer name: new/old output
            channels}`` for Conv/Dense layers (or one number for all free
            layers). Layers joined by an Add must get the same value; depthwise
            layers and layers feeding the output take none.
        match: with densities, rescale so the total kernel parameter count
            equals ``sum_l d_l n_l`` (``"kernels"``, default), so the whole
            model's parameter count is the density-weighted share
            (``"total"``), or apply the least-squares rule alone (``None``).
        target_params: with densities, rescale so ``count_params()`` of the
            cropped model is this number instead (e.g. a masked model's
            :func:`~tfjpq.precrop.nonzero_params`, for a comparison at exactly
            the same parameter count). Overrides ``match``.
        min_channels: the narrowest a layer may get.
        seed: seeds the fresh initialization (``keras.utils.set_random_seed``).

    Returns:
        an uncompiled ``keras.Model`` with the same layer names and graph.

    Raises:
        UnsupportedModelError: a layer the rule does not cover (named, with its class).

    The density-to-channels rule is in this module's docstring and in
    ``docs/precrop.md``: output channels follow ``sqrt(density)`` when
    neighbouring layers agree, in general a size-weighted least-squares fit
    of every layer's density in log space, with Adds, depthwise layers, the
    input and the output layer as constraints.

    Example::

        from tfjpq import zoo, precrop
        model = zoo.resnet8(input_shape=(28, 28, 1))
        small = precrop.crop(model, precrop.densities(model, "synflow", 0.2))
        small.count_params() / model.count_params()      # about 0.2
        half = precrop.crop(model, width_multipliers={"block3_conv1": 0.5})
    """
    plan = crop_plan(model, densities, width_multipliers=width_multipliers, match=match,
                     target_params=target_params, min_channels=min_channels)
    return build(model, plan, seed=seed)


def build(model, plan: CropPlan, seed: int | None = None) -> keras.Model:
    """Rebuild ``model`` with the output widths of ``plan`` (fresh weights)."""
    model = _checked(model)
    new = {n: w for n, (_, w) in plan.widths.items()}
    if seed is not None:
        keras.utils.set_random_seed(seed)

    def clone(layer):
        config = layer.get_config()
        if layer.name in new and kind_of(layer).channels == registry.NEW:
            config["filters" if "filters" in config else "units"] = new[layer.name]
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


__all__ = ["crop", "crop_plan", "build", "CropPlan", "UnsupportedLayerError", "SCORED_LAYERS"]
