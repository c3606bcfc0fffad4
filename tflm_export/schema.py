"""The TFLite flatbuffer schema and operator names, in one place for every tflm_export module.

Example::

    from tflm_export import schema
    schema.op_name(schema.fb().BuiltinOperator.CONV_2D)     # 'CONV_2D'
"""

from __future__ import annotations

import functools

__all__ = ["fb", "builtin_names", "op_name", "opcode_name"]


def fb():
    """The generated flatbuffer schema module (``schema_py_generated``) tflite-micro ships."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


@functools.lru_cache(maxsize=1)
def builtin_names() -> dict:
    """``{builtin operator code: name}``, e.g. ``{3: 'CONV_2D', ...}``."""
    return {v: k for k, v in vars(fb().BuiltinOperator).items() if not k.startswith("_")}


def op_name(builtin_code, custom_code=None) -> str:
    """The operator's name: the custom code for a CUSTOM operator, else the builtin's name."""
    code = int(builtin_code or 0)
    if code == fb().BuiltinOperator.CUSTOM:
        c = custom_code
        if isinstance(c, bytes):
            return c.decode("utf-8", "replace")
        return str(c) if c else "CUSTOM"
    return builtin_names().get(code, f"BUILTIN_{code}")


def opcode_name(opcode) -> str:
    """The name of a flatbuffer ``OperatorCode`` (object API), reading the deprecated code field too."""
    code = max(int(opcode.builtinCode or 0), int(opcode.deprecatedBuiltinCode or 0))
    return op_name(code, opcode.customCode)
