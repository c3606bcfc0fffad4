"""Errors tfjpq raises on input it cannot handle."""


class UnsupportedModelError(ValueError):
    """The model (or one of its layers) is outside what tfjpq supports; the message names it."""


class NotASearchModelError(TypeError):
    """A function that needs a model made by ``tfjpq.wrap`` (or ``tfjpq.freeze``) got something else."""
