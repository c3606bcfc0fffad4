"""Quantune: XGBoost-guided tuning of post-training quantization configurations, scored on TFLM.

After Lee et al., "Quantune: Post-training quantization of convolutional neural
networks using extreme gradient boosting for fast deployment" (2022), on what
TFLite and TFLM can deploy: activation ranges (min-max, percentile, KL, MSE),
calibration data (real samples or ZeroQ distilled data), per-channel or
per-tensor weights, int8 / INT4 weights and bias correction.

Example::

    import tfjpq
    result = tfjpq.quantune.tune(model, x_cal, (x_val, y_val), strategy="xgboost", trials=16,
                                 out="runs/my_model.json")
    result.best_config, result.best_score, result.artifact.size
"""

from tfjpq.quantune.prepare import FEATURES, Measurer, fold_batchnorm, model_features, prepare_model
from tfjpq.quantune.space import AXES, DEFAULTS, VALUES, Config, QuantuneError, Space
from tfjpq.quantune.strategies import STRATEGIES
from tfjpq.quantune.tune import TuneResult, load_history, save_history, simulate, tune

__all__ = [
    "tune", "simulate", "TuneResult", "load_history", "save_history", "Space", "Config", "QuantuneError",
    "AXES", "VALUES", "DEFAULTS", "STRATEGIES", "FEATURES", "Measurer", "model_features", "fold_batchnorm",
    "prepare_model",
]
