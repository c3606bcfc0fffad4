"""The exceptions tflm_export raises, in one place.

Every error names what was wrong and, where there is one, what to do about it.

Example::

    import tflm_export
    try:
        tflm_export.emulate(artifact, board="nucleo-f411re")
    except tflm_export.DoesNotFit as e:
        print(e.budget, e.figure, e)   # e.g. "tensor arena", 180224, ...
"""

from __future__ import annotations

__all__ = [
    "TFLMExportError", "InvalidArgumentError", "ConversionError", "PackingError", "CorruptModelError",
    "UnsupportedOpError", "TFLMRuntimeError", "OutDirExistsError", "OutDirError", "DoesNotFit",
]


class TFLMExportError(Exception):
    """Base class of every error tflm_export raises on purpose."""


class InvalidArgumentError(TFLMExportError, ValueError):
    """An argument has a value tflm_export cannot use (an unknown board, core, pack mode, input shape, ...).

    A ``ValueError`` too, so callers that caught the older bare ``ValueError`` still do.
    """


class ConversionError(TFLMExportError):
    """The Keras model could not be turned into an int8 TFLite flatbuffer."""


class PackingError(TFLMExportError):
    """A forced packing method (``pack="int4"`` / ``"lut"``) or a ``weight_bits`` override cannot be applied."""


class CorruptModelError(TFLMExportError, ValueError):
    """The bytes handed over are not a well-formed TFLite flatbuffer (truncated, corrupted, not a model)."""


class UnsupportedOpError(TFLMExportError):
    """The model uses an operator that the TFLM interpreter does not provide.

    ``ops`` lists the offending operator names.
    """

    def __init__(self, message: str, ops=()):
        super().__init__(message)
        self.ops = tuple(ops)


class TFLMRuntimeError(TFLMExportError, RuntimeError):
    """The TFLM interpreter failed (or its process died) while loading or running the model."""


class OutDirExistsError(TFLMExportError, FileExistsError):
    """``out_dir`` exists already and ``overwrite=True`` was not given."""


class OutDirError(TFLMExportError, OSError):
    """``out_dir`` cannot be written (a read-only or missing parent, no space); nothing was left half-written."""


class DoesNotFit(TFLMExportError):
    """The model needs more memory than the board has.

    Attributes: ``board`` (name), ``budget`` (``"tensor arena"`` or ``"flash"``),
    ``figure`` (bytes the model needs), ``limit`` (bytes the board offers).
    """

    def __init__(self, board: str, budget: str, figure: int, limit: int, detail: str = ""):
        self.board, self.budget, self.figure, self.limit = board, budget, int(figure), int(limit)
        msg = (
            f"model does not fit on {board}: {budget} needs {self.figure:,} bytes "
            f"but the board's {budget} budget is {self.limit:,} bytes "
            f"(over by {self.figure - self.limit:,} bytes)"
        )
        if detail:
            msg += f"; {detail}"
        super().__init__(msg)
