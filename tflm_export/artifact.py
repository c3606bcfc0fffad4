"""The result of :func:`tflm_export.convert`: model bytes, report, file paths, and writing them out.

Example::

    art = tflm_export.convert(model, x_cal)
    art.model_bytes[:8], art.report["totals"]
    art.save("build/m")               # model.tflite, model_data.cc/.h, op_resolver.h, model_settings.h, report.json
    x_q = art.quantize_input(x)       # float -> int8 with the input tensor's scale / zero point
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from tflm_export import codegen
from tflm_export.errors import OutDirError, OutDirExistsError

FILES = ("model.tflite", "model_data.cc", "model_data.h", "op_resolver.h", "model_settings.h", "report.json")

_NP = {"INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "INT32": np.int32, "FLOAT32": np.float32,
       "INT64": np.int64, "BOOL": np.bool_}


def io_details(info, which) -> list:
    """Shape / dtype / scale / zero point of a model's inputs or outputs (from a ModelInfo)."""
    out = []
    for i in (info.inputs if which == "inputs" else info.outputs):
        t = info.tensors[i]
        out.append({
            "name": t.name, "shape": list(t.shape), "dtype": t.dtype, "elements": t.elements,
            "scale": t.scales[0] if t.scales else None,
            "zero_point": t.zero_points[0] if t.zero_points else (0 if t.scales else None),
        })
    return out


def check_finite(a, what, error, why) -> None:
    """Raise ``error`` naming ``what``, the count and the first index when a float array holds NaN or Inf."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.inexact):
        return
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise error(f"{what} holds {int(bad.sum())} NaN or Inf values (first at index {first}); {why}")


def quantize(x, detail) -> np.ndarray:
    """Float array -> the tensor's integer type (round to nearest, saturate); integer arrays pass through."""
    x = np.asarray(x)
    dt = _NP.get(detail["dtype"], np.int8)
    if np.issubdtype(x.dtype, np.integer) or detail.get("scale") is None or not np.issubdtype(dt, np.integer):
        return x.astype(dt)
    info = np.iinfo(dt)
    q = np.round(x / detail["scale"]) + detail["zero_point"]
    return np.clip(q, info.min, info.max).astype(dt)


def dequantize(q, detail) -> np.ndarray:
    """Integer tensor values -> float32 with the tensor's scale / zero point."""
    if detail.get("scale") is None:
        return np.asarray(q).astype(np.float32)
    return ((np.asarray(q).astype(np.float32) - detail["zero_point"]) * np.float32(detail["scale"])).astype(np.float32)


@dataclass
class Artifact:
    """An exported model.

    Attributes:
        name: C identifier used in the generated sources (``g_<name>_model_data``).
        model_bytes: the (packed) .tflite flatbuffer.
        int8_model_bytes: the plain full-int8 flatbuffer before packing (reference).
        report: storage per tensor and totals (also written to ``report.json``).
        arena_bytes: minimal tensor arena measured with the TFLM allocator.
        paths: file name -> path of the written files (empty until saved).
        inputs / outputs: shape, dtype, scale and zero point of each model input / output.
    """

    name: str
    model_bytes: bytes
    int8_model_bytes: bytes
    report: dict
    arena_bytes: int
    inputs: list
    outputs: list
    ops: tuple
    paths: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.model_bytes)

    def quantize_input(self, x, index: int = 0) -> np.ndarray:
        return quantize(x, self.inputs[index])

    def dequantize_output(self, q, index: int = 0) -> np.ndarray:
        return dequantize(q, self.outputs[index])

    def sources(self) -> dict:
        """File name -> contents (bytes for the .tflite, text otherwise)."""
        return {
            "model.tflite": self.model_bytes,
            "model_data.cc": codegen.model_data_cc(self.name, self.model_bytes),
            "model_data.h": codegen.model_data_h(self.name, len(self.model_bytes)),
            "op_resolver.h": codegen.op_resolver_h(self.name, self.ops),
            "model_settings.h": codegen.model_settings_h(self.name, self.arena_bytes, self.inputs, self.outputs),
            "report.json": self.report_json(),
        }

    def report_json(self) -> str:
        """``report`` as the text of ``report.json``."""
        return json.dumps(self.report, indent=2, default=_json_default) + "\n"

    def save(self, out_dir, overwrite: bool = False, firmware_size: bool = True) -> dict:
        """Write the files atomically: into a temporary sibling directory, then renamed into place.

        An existing ``out_dir`` is replaced only with ``overwrite=True``
        (:class:`~tflm_export.errors.OutDirExistsError` otherwise); the old
        directory is kept until the new one is in place. When the Cortex-M
        toolchain (``arm-none-eabi-g++``) is installed and ``firmware_size`` is
        true, ``model_data.cc`` is cross-compiled for a Cortex-M4 first and the
        real ``.rodata`` of the model array goes into ``report["firmware"]``
        (:func:`tflm_export.codegen.cross_compile_size`); without it,
        ``report["firmware"]`` is None.

        Example::

            art.save("build/m", overwrite=True)
            art.report["firmware"]     # {'rodata_bytes': ..., 'model_array_bytes': ...} or None
        """
        out_dir = os.path.abspath(os.fspath(out_dir))
        check_out_dir(out_dir, overwrite)
        parent = os.path.dirname(out_dir)
        try:
            os.makedirs(parent, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
        except OSError as e:
            raise OutDirError(f"cannot write out_dir {out_dir!r}: {e.strerror or e} ({parent!r} is read-only, "
                              "missing or full?); nothing was written") from e
        try:
            def write(fname, content):
                with open(os.path.join(tmp, fname), "wb" if isinstance(content, bytes) else "w") as f:
                    f.write(content)
                    f.flush()
                    os.fsync(f.fileno())

            files = self.sources()
            del files["report.json"]  # written last: it records the compiled size of model_data.cc
            for fname, content in files.items():
                write(fname, content)
            self.report["firmware"] = codegen.cross_compile_size(tmp) if firmware_size else None
            write("report.json", self.report_json())
            os.chmod(tmp, 0o755)
            old = None
            if os.path.exists(out_dir):
                check_out_dir(out_dir, overwrite)
                old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
                os.rmdir(old)
                os.rename(out_dir, old)
            try:
                os.rename(tmp, out_dir)
            except OSError:
                if old is not None:
                    os.rename(old, out_dir)   # put the previous export back
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.paths = {f: os.path.join(out_dir, f) for f in FILES}
        return self.paths


def check_out_dir(out_dir, overwrite: bool) -> None:
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise OutDirExistsError(f"out_dir {out_dir!r} exists and is not a directory")
        if not overwrite:
            raise OutDirExistsError(
                f"out_dir {out_dir!r} already exists; pass overwrite=True to replace it, or choose another directory"
            )


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
