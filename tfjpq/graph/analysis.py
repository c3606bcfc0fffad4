"""Reading a Keras 3 functional graph: what each layer is, and which channels flow where.

``analyze(model)`` walks the graph once and answers the questions the search,
cost and export code ask:

* which layers become search layers (Conv2D, DepthwiseConv2D, Dense), and which
  BatchNormalization each one absorbs;
* the *channel groups*: output channels that must be pruned together (the two
  sides of an Add, a depthwise layer and its producer) and whether a group may
  be pruned at all (not if its zeros could not travel to every consumer, or if
  it reaches a model output);
* for every tensor, its *layout*: which groups' channels it carries, in which
  order, and how often each is repeated (Flatten);
* which tensors are non-negative (after a ReLU), so activation quantizers know
  their sign.

It expects a model :func:`tfjpq.graph.check_model` accepted; a layer setting
the search cannot handle (a grouped convolution, an unknown activation, ...)
raises :class:`UnsupportedModelError` naming the layer and its class.
"""

from __future__ import annotations

import dataclasses

import keras

from tfjpq.errors import UnsupportedModelError
from tfjpq.graph.check import topological_nodes
from tfjpq.graph.registry import (
    NONNEGATIVE_ACTIVATIONS,
    OTHER_ACTIVATIONS,
    ZERO_PRESERVING_ACTIVATIONS,
    activation_name,
    layer_kind,
)

__all__ = ["analyze", "Analysis", "Group", "Layout", "LinearInfo"]


@dataclasses.dataclass
class Group:
    """Output channels pruned and quantized together (one precision choice)."""

    gid: int
    channels: int
    members: list = dataclasses.field(default_factory=list)  # linear layer names, producer first
    prunable: bool = True
    regroup: bool = True  # may the exporter reorder channels by precision
    parent: "Group | None" = None
    reasons: list = dataclasses.field(default_factory=list)

    def root(self) -> "Group":
        g = self
        while g.parent is not None:
            g = g.parent
        return g


@dataclasses.dataclass(frozen=True)
class Layout:
    """Channel layout of a tensor: ``segments`` in order, each ``(group_id | None, channels)``.

    ``repeat`` > 1 means the tensor was flattened from ``repeat`` spatial positions,
    each holding all segments (channel index fastest, as Flatten does in NHWC).
    """

    segments: tuple
    repeat: int = 1

    @property
    def channels(self) -> int:
        return sum(c for _, c in self.segments)


@dataclasses.dataclass
class LinearInfo:
    name: str
    layer: object
    kind: str  # "conv", "depthwise", "dense"
    group: int
    input_layout: Layout
    input_raw: bool  # reads the model input directly (no activation quantizer)
    input_tensor_id: int
    bn: object = None  # absorbed BatchNormalization layer
    output_tensor_id: int = 0


@dataclasses.dataclass
class Analysis:
    nodes: list
    linears: dict  # name -> LinearInfo
    groups: dict  # gid -> Group (roots only after finalize)
    layouts: dict  # tensor id -> Layout
    nonneg: dict  # tensor id -> bool
    raw: dict  # tensor id -> bool (derived from the model input only)
    absorbed_bn: dict  # bn name -> linear name
    consumers: dict  # tensor id -> list of nodes


# ---------------------------------------------------------------------------
# Analysis


def _check_linear(layer, kind, node):
    cfg = layer.get_config()
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise UnsupportedModelError(
            f"layer {layer.name!r} ({type(layer).__name__}) uses data_format={cfg['data_format']!r}; "
            "tfjpq supports channels_last only"
        )
    if kind == "conv" and cfg.get("groups", 1) != 1:
        raise UnsupportedModelError(
            f"layer {layer.name!r} (Conv2D) has groups={cfg['groups']}; grouped convolutions are not supported"
        )
    if kind == "depthwise" and cfg.get("depth_multiplier", 1) != 1:
        raise UnsupportedModelError(
            f"layer {layer.name!r} (DepthwiseConv2D) has depth_multiplier={cfg['depth_multiplier']}; "
            "only depth_multiplier=1 is supported"
        )
    if kind == "dense" and len(node.input_tensors[0].shape) != 2:
        raise UnsupportedModelError(
            f"layer {layer.name!r} (Dense) gets a rank-{len(node.input_tensors[0].shape)} input; tfjpq supports "
            "Dense on flat (batch, features) inputs: put a Flatten or GlobalAveragePooling2D before it"
        )
    act = activation_name(cfg.get("activation"))
    if act not in ZERO_PRESERVING_ACTIVATIONS | OTHER_ACTIVATIONS:
        raise UnsupportedModelError(
            f"layer {layer.name!r} ({type(layer).__name__}) has activation {act!r}, which tfjpq does not know"
        )
    return act


