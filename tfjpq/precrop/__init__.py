"""PreCropping: structured (channel-level) pruning at initialization (Cai et al., arXiv 2203.02549).

Pruning-at-initialization methods (SNIP, GraSP, SynFlow) mostly decide how
dense each layer should be. PreCropping keeps those per-layer densities but
realises them with fewer channels, so the network stays dense and really gets
smaller and faster on a microcontroller.

Example::

    from tfjpq import zoo, datasets, precrop
    (x, y), (xt, yt) = datasets.load_mnist5k()
    model = zoo.resnet8(input_shape=(28, 28, 1))
    dens = precrop.densities(model, method="synflow", density=0.2)   # {layer: kept share}
    small = precrop.crop(model, dens)                                # narrower, fresh weights
    zoo.train(small, x, y, epochs=3)

    # The unstructured baseline at the same density:
    precrop.apply_masks(model, precrop.masks(model, "synflow", 0.2))
    zoo.train(model, x, y, epochs=3)

Modules: :mod:`~tfjpq.precrop.saliency` (the scores),
:mod:`~tfjpq.precrop.allocation` (global budget -> per-layer densities),
:mod:`~tfjpq.precrop.cropping` (the density-to-channels rule and the rebuild),
:mod:`~tfjpq.precrop.masking` (the unstructured baseline).
"""

from tfjpq.precrop.allocation import densities, densities_from_masks
from tfjpq.precrop.cropping import CropPlan, UnsupportedLayerError, build, crop, crop_plan
from tfjpq.precrop.masking import MaskConstraint, apply_masks, kept_fraction, nonzero_params
from tfjpq.precrop.saliency import METHODS, global_top, masks, scored_layers, scores

__all__ = [
    "METHODS",
    "scores",
    "masks",
    "global_top",
    "scored_layers",
    "densities",
    "densities_from_masks",
    "crop",
    "crop_plan",
    "build",
    "CropPlan",
    "UnsupportedLayerError",
    "apply_masks",
    "MaskConstraint",
    "kept_fraction",
    "nonzero_params",
]
