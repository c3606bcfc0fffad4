"""tflm_export: Keras model -> int8 TFLite flatbuffer with sub-byte weights, firmware sources, TFLM emulation.

Example::

    import tflm_export
    art = tflm_export.convert(model, representative_data=x_cal, out_dir="build/m")
    run = tflm_export.emulate(art, board="nano33ble", inputs=x_test)
    run.outputs, run.arena_bytes, run.flash_bytes, run.latency_ms

See docs/tflm_export.md for the storage rules, boards and the cycle model.
"""

from tflm_export import storage  # noqa: F401  (pure Python, for cost models)
from tflm_export.artifact import Artifact
from tflm_export.boards import BOARDS, Board, get_board
from tflm_export.convert import convert
from tflm_export.emulation import EmulationResult, emulate, top1_accuracy
from tflm_export.errors import (
    ConversionError,
    CorruptModelError,
    DoesNotFit,
    InvalidArgumentError,
    OutDirError,
    OutDirExistsError,
    PackingError,
    TFLMExportError,
    TFLMRuntimeError,
    UnsupportedOpError,
)

__all__ = [
    "convert", "emulate", "Board", "BOARDS", "DoesNotFit", "Artifact", "get_board", "storage",
    "ConversionError", "CorruptModelError", "InvalidArgumentError", "OutDirError", "OutDirExistsError", "PackingError", "TFLMExportError",
    "TFLMRuntimeError", "UnsupportedOpError", "EmulationResult", "top1_accuracy",
]
