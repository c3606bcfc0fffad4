"""The errors tfjpq raises on input it cannot handle: one family under :class:`TfjpqError`."""

__all__ = ["TfjpqError", "UnsupportedModelError", "NotASearchModelError", "DataError", "ModelFileError"]


class TfjpqError(Exception):
    """Base class of every error tfjpq raises on purpose."""


class UnsupportedModelError(TfjpqError, ValueError, TypeError):
    """The model (or one of its layers) is outside what tfjpq supports; the message names it and says what to do.

    Every entry point (``wrap``, ``precrop``, ``zeroq``, ``summary``) raises this
    class for the same bad model. It is a ``ValueError`` and, for callers of
    the older checks that raised ``TypeError``, a ``TypeError`` too.
    """


class NotASearchModelError(TfjpqError, TypeError):
    """A function that needs a model made by ``tfjpq.wrap`` (or ``tfjpq.freeze``) got something else."""


class DataError(TfjpqError, ValueError):
    """Input data tfjpq cannot use: NaN or Inf values, a truncated or malformed ``.npz`` file.

    Raised by :func:`tfjpq.check_data` and by every tfjpq function that reads data
    (``zeroq.sensitivity``, ``precrop.scores``, ``datasets.load_npz``); the message names the
    array, how many values are bad and where the first one is.
    """


class ModelFileError(TfjpqError, ValueError):
    """A ``.keras`` file that cannot be loaded (truncated, corrupted, not a Keras archive): :func:`tfjpq.load_model`."""
