"""Turning a float Keras model and a :class:`~tfjpq.quantune.space.Config` into a measured TFLM flatbuffer.

What each axis does to the deployed model:

* BatchNorm layers that directly follow a Conv2D / DepthwiseConv2D / Dense
  (as :func:`tfjpq.graph.analyze` reads the graph) are folded into it first,
  in Keras, so weight grids and bias corrections apply to the weights the
  flatbuffer stores.
* ``weights="int4-inner"`` / ``"int4-all"``: the chosen kernels are put on a
  symmetric narrow-range 4-bit grid (per channel or per tensor, following
  ``granularity``) and recorded in ``model.channel_bits``, which
  ``tflm_export.convert`` reads to store them as INT4 (conv, depthwise) or LUT.
* ``bias_correction``: each layer's bias gets ``-(W_q - W)^T E[x]``, the mean
  output shift its weight quantization causes (``E[x]``: the float model's mean
  layer input on the calibration set, per input channel).
* ``granularity`` and ``act_range`` go to ``tflm_export.convert``
  (``per_channel=``, ``activation_ranges=``).
* ``calibration``: the first ``n`` calibration samples, or ZeroQ distilled
  data (:func:`tfjpq.zeroq.distill`, computed once per model).

Example::

    m = Measurer(model, x_cal, (x_val, y_val))
    m.measure(Config(act_range="kl", weights="int4-inner"))   # {'status': 'ok', 'score': 97.2, 'bytes': ...}
"""

from __future__ import annotations

import math
import time
import traceback

import keras
import numpy as np

from tfjpq.errors import TfjpqError
from tfjpq.graph import analyze, check_model, layer_kind, topological_nodes
from tfjpq.quantune import ranges as ranges_lib
from tfjpq.quantune.space import Config, QuantuneError

__all__ = ["FEATURES", "model_features", "fold_batchnorm", "prepare_model", "Measurer"]

#: Model features the XGBoost cost model sees next to the configuration (as in the paper).
FEATURES = ("conv", "depthwise", "pointwise", "dense", "bn", "skip", "log_params", "log_macs")

LINEAR_KINDS = ("conv", "depthwise", "dense")


def model_features(model) -> dict:
    """Counts of conv (k > 1), depthwise, pointwise (1x1 conv), dense, BN and skip (Add) layers,
    log10 parameters and log10 MACs, read through the :mod:`tfjpq.graph` registry.

    Example::

        model_features(zoo.resnet8((28, 28, 1)))
        # {'conv': 7, 'depthwise': 0, 'pointwise': 2, 'dense': 1, 'bn': 9, 'skip': 3, ...}
    """
    model = check_model(model, "tunable", "quantune.model_features")
    f = dict.fromkeys(FEATURES, 0.0)
    macs = 0
    for node in topological_nodes(model):
        layer, kind = node.operation, layer_kind(node.operation)
        out = node.outputs[0].shape
        if kind == "conv":
            kh, kw, cin, cout = layer.kernel.shape
            f["pointwise" if (kh, kw) == (1, 1) else "conv"] += 1
            macs += int(np.prod(out[1:-1])) * kh * kw * cin * cout
        elif kind == "depthwise":
            kh, kw, cin, mult = layer.kernel.shape
            f["depthwise"] += 1
            macs += int(np.prod(out[1:])) * kh * kw
        elif kind == "dense":
            f["dense"] += 1
            macs += int(np.prod(layer.kernel.shape))
        elif kind == "bn":
            f["bn"] += 1
        elif kind == "add":
            f["skip"] += 1
    f["log_params"] = math.log10(max(1, model.count_params()))
    f["log_macs"] = math.log10(max(1, macs))
    return {k: float(v) for k, v in f.items()}


def _bn_affine(bn):
    """(multiplier, offset) per channel of an inference-mode BatchNormalization."""
    var = np.asarray(bn.moving_variance, np.float64)
    mean = np.asarray(bn.moving_mean, np.float64)
    gamma = np.asarray(bn.gamma, np.float64) if bn.gamma is not None else np.ones_like(var)
    beta = np.asarray(bn.beta, np.float64) if bn.beta is not None else np.zeros_like(var)
    mult = gamma / np.sqrt(var + bn.epsilon)
    return mult, beta - mean * mult


def _channel_axis(kind):
    return 2 if kind == "depthwise" else -1


