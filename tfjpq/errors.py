"""The errors tfjpq raises on input it cannot handle: one family under :class:`TfjpqError`."""

__all__ = ["TfjpqError", "UnsupportedModelError", "NotASearchModelError"]


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
