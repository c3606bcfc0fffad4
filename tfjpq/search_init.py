"""Where the search's precision logits start: flat, tilted by weight magnitude, or at the budget.

``tfjpq.wrap(model, init=...)`` calls :func:`initialize`:

* ``"flat"`` (the default): every channel starts at ``alpha = p / max(P)``
  (the paper's initialisation): all channels tie at the widest width, and
  the gradients decide which move.
* ``"magnitude"``: the same, tilted by each channel's importance within its
  group (:func:`magnitude_init`): weak channels lean towards low widths and
  pruning, strong ones towards 8 bits. The argmax stays the widest width.
* ``"budget"``: ``"magnitude"``, then, when ``wrap`` was given a ``target``,
  the hard choices are projected onto it (:func:`start_at_target`): weak
  channels step down first, in every layer alike, until the model costs the
  budget, and the moved channels' logits lead by ``START_MARGIN``.

Why flat is the default (ResNet-8 on MNIST-5k, the recipe of docs/search.md,
"tflm" cost, one seed): at 40 % of the all-8-bit flatbuffer, flat reached
97.1 % TFLM accuracy and the budget start 93.3 %; at half of the 2-bit
flatbuffer, 94.0 % against 87.5 %. The budget start hands the search a
uniform rank-by-rank allocation (most channels at 2 bits, few pruned) that
one search epoch does not undo, and with a small margin (0.25) the channels
came back faster than the controller could hold the budget.

Example::

    search = tfjpq.wrap(model, target=20_000, init="budget")
    float(search.hard_cost())                               # about 20,000 before any training
    scores = tfjpq.search_init.channel_magnitudes(search)   # {group: importance per channel}
"""

from __future__ import annotations

import numpy as np

from tfjpq import budget

__all__ = ["INITS", "DEFAULT_INIT", "START_MARGIN", "channel_magnitudes", "magnitude_init", "start_at_target",
           "initialize"]

INITS = ("budget", "magnitude", "flat")
DEFAULT_INIT = "flat"
START_MARGIN = 1.0  # how far a projected channel's chosen logit leads (Adam(0.02) undoes it in ~25 steps)
TILT_SCALE = 0.9  # magnitude tilt: below 1, so that even the weakest channel still starts at the widest width


def channel_magnitudes(search) -> dict:
    """Importance of every output channel of every precision group: its deployed kernel's mean |w|.

    The kernel is taken with its BatchNorm folded in (``|W_c| * |gamma_c| /
    sqrt(var_c + eps)``), since that is what the channel computes with. Each
    member layer's values are divided by that layer's mean, so the layers of a
    shared group (the sides of a residual add) weigh the same; the members'
    ratios are summed. Returns ``{choice name: array (channels,)}``.

    Example::

        scores = tfjpq.search_init.channel_magnitudes(search)
        order = np.argsort(scores["conv1_wbits"])  # least important first
    """
    from tfjpq.export import folded_kernel_and_bias

    scores = {}
    for layer in search.search_layers():
        w, _ = folded_kernel_and_bias(layer)
        k = np.abs(np.moveaxis(w, layer.channel_axis, -1))
        l1 = k.reshape(-1, k.shape[-1]).mean(0).astype(np.float64)
        scores[layer.group] = scores.get(layer.group, 0.0) + l1 / (l1.mean() + 1e-12)
    return scores


def magnitude_init(search, scale=TILT_SCALE):
    """Tilt the precision logits by each channel's rank of :func:`channel_magnitudes` in its group.

    The rank ``u`` in [-1, 1] (least to most important) adds
    ``scale * u * (b / max(bits) - 1/2)`` to the logit of width ``b``. Below
    ``scale=1`` every channel still prefers the widest width (at 1 the
    weakest would tie, and a tie's argmax is 0 bits: pruned).

    Example::

        tfjpq.search_init.magnitude_init(tfjpq.wrap(model, init="flat"), scale=1.0)
    """
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"magnitude_init scale must be finite and >= 0, got {scale}")
    scores = channel_magnitudes(search)
    for choice in search.precision_choices():
        if choice.name not in scores or choice.channels < 2 or len(choice.bits) < 2:
            continue
        rank = np.empty(choice.channels, np.float32)
        rank[np.argsort(scores[choice.name], kind="stable")] = np.arange(choice.channels)
        u = 2.0 * rank / (choice.channels - 1) - 1.0
        tilt = np.asarray(choice.bits, np.float32) / max(choice.bits) - 0.5
        choice.alpha.assign(choice.alpha.numpy() + scale * tilt[:, None] * u[None, :])
    return search


def start_at_target(search, margin=None) -> dict:
    """Project the current hard choices onto ``search.target`` (:func:`tfjpq.budget.project`).

    The moved channels' new choice leads their other logits by ``margin``
    (default :data:`START_MARGIN`). Returns the projection's report (``before``, ``after``, ``moves``).

    Example::

        search = tfjpq.wrap(model, target=20_000, init="magnitude")
        tfjpq.search_init.start_at_target(search)["after"]    # about 20,000
    """
    if search.target is None:
        raise ValueError("start_at_target needs a search with a target (tfjpq.wrap(..., target=...))")
    margin = START_MARGIN if margin is None else float(margin)
    return budget.project(search, search.target, search.tolerance, margin=margin)


def initialize(search, init=DEFAULT_INIT):
    """Set the starting logits of a fresh search model by ``init`` (see the module docstring)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "flat":
        return None
    magnitude_init(search)
    if init == "budget" and search.target is not None:
        return start_at_target(search)
    return None
