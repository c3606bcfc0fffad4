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
from tfjpq.graph.channels import ChannelWalk, Group, Layout
from tfjpq.graph.registry import (
    NONNEGATIVE_ACTIVATIONS,
    OTHER_ACTIVATIONS,
    ZERO_PRESERVING_ACTIVATIONS,
    activation_name,
)

__all__ = ["analyze", "Analysis", "Group", "Layout", "LinearInfo"]


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


def _check_linear(layer, kind, node):
    """The search's limits on a Conv2D / DepthwiseConv2D / Dense layer; returns its activation's name."""
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
    walk = _SearchWalk(model).run()
    return Analysis(nodes=walk.nodes, linears=walk.linears, groups=walk.groups, layouts=walk.layouts,
                    nonneg=walk.nonneg, raw=walk.raw, absorbed_bn=walk.absorbed_bn, consumers=walk.consumers)


class _SearchWalk(ChannelWalk):
    """The channel walk with the search's rules: which groups may be pruned, BN absorption, signs."""

    def __init__(self, model):
        super().__init__(model)
        self.nonneg: dict = {}  # tensor id -> bool
        self.raw: dict = {}  # tensor id -> bool (derived from the model input only)
        self.linears: dict = {}  # name -> LinearInfo
        self.absorbed_bn: dict = {}  # bn name -> linear name
        self.linear_out: dict = {}  # output tensor id of a linear layer without activation -> its name

    def input_layout(self, tensor):
        self.nonneg[id(tensor)] = False
        self.raw[id(tensor)] = True
        return super().input_layout(tensor)

    def step(self, node, kind, ins):
        return getattr(self, f"_{kind.name}")(node, kind, ins)

    def _mark(self, node, nonneg, raw):
        oid = id(node.outputs[0])
        self.nonneg[oid] = bool(nonneg)
        self.raw[oid] = bool(raw)

    def _of_input(self, node, table):
        return table[id(node.input_tensors[0])]

    def _linear(self, node, kind, ins):
        """Conv2D, DepthwiseConv2D, Dense: a search layer with its group."""
        layer, out = node.operation, node.outputs[0]
        act = _check_linear(layer, kind.name, node)
        lay = ins[0]
        cout = int(out.shape[-1])
        if kind.name == "depthwise":
            gid = self._depthwise_group(layer, lay, cout)
        else:
            gid = self.on_new(node, kind, ins).segments[0][0]
        if act not in ZERO_PRESERVING_ACTIVATIONS:
            self.fix_group(gid, f"{layer.name} has activation {act!r}")
        x = node.input_tensors[0]
        self.linears[layer.name] = LinearInfo(
            name=layer.name, layer=layer, kind=kind.name, group=gid, input_layout=lay,
            input_raw=self.raw[id(x)], input_tensor_id=id(x), output_tensor_id=id(out),
        )
        self._mark(node, act in NONNEGATIVE_ACTIVATIONS, False)
        if act == "linear":
            self.linear_out[id(out)] = layer.name
        return Layout(((gid, cout),))

    _conv = _depthwise = _dense = _linear

    def _depthwise_group(self, layer, lay, cout):
        """A depthwise layer joins its producer's group; reading a mix of sources, it gets a fixed one."""
        if len(lay.segments) == 1 and lay.segments[0][0] is not None:
            gid = lay.segments[0][0]
            self.root(gid).members.append(layer.name)
            return gid
        self.fix(lay, f"{layer.name} (depthwise) reads a mix of channel sources")
        gid = self.new_group(cout, layer.name)
        self.fix_group(gid, f"{layer.name} reads the model input or a concatenation")
        return gid

    def _bn(self, node, kind, ins):
        """Absorbed into the linear layer right before it, else its zeros would not stay zero."""
        layer, x = node.operation, node.input_tensors[0]
        axis = layer.get_config().get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if axis not in (-1, len(x.shape) - 1):
            raise UnsupportedModelError(
                f"layer {layer.name!r} (BatchNormalization) normalizes axis {axis}; tfjpq supports the "
                "channel (last) axis"
            )
        producer = self.linear_out.get(id(x))
        if producer is not None and len(self.consumers.get(id(x), [])) == 1:
            self.absorbed_bn[layer.name] = producer
            self.linears[producer].bn = layer
            self.linears[producer].output_tensor_id = id(node.outputs[0])
        else:
            self.fix(ins[0], f"BatchNormalization {layer.name} does not directly follow a "
                     "conv/dense layer, so zeroed channels would not stay zero")
        self._mark(node, False, False)
        return ins[0]

    def _act(self, node, kind, ins):
        layer = node.operation
        zero, nn = _act_of(layer)
        if not zero:
            self.fix(ins[0], f"{layer.name} maps 0 to a non-zero value")
        self._mark(node, nn or (self._of_input(node, self.nonneg) and isinstance(layer, keras.layers.ReLU)), False)
        return ins[0]

    def _pass(self, node, kind, ins):
        self._mark(node, self._of_input(node, self.nonneg), self._of_input(node, self.raw))
        return ins[0]

    _global_pool = _input = _pass

    def _rescale(self, node, kind, ins):
        layer = node.operation
        if layer.get_config().get("offset", 0.0) not in (0, 0.0):
            self.fix(ins[0], f"Rescaling {layer.name} adds an offset")
        self._mark(node, False, self._of_input(node, self.raw))
        return ins[0]

    def _flatten(self, node, kind, ins):
        self._mark(node, self._of_input(node, self.nonneg), self._of_input(node, self.raw))
        return self.on_flatten(node, kind, ins)

    _reshape = _flatten

    def _concat(self, node, kind, ins):
        layer = node.operation
        axis = layer.get_config().get("axis", -1)
        if axis not in (-1, len(node.outputs[0].shape) - 1):
            raise UnsupportedModelError(
                f"layer {layer.name!r} (Concatenate) joins along axis {axis}; tfjpq supports the channel axis"
            )
        ids = [id(t) for t in node.input_tensors]
        self._mark(node, all(self.nonneg[i] for i in ids), all(self.raw[i] for i in ids))
        return self.on_stack(node, kind, ins)

    def _add(self, node, kind, ins):
        self._mark(node, all(self.nonneg[id(t)] for t in node.input_tensors), False)
        return self.on_join(node, kind, ins)

    def finish(self):
        super().finish()
        for info in self.linears.values():
            info.group = self.canon[info.group]
            info.input_layout = self.canonical(info.input_layout, self.canon)
