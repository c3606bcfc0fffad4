"""tfjpq: joint pruning and channel-wise mixed-precision quantization for Keras 3.

Quick start::

    import tfjpq
    search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8), cost="size", target=20_000)  # bytes of weights
    search.compile(optimizer="adam", loss=..., metrics=["accuracy"])  # the logits get Adam(0.02)
    search.fit(x, y, epochs=6, callbacks=[tfjpq.callbacks.SearchLogger()])
    tuned = tfjpq.freeze(search)         # hard cost within 3 % of the target
    tuned.compile(optimizer="adam", loss=...); tuned.fit(x, y, epochs=2)
    deploy = tfjpq.export(tuned)

Without a target, ``strength`` (default 0.05) weighs the cost divided by the
all-8-bit model's cost: dimensionless, the same on any model size.
"""

import importlib

from tfjpq import datasets, quantizers, tflm_cost, zoo  # noqa: F401  (tflm_cost registers the "tflm" cost)
from tfjpq.datasets import check_data  # noqa: F401
from tfjpq.errors import DataError, ModelFileError, NotASearchModelError, TfjpqError, UnsupportedModelError  # noqa: F401
from tfjpq.graph.check import load_model  # noqa: F401
from tfjpq.export import export  # noqa: F401
from tfjpq.search import SearchModel, freeze, wrap  # noqa: F401
from tfjpq.summary import profile, summary  # noqa: F401

__all__ = [
    "wrap", "freeze", "export", "SearchModel", "profile", "summary",
    "TfjpqError", "UnsupportedModelError", "NotASearchModelError", "DataError", "ModelFileError",
    "check_data", "load_model",
    "datasets", "quantizers", "tflm_cost", "zoo", "budget", "callbacks", "cost", "graph", "zeroq", "precrop", "quantune",
]

_SUBMODULES = ("budget", "callbacks", "cost", "graph", "zeroq", "precrop", "quantune")


def __getattr__(name):
    # Submodules load on first use, so `import tfjpq` stays light.
    if name in _SUBMODULES:
        return importlib.import_module(f"tfjpq.{name}")
    raise AttributeError(f"module 'tfjpq' has no attribute {name!r}")

__version__ = "0.1.0"