def _act_of(layer):
    """(zero_preserving, nonnegative) for an activation-type layer."""
    L = keras.layers
    if isinstance(layer, L.ReLU):
        cfg = layer.get_config()
        zero = float(cfg.get("threshold", 0.0)) == 0.0
        nonneg = zero and float(cfg.get("negative_slope", 0.0)) == 0.0
        return zero, nonneg
    if isinstance(layer, (L.LeakyReLU, L.ELU)):
        return True, False
    if isinstance(layer, L.Softmax):
        return False, True
    name = activation_name(layer.get_config().get("activation"))
    if name in ZERO_PRESERVING_ACTIVATIONS:
        return True, name in NONNEGATIVE_ACTIVATIONS
    if name in OTHER_ACTIVATIONS:
        return False, name in NONNEGATIVE_ACTIVATIONS
    raise UnsupportedModelError(f"layer {layer.name!r} ({type(layer).__name__}) has activation {name!r}, "
                                "which tfjpq does not know")


def analyze(model: keras.Model) -> Analysis:
    """Analyze a (checked) functional model; see the module docstring."""
    nodes = topological_nodes(model)
    consumers: dict = {}
    for node in nodes:
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)

    groups: dict = {}
    layouts: dict = {}
    nonneg: dict = {}
    raw: dict = {}
    linears: dict = {}
    absorbed_bn: dict = {}
    # tensor id -> linear name, for outputs of linear layers whose BN may be absorbed
    linear_out: dict = {}

    def new_group(channels, member):
        gid = len(groups)
        groups[gid] = Group(gid=gid, channels=channels, members=[member])
        return gid

    def root(gid):
        return groups[gid].root()

    def freeze_groups(layout: Layout, reason: str, regroup_too: bool = False):
        for gid, _ in layout.segments:
            if gid is not None:
                r = root(gid)
                r.prunable = False
                r.reasons.append(reason)
                if regroup_too:
                    r.regroup = False

    def union(a, b):
        ra, rb = root(a), root(b)
        if ra is rb:
            return
        rb.parent = ra
        ra.members.extend(rb.members)
        ra.prunable = ra.prunable and rb.prunable
        ra.regroup = ra.regroup and rb.regroup
        ra.reasons.extend(rb.reasons)

    for t in model.inputs:
        shape = t.shape
        layouts[id(t)] = Layout(((None, int(shape[-1]) if shape[-1] is not None else 1),))
        nonneg[id(t)] = False
        raw[id(t)] = True

    for node in nodes:
        layer = node.operation
        kind = layer_kind(layer)
        ins = node.input_tensors
        out = node.outputs[0]
        oid = id(out)
        in_layouts = [layouts[id(t)] for t in ins]
        x = ins[0] if ins else None
        if kind in ("conv", "depthwise", "dense"):
            act = _check_linear(layer, kind, node)
            lay = in_layouts[0]
            cout = int(out.shape[-1])
            if kind == "depthwise":
                if len(lay.segments) == 1 and lay.segments[0][0] is not None:
                    gid = lay.segments[0][0]
                    root(gid).members.append(layer.name)
                else:
                    freeze_groups(lay, f"{layer.name} (depthwise) reads a mix of channel sources")
                    gid = new_group(cout, layer.name)
                    groups[gid].prunable = False
                    groups[gid].reasons.append(f"{layer.name} reads the model input or a concatenation")
            else:
                gid = new_group(cout, layer.name)
            if act not in ZERO_PRESERVING_ACTIVATIONS:
                root(gid).prunable = False
                root(gid).reasons.append(f"{layer.name} has activation {act!r}")
            linears[layer.name] = LinearInfo(
                name=layer.name, layer=layer, kind=kind, group=gid, input_layout=lay,
                input_raw=raw[id(x)], input_tensor_id=id(x), output_tensor_id=oid,
            )
            layouts[oid] = Layout(((gid, cout),))
            nonneg[oid] = act in NONNEGATIVE_ACTIVATIONS
            raw[oid] = False
            if act == "linear":
                linear_out[oid] = layer.name
        elif kind == "bn":
            axis = layer.get_config().get("axis", -1)
            axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
            if axis not in (-1, len(x.shape) - 1):
                raise UnsupportedModelError(
                    f"layer {layer.name!r} (BatchNormalization) normalizes axis {axis}; tfjpq supports the "
                    "channel (last) axis"
                )
            producer = linear_out.get(id(x))
            if producer is not None and len(consumers.get(id(x), [])) == 1:
                absorbed_bn[layer.name] = producer
                linears[producer].bn = layer
                linears[producer].output_tensor_id = oid
                layouts[oid] = in_layouts[0]
            else:
                freeze_groups(in_layouts[0], f"BatchNormalization {layer.name} does not directly follow a "
                              "conv/dense layer, so zeroed channels would not stay zero")
                layouts[oid] = in_layouts[0]
            nonneg[oid] = False
            raw[oid] = False
        elif kind == "act":
            zero, nn = _act_of(layer)
            if not zero:
                freeze_groups(in_layouts[0], f"{layer.name} maps 0 to a non-zero value")
            layouts[oid] = in_layouts[0]
            nonneg[oid] = nn or (nonneg[id(x)] and isinstance(layer, keras.layers.ReLU))
            raw[oid] = False
        elif kind in ("pass", "input"):
            layouts[oid] = in_layouts[0]
            nonneg[oid] = nonneg[id(x)]
            raw[oid] = raw[id(x)]
        elif kind == "rescale":
            cfg = layer.get_config()
            if cfg.get("offset", 0.0) not in (0, 0.0):
                freeze_groups(in_layouts[0], f"Rescaling {layer.name} adds an offset")
            layouts[oid] = in_layouts[0]
            nonneg[oid] = False
            raw[oid] = raw[id(x)]
        elif kind == "global_pool":
            layouts[oid] = in_layouts[0]
            nonneg[oid] = nonneg[id(x)]
            raw[oid] = raw[id(x)]
        elif kind in ("flatten", "reshape"):
            if kind == "reshape" and len(out.shape) != 2:
                raise UnsupportedModelError(
                    f"layer {layer.name!r} (Reshape) reshapes to {tuple(out.shape[1:])}; tfjpq supports Reshape "
                    "only to a flat (features,) vector"
                )
            lay = in_layouts[0]
            spatial = 1
            for d in x.shape[1:-1]:
                spatial *= int(d)
            layouts[oid] = Layout(lay.segments, lay.repeat * spatial)
            nonneg[oid] = nonneg[id(x)]
            raw[oid] = raw[id(x)]
        elif kind == "concat":
            axis = layer.get_config().get("axis", -1)
            if axis not in (-1, len(out.shape) - 1):
                raise UnsupportedModelError(
                    f"layer {layer.name!r} (Concatenate) joins along axis {axis}; tfjpq supports the channel axis"
                )
            if any(lay.repeat != 1 for lay in in_layouts):
                for lay in in_layouts:
                    freeze_groups(lay, f"{layer.name} concatenates flattened tensors", regroup_too=True)
                layouts[oid] = Layout(((None, int(out.shape[-1])),))
            else:
                layouts[oid] = Layout(tuple(s for lay in in_layouts for s in lay.segments))
            nonneg[oid] = all(nonneg[id(t)] for t in ins)
            raw[oid] = all(raw[id(t)] for t in ins)
        elif kind == "add":
            first = in_layouts[0]
            same_shape = all(
                lay.repeat == first.repeat and [c for _, c in lay.segments] == [c for _, c in first.segments]
                for lay in in_layouts
            )
            if same_shape:
                for lay in in_layouts[1:]:
                    for (ga, _), (gb, _) in zip(first.segments, lay.segments):
                        if ga is None or gb is None:
                            other = ga if gb is None else gb
                            if other is not None:
                                root(other).prunable = False
                                root(other).reasons.append(f"{layer.name} adds it to the model input")
                        else:
                            union(ga, gb)
                layouts[oid] = first
            else:
                for lay in in_layouts:
                    freeze_groups(lay, f"{layer.name} adds tensors of different channel structure",
                                  regroup_too=True)
                layouts[oid] = Layout(((None, int(out.shape[-1])),))
            nonneg[oid] = all(nonneg[id(t)] for t in ins)
            raw[oid] = False
        else:  # pragma: no cover - every kind is handled above
            raise AssertionError(kind)

    for t in model.outputs:
        for gid, _ in layouts[id(t)].segments:
            if gid is not None:
                r = root(gid)
                r.prunable = False
                r.regroup = False
                r.reasons.append("it reaches a model output")

    # Resolve every group id to its root id.
    canon = {gid: root(gid).gid for gid in groups}

    def canon_layout(lay):
        return Layout(tuple((canon[g] if g is not None else None, c) for g, c in lay.segments), lay.repeat)

    layouts = {k: canon_layout(v) for k, v in layouts.items()}
    for info in linears.values():
        info.group = canon[info.group]
        info.input_layout = canon_layout(info.input_layout)
    roots = {gid: g for gid, g in groups.items() if g.parent is None}
    return Analysis(nodes=nodes, linears=linears, groups=roots, layouts=layouts, nonneg=nonneg, raw=raw,
                    absorbed_bn=absorbed_bn, consumers=consumers)
