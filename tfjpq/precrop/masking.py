"""The unstructured baseline: the same pruning-at-initialization masks, kept at zero while training.

PreCropping is compared with what the scores were made for: an unstructured
mask on the original (wide) model at the same global density, i.e. the same
number of kept kernel weights. The masked weights are zeroed once and then
held at zero by a :class:`MaskConstraint` on the kernel variable, which every
Keras optimizer applies after each update (inside the compiled train step).

The mask saves neither MACs nor latency on a microcontroller: the zeros are
still multiplied. That is the point of the comparison.

Example::

    from tfjpq import zoo, datasets, precrop
    (x, y), _ = datasets.load_digits()
    model = zoo.small_cnn()
    m = precrop.masks(model, "snip", density=0.2, data=(x[:256], y[:256]))
    precrop.apply_masks(model, m)
    zoo.train(model, x, y, epochs=2)
    precrop.kept_fraction(model)    # 0.2: the masked weights are still zero
"""

from __future__ import annotations

import keras
import numpy as np

from tfjpq.precrop.saliency import scored_layers

__all__ = ["MaskConstraint", "apply_masks", "kept_fraction", "nonzero_params"]


@keras.saving.register_keras_serializable(package="tfjpq")
class MaskConstraint(keras.constraints.Constraint):
    """Multiplies a weight by a fixed 0/1 mask (after an optional wrapped constraint).

    Example::

        layer.kernel.constraint = MaskConstraint(mask)   # what apply_masks does
    """

    def __init__(self, mask, base=None):
        self.mask = np.asarray(mask, dtype="float32")
        self.base = keras.constraints.get(base) if base is not None else None

    def __call__(self, w):
        if self.base is not None:
            w = self.base(w)
        return w * keras.ops.cast(self.mask, w.dtype)

    def get_config(self):
        return {
            "mask": self.mask.tolist(),
            "base": keras.constraints.serialize(self.base) if self.base is not None else None,
        }


def apply_masks(model, masks: dict):
    """Zero the masked kernel weights of ``model`` and keep them at zero during training (in place).

    Args:
        model: the model the masks were computed on (same layer names and shapes).
        masks: ``{layer name: bool or 0/1 array of the kernel's shape}``, e.g. from
            :func:`tfjpq.precrop.masks`.

    Returns:
        ``model``, for chaining. Call it before ``compile``/``fit``: the constraint
        is read when the train step is traced.

    Example::

        precrop.apply_masks(model, precrop.masks(model, "synflow", 0.1))
    """
    by_name = {l.name: l for l in scored_layers(model)}
    unknown = [n for n in masks if n not in by_name]
    if unknown:
        raise ValueError(f"masks name layers the model has no scored kernel for: {unknown}; "
                         f"the model's are {list(by_name)}")
    for name, mask in masks.items():
        kernel = by_name[name].kernel
        mask = np.asarray(mask)
        if tuple(mask.shape) != tuple(kernel.shape):
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, its kernel {tuple(kernel.shape)}")
        base = kernel.constraint
        if isinstance(base, MaskConstraint):  # re-masking replaces the old mask
            base = base.base
        kernel.constraint = MaskConstraint(mask != 0, base=base)
        kernel.assign(kernel.constraint(kernel))
    return model


def kept_fraction(model, per_layer: bool = False):
    """Fraction of nonzero weights in the scored kernels (overall, or ``{layer: fraction}``).

    Example::

        precrop.kept_fraction(zoo.small_cnn())     # 1.0: nothing masked yet
    """
    layers_ = scored_layers(model)
    nz = {l.name: (int(np.count_nonzero(l.kernel.numpy())), int(np.prod(l.kernel.shape))) for l in layers_}
    if per_layer:
        return {n: a / b for n, (a, b) in nz.items()}
    return sum(a for a, _ in nz.values()) / sum(b for _, b in nz.values())


def nonzero_params(model) -> int:
    """Parameters that are not held at zero: kept kernel weights plus every other weight.

    This is the parameter count of a masked model that is fair to compare with a
    cropped model's ``count_params()``.
    """
    layers_ = scored_layers(model)
    masked_out = sum(int(np.prod(l.kernel.shape)) - int(np.count_nonzero(l.kernel.numpy())) for l in layers_)
    return int(model.count_params()) - masked_out
