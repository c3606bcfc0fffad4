"""Per-layer densities from a global pruning-at-initialization budget.

PreCropping's observation (Cai et al., arXiv 2203.02549): what a pruning-at-
initialization method really decides is how dense each layer is, not which
weights survive. So we run the method at a global density, keep the global top
fraction of its scores, and read off each layer's kept share.

Example::

    from tfjpq import zoo, precrop
    model = zoo.resnet8(input_shape=(28, 28, 1))
    dens = precrop.densities(model, method="synflow", density=0.2)
    dens["block3_conv2"]    # e.g. 0.09: the big late layers are pruned hardest
    small = precrop.crop(model, dens)
"""

from __future__ import annotations

import numpy as np

from tfjpq.precrop import saliency

__all__ = ["densities_from_masks", "densities"]


def densities_from_masks(masks: dict) -> dict:
    """``{layer: kept fraction}`` of boolean or 0/1 masks.

    >>> densities_from_masks({"a": np.array([1, 0, 0, 0])})
    {'a': 0.25}
    """
    return {name: float(np.mean(np.asarray(m) != 0)) for name, m in masks.items()}


def densities(
    model,
    method: str = "synflow",
    density: float = 0.2,
    data=None,
    **kwargs,
) -> dict:
    """Per-layer densities at a global ``density``: each scored layer's share of the global top.

    Args:
        model: a built Keras model (left unchanged).
        method: ``"synflow"`` (data-free, iterative), ``"snip"`` or ``"grasp"``.
        density: fraction of all scored weights (Conv / DepthwiseConv / Dense
            kernels) kept, in (0, 1].
        data: ``(x, y)`` or a batched ``tf.data.Dataset``; required by ``snip``
            and ``grasp`` (a ``ValueError`` says so when it is missing).
        **kwargs: passed to :func:`tfjpq.precrop.masks` (``iterations``,
            ``loss``, ``batch_size``, ``max_batches``, ``temperature``).

    Returns:
        ``{layer name: kept fraction}`` in model order. The fractions, weighted
        by the layers' kernel sizes, average to ``density``.

    Example::

        dens = precrop.densities(model, "snip", 0.1, data=(x_train[:512], y_train[:512]))
        small = precrop.crop(model, dens)
    """
    return densities_from_masks(saliency.masks(model, method, density, data, **kwargs))