def fold_batchnorm(model, entry: str = "quantune.tune") -> keras.Model:
    """A copy of ``model`` with every BatchNormalization that directly follows a linear layer folded into it.

    Every Conv2D / DepthwiseConv2D / Dense of the copy has a bias. Other layers are copied with
    their weights; BatchNormalization layers that follow anything else stay.
    """
    model = check_model(model, "tunable", entry)
    info = analyze(model)
    tensors = {}
    new_inputs = []
    for t in model.inputs:
        x = keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=t.name.split(":")[0])
        tensors[id(t)] = x
        new_inputs.append(x)
    for node in topological_nodes(model):
        layer = node.operation
        out = node.outputs[0]
        if layer.name in info.absorbed_bn:
            tensors[id(out)] = tensors[id(node.input_tensors[0])]
            continue
        kind = layer_kind(layer)
        args, kwargs = node.arguments.fill_in(tensors)
        if kind in LINEAR_KINDS:
            cfg = dict(layer.get_config(), use_bias=True)
            clone = layer.__class__.from_config(cfg)
            y = clone(*args, **kwargs)
            w = np.asarray(layer.kernel, np.float64)
            b = np.asarray(layer.bias, np.float64) if layer.bias is not None else np.zeros(w.shape[-1] if kind != "depthwise" else w.shape[2] * w.shape[3])
            li = info.linears.get(layer.name)
            if li is not None and li.bn is not None:
                mult, off = _bn_affine(li.bn)
                if kind == "depthwise":
                    w = w * mult.reshape(1, 1, -1, 1)
                else:
                    w = w * mult
                b = b * mult + off   # the absorbed BN's node maps its output to y below
            clone.set_weights([w.astype(np.float32), b.astype(np.float32)])
        else:
            clone = layer.__class__.from_config(layer.get_config())
            y = clone(*args, **kwargs)
            if layer.weights:
                clone.set_weights(layer.get_weights())
        tensors[id(out)] = y
    outs = [tensors[id(t)] for t in model.outputs]
    return keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs,
                       outs[0] if len(outs) == 1 else outs, name=model.name)


def _grid(w, bits, axis, per_channel):
    """``w`` on the symmetric narrow-range ``bits`` grid (per channel along ``axis`` or per tensor)."""
    n = 2 ** (bits - 1) - 1
    if per_channel:
        red = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        amax = np.max(np.abs(w), axis=red, keepdims=True)
    else:
        amax = np.max(np.abs(w))
    scale = np.where(amax > 0, amax / n, 1.0)
    return np.clip(np.round(w / scale), -n, n) * scale


def _four_bit_layers(model, which):
    linears = [node.operation for node in topological_nodes(model) if layer_kind(node.operation) in LINEAR_KINDS]
    if which == "int8":
        return []
    if which == "int4-all":
        return linears
    inner = linears[1:-1]
    return [l for l in inner if layer_kind(l) in ("conv", "depthwise")]


def prepare_model(folded, config: Config, x_cal=None) -> keras.Model:
    """The folded model with ``config``'s weight grids and bias correction applied (a new model).

    ``x_cal``: calibration inputs (needed for bias correction).
    """
    model = keras.models.clone_model(folded)
    model.set_weights(folded.get_weights())
    per_channel = config.granularity == "per-channel"
    four = {l.name for l in _four_bit_layers(model, config.weights)}
    linears = [node for node in topological_nodes(model) if layer_kind(node.operation) in LINEAR_KINDS]
    means = {}
    if config.bias_correction:
        if x_cal is None:
            raise QuantuneError("bias correction needs calibration inputs")
        probe = keras.Model(model.inputs, [node.input_tensors[0] for node in linears])
        outs = probe.predict(np.asarray(x_cal, np.float32), batch_size=256, verbose=0)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for node, o in zip(linears, outs):
            o = np.asarray(o, np.float64)
            means[node.operation.name] = o.reshape(-1, o.shape[-1]).mean(axis=0)
    channel_bits = {}
    for node in linears:
        layer = node.operation
        kind = layer_kind(layer)
        axis = _channel_axis(kind)
        w, b = (np.asarray(v, np.float64) for v in layer.get_weights())
        bits = 4 if layer.name in four else 8
        wq = _grid(w, bits, axis, per_channel)
        if bits == 4:
            channel_bits[layer.name] = (4,) * int(w.shape[axis])
            new_w = wq
        else:
            new_w = w
        if config.bias_correction:
            err = wq - w
            mu = means[layer.name]
            if kind == "depthwise":
                shift = np.einsum("hwcm,c->cm", err, mu).reshape(-1)
            elif kind == "conv":
                shift = np.einsum("hwio,i->o", err, mu)
            else:
                shift = err.T @ mu
            b = b - shift
        layer.set_weights([new_w.astype(np.float32), b.astype(np.float32)])
    model.channel_bits = channel_bits
    return model


