"""The model-analysis layer every tfjpq method reads Keras graphs through.

* :mod:`~tfjpq.graph.registry`: the one table of layer kinds (what each is,
  its channel axis, its TFLite op, which methods may search, crop, score or
  quantize it);
* :mod:`~tfjpq.graph.check`: the one model check, :func:`check_model`, with
  one error class (:class:`tfjpq.errors.UnsupportedModelError`);
* :mod:`~tfjpq.graph.channels`: the one channel-group analysis
  (:class:`ChannelWalk`), which the search and PreCrop each refine;
* :mod:`~tfjpq.graph.analysis`: :func:`analyze`, the search's reading of a
  graph (search layers, channel groups, layouts, signs).
"""

from tfjpq.graph.analysis import Analysis, LinearInfo, analyze
from tfjpq.graph.channels import ChannelWalk, Group, Layout
from tfjpq.graph.check import check_model, layers_with, single_input_shape, topological_nodes
from tfjpq.graph.registry import (
    KINDS,
    NONNEGATIVE_ACTIVATIONS,
    OTHER_ACTIVATIONS,
    WEIGHTED,
    ZERO_PRESERVING_ACTIVATIONS,
    LayerKind,
    activation_name,
    keras_class,
    kernel_channel_axis,
    kind_of,
    layer_kind,
    supported_names,
    supports,
    tflite_kernel_shape,
    tflite_op,
)

__all__ = [
    "analyze", "Analysis", "ChannelWalk", "Group", "Layout", "LinearInfo", "check_model", "topological_nodes", "single_input_shape", "layers_with",
    "KINDS", "LayerKind", "kind_of", "layer_kind", "supports", "tflite_op", "tflite_kernel_shape", "keras_class", "kernel_channel_axis",
    "supported_names", "activation_name", "WEIGHTED", "ZERO_PRESERVING_ACTIVATIONS", "NONNEGATIVE_ACTIVATIONS",
    "OTHER_ACTIVATIONS",
]
