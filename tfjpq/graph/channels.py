"""The one channel-group analysis: which output channels must keep one width (or one precision) together.

:class:`ChannelWalk` walks a checked model's nodes once, in execution order,
and gives every tensor a :class:`Layout`: the channel *groups* it carries, in
order, and how often they repeat (Flatten). A group starts at every layer
whose registry kind makes new channels (Conv, Dense); the other kinds move
groups on by their registry ``channels`` rule:

* ``keep`` (BN, activations, pooling, ...): the input's layout;
* ``follow`` (depthwise): the input's layout, times ``depth_multiplier``;
* ``join`` (Add, ...): the inputs' groups become one (union-find), segment
  by segment; a segment joined with the model input is fixed;
* ``stack`` (Concatenate on the channel axis): the groups side by side;
* ``flatten`` (Flatten, Reshape to 1-D): the layout, repeated once per
  spatial position.

Model inputs carry no group (``None``: their width is fixed), and every group
that reaches a model output is fixed. The search (:func:`tfjpq.graph.analyze`)
and PreCrop (``precrop.crop_plan``) each subclass the walk: the search adds
its own reasons to fix a group (a non-zero-preserving activation, a lone
BatchNorm, ...), PreCrop counts parameters.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfjpq.errors import UnsupportedModelError
from tfjpq.graph import registry
from tfjpq.graph.check import topological_nodes

__all__ = ["ChannelWalk", "Group", "Layout"]


@dataclasses.dataclass
class Group:
    """Output channels that keep one width (PreCrop) or one precision choice (search)."""

    gid: int
    channels: int
    members: list = dataclasses.field(default_factory=list)  # layer names, producer first
    prunable: bool = True  # False: the width is fixed
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
        """Channels of one spatial position (``repeat`` not counted)."""
        return sum(c for _, c in self.segments)


class ChannelWalk:
    """One pass over a checked functional model that fills ``groups`` and ``layouts``; see the module docstring.

    Subclasses refine a rule by overriding its ``on_<rule>`` method, or a whole
    step by overriding :meth:`step`.
    """

    def __init__(self, model):
        self.model = model
        self.nodes = topological_nodes(model)
        self.groups: dict = {}  # gid -> Group (every group; roots after finish)
        self.layouts: dict = {}  # tensor id -> Layout
        self.producer_group: dict = {}  # layer name -> gid of the group it starts
        self.consumers: dict = {}  # tensor id -> list of nodes
        self.canon: dict = {}  # gid -> its root's gid, once the walk is done
        for node in self.nodes:
            for t in node.input_tensors:
                self.consumers.setdefault(id(t), []).append(node)

    # -------------------------------------------------------------- groups

    def new_group(self, channels, member) -> int:
        gid = len(self.groups)
        self.groups[gid] = Group(gid=gid, channels=int(channels), members=[member])
        return gid

    def root(self, gid) -> Group:
        return self.groups[gid].root()

    def union(self, a, b):
        ra, rb = self.root(a), self.root(b)
        if ra is rb:
            return
        rb.parent = ra
        ra.members.extend(rb.members)
        ra.prunable = ra.prunable and rb.prunable
        ra.regroup = ra.regroup and rb.regroup
        ra.reasons.extend(rb.reasons)

    def fix(self, layout: Layout, reason: str, regroup_too: bool = False):
        """Fix the width of every group in ``layout`` (and, with ``regroup_too``, its channel order)."""
        for gid, _ in layout.segments:
            if gid is not None:
                self.fix_group(gid, reason, regroup_too)

    def fix_group(self, gid, reason: str, regroup_too: bool = False):
        r = self.root(gid)
        r.prunable = False
        r.reasons.append(reason)
        if regroup_too:
            r.regroup = False

    # -------------------------------------------------------------- the walk

    def run(self):
        for t in self.model.inputs:
            self.layouts[id(t)] = self.input_layout(t)
        for node in self.nodes:
            kind = registry.kind_of(node.operation)
            ins = [self.layouts[id(t)] for t in node.input_tensors]
            self.layouts[id(node.outputs[0])] = self.step(node, kind, ins)
        for t in self.model.outputs:
            self.fix(self.layouts[id(t)], "it reaches a model output", regroup_too=True)
        self.finish()
        return self

    def input_layout(self, tensor) -> Layout:
        width = tensor.shape[-1]
        if width is None:
            raise UnsupportedModelError(f"model input {tensor.name!r} has no known channel count; give keras.Input "
                                        "a full shape")
        return Layout(((None, int(width)),))

    def step(self, node, kind, ins) -> Layout:
        """The output layout of one node, by its kind's channel rule."""
        rule = getattr(self, f"on_{kind.channels}")
        return rule(node, kind, ins)

    def on_new(self, node, kind, ins) -> Layout:
        layer = node.operation
        width = int(node.outputs[0].shape[-1])
        gid = self.new_group(width, layer.name)
        self.producer_group[layer.name] = gid
        return Layout(((gid, width),))

    def on_keep(self, node, kind, ins) -> Layout:
        return ins[0]

    def on_follow(self, node, kind, ins) -> Layout:
        m = int(getattr(node.operation, "depth_multiplier", 1))
        return Layout(tuple((g, c * m) for g, c in ins[0].segments), ins[0].repeat)

    def on_flatten(self, node, kind, ins) -> Layout:
        layer, x, out = node.operation, node.input_tensors[0], node.outputs[0]
        if len(out.shape) != 2:
            raise UnsupportedModelError(
                f"layer {layer.name!r} ({type(layer).__name__}) reshapes to {tuple(out.shape[1:])}, which mixes the "
                "channel axis; tfjpq supports Reshape only to a flat (features,) vector"
            )
        spatial = x.shape[1:-1]
        if any(d is None for d in spatial):
            raise UnsupportedModelError(f"layer {layer.name!r} ({type(layer).__name__}): its input shape "
                                        f"{tuple(x.shape)} has unknown spatial dimensions")
        return Layout(ins[0].segments, ins[0].repeat * int(np.prod(spatial)) if spatial else ins[0].repeat)

    def on_stack(self, node, kind, ins) -> Layout:
        axis = node.operation.get_config().get("axis", -1)
        if axis not in (-1, len(node.outputs[0].shape) - 1):
            return self.on_join(node, kind, ins)  # joined along space: the channels must agree
        if any(lay.repeat != 1 for lay in ins):
            return self.on_mismatch(node, ins, "concatenates flattened tensors")
        return Layout(tuple(s for lay in ins for s in lay.segments))

    def on_join(self, node, kind, ins) -> Layout:
        if not self.same_structure(ins):
            return self.on_mismatch(node, ins, "joins tensors of different channel structure")
        first = ins[0]
        for lay in ins[1:]:
            for (ga, _), (gb, _) in zip(first.segments, lay.segments):
                if ga is None or gb is None:
                    other = ga if gb is None else gb
                    if other is not None:
                        self.fix_group(other, f"{node.operation.name} adds it to the model input")
                else:
                    self.union(ga, gb)
        return first

    @staticmethod
    def same_structure(ins) -> bool:
        first = ins[0]
        return all(lay.repeat == first.repeat and [c for _, c in lay.segments] == [c for _, c in first.segments]
                   for lay in ins)

    def on_mismatch(self, node, ins, what) -> Layout:
        """A merge whose inputs' groups cannot be matched segment by segment: fix them all."""
        for lay in ins:
            self.fix(lay, f"{node.operation.name} {what}", regroup_too=True)
        return Layout(((None, int(node.outputs[0].shape[-1])),))

    # -------------------------------------------------------------- result

    def finish(self):
        """Resolve every group id to its root's, in layouts and ``producer_group``; keep the roots only."""
        canon = {gid: self.root(gid).gid for gid in self.groups}
        self.layouts = {k: self.canonical(v, canon) for k, v in self.layouts.items()}
        self.producer_group = {n: canon[g] for n, g in self.producer_group.items()}
        self.canon = canon
        self.groups = {gid: g for gid, g in self.groups.items() if g.parent is None}

    @staticmethod
    def canonical(layout: Layout, canon: dict) -> Layout:
        return Layout(tuple((canon[g] if g is not None else None, c) for g, c in layout.segments), layout.repeat)