def _top1(logits, y):
    """Top-1 in percent (the unit of quantune's scores)."""
    from tflm_export import top1_accuracy

    return 100.0 * top1_accuracy(logits, y)


class Measurer:
    """Converts and scores configurations of one model, with the shared work cached.

    Cached: the BN-folded model, ZeroQ distilled data, prepared Keras models per
    (weights, granularity, bias correction, calibration). The default score is
    the TFLM top-1 accuracy (percent) of the flatbuffer on ``validation_data``.
    """

    def __init__(self, model, calibration_data, validation_data=None, evaluate=None, budget_bytes=None,
                 input_range=None, zeroq_samples=64, distilled=None, seed=0):
        self.model = check_model(model, "tunable", "quantune.tune")
        self.x_cal = np.asarray(calibration_data, np.float32)
        self.validation_data = validation_data
        self.evaluate = evaluate
        self.budget_bytes = budget_bytes
        self.input_range = input_range
        self.zeroq_samples = int(zeroq_samples)
        self.seed = seed
        self._distilled = distilled  # an array, or an error message (str)
        self._folded = None
        self._prepared = {}

    # -- pieces ---------------------------------------------------------------------------
    def folded(self):
        if self._folded is None:
            self._folded = fold_batchnorm(self.model)
        return self._folded

    def distilled(self):
        """ZeroQ distilled inputs (computed once); raises if the model cannot be distilled."""
        if self._distilled is None:
            from tfjpq.zeroq import distill

            try:
                self._distilled = distill(self.model, num_samples=self.zeroq_samples, seed=self.seed, verbose=0,
                                          input_range=self.input_range)
            except Exception as e:  # remembered: every zeroq config fails the same way
                self._distilled = f"ZeroQ distillation failed: {type(e).__name__}: {e}"
        if isinstance(self._distilled, str):
            raise QuantuneError(self._distilled)
        return self._distilled

    def calibration_set(self, source: str):
        if source == "zeroq":
            return self.distilled()
        n = int(source[len("real-"):])
        return self.x_cal[:n]

    def prepared(self, config: Config):
        key = (config.weights, config.granularity, config.bias_correction,
               config.calibration if config.bias_correction else None)
        if key not in self._prepared:
            if len(self._prepared) > 8:
                self._prepared.pop(next(iter(self._prepared)))
            self._prepared[key] = prepare_model(self.folded(), config,
                                                self.calibration_set(config.calibration))
        return self._prepared[key]

    def artifact(self, config: Config, check_tflm: bool = False):
        """The converted :class:`~tflm_export.Artifact` of ``config``."""
        import warnings

        import tflm_export

        model = self.prepared(config)
        x = self.calibration_set(config.calibration)
        act = None if config.act_range == "minmax" else ranges_lib.estimator(config.act_range)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tflm_export.convert(model, representative_data=x, check_tflm=check_tflm,
                                       per_channel=config.granularity == "per-channel", activation_ranges=act,
                                       name=self.model.name)

    def score(self, artifact) -> float:
        if self.evaluate is not None:
            return float(self.evaluate(artifact))
        from tflm_export import runner

        x, y = self.validation_data
        q = artifact.quantize_input(np.asarray(x, np.float32))
        run = runner.run_tflm(artifact.model_bytes, [q], num_outputs=len(artifact.outputs), verify_minimal=False)
        return _top1(artifact.dequantize_output(run.outputs[0]), y)

    def float_score(self):
        """Keras top-1 (percent) of the float model on the validation data; None with a user ``evaluate``."""
        if self.evaluate is not None or self.validation_data is None:
            return None
        x, y = self.validation_data
        return _top1(self.model.predict(np.asarray(x, np.float32), batch_size=256, verbose=0), y)

    # -- one trial ------------------------------------------------------------------------
    def measure(self, config: Config) -> dict:
        """``{'status': 'ok'|'infeasible'|'failed', 'score', 'bytes', 'seconds', 'error'}`` of one config."""
        t0 = time.perf_counter()
        row = {"status": "failed", "score": None, "bytes": None, "error": None}
        try:
            art = self.artifact(config)
            row["bytes"] = int(art.size)
            if self.budget_bytes is not None and art.size > self.budget_bytes:
                row["status"] = "infeasible"
                row["error"] = f"{art.size:,} B over the budget of {int(self.budget_bytes):,} B"
            else:
                row["score"] = float(self.score(art))
                row["status"] = "ok"
        except (TfjpqError, Exception) as e:  # a failing config is recorded, the search goes on
            msg = f"{type(e).__name__}: {e}".strip()
            row["error"] = msg[:2000]
            row["traceback"] = traceback.format_exc(limit=3)[-2000:]
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row
