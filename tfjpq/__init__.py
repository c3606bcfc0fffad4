"""tfjpq: joint pruning and channel-wise mixed-precision quantization for Keras 3.

Quick start::

    import tfjpq
    search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8), cost="size", strength=1e-6)
    search.compile(optimizer="adam", loss=..., metrics=["accuracy"])
    search.fit(x, y, epochs=10, callbacks=[tfjpq.callbacks.TemperatureDecay()])
    tuned = tfjpq.freeze(search)
    deploy = tfjpq.export(tuned)
"""

import importlib

from tfjpq import datasets, quantizers, zoo  # noqa: F401
from tfjpq.errors import NotASearchModelError, UnsupportedModelError  # noqa: F401
from tfjpq.export import export  # noqa: F401
from tfjpq.search import SearchModel, freeze, wrap  # noqa: F401
from tfjpq.summary import profile, summary  # noqa: F401

_SUBMODULES = ("callbacks", "cost", "tflm_cost", "zeroq", "quantune", "precrop")


def __getattr__(name):
    # Submodules load on first use, so `import tfjpq` stays light.
    if name in _SUBMODULES:
        return importlib.import_module(f"tfjpq.{name}")
    raise AttributeError(f"module 'tfjpq' has no attribute {name!r}")

__version__ = "0.1.0"
