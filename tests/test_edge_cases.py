"""The edge cases users hit, each with the behaviour docs/reliability.md documents."""

import os
import warnings

import keras
import numpy as np
import pytest
from keras import layers

import tfjpq
import tflm_export
from tfjpq.errors import DataError, UnsupportedModelError


def _small(filters=4, input_channels=1, bn=True, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, input_channels))
    x = layers.Conv2D(filters, 3, padding="same", name="c1")(inp)
    if bn:
        x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(3, name="fc")(x))


def _trained_bn(model):
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.1, np.float32))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 0.5, np.float32))
    return model


def test_group_with_every_channel_chosen_pruned_keeps_min_channels():
    search = tfjpq.wrap(_trained_bn(_small()), weight_bits=(0, 4, 8))
    for choice in search.precision_choices():
        alpha = np.full(choice.alpha.shape, -5.0, np.float32)
        if 0 in choice.bits:
            alpha[list(choice.bits).index(0)] = 5.0          # every channel prefers "pruned"
        else:
            alpha[0] = 5.0
        choice.alpha.assign(alpha)
    frozen = tfjpq.freeze(search)
    deploy = tfjpq.export(frozen)
    assert deploy.get_layer("c1").get_weights()[0].shape[-1] == 1   # min_channels=1 survives
    assert deploy.predict(np.zeros((2, 6, 6, 1), np.float32), verbose=0).shape == (2, 3)


def test_single_channel_layers_one_channel_input_batch_of_one():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 1))
    x = layers.Conv2D(1, 3, padding="same", activation="relu", name="c1")(inp)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.Flatten()(x)
    model = keras.Model(inp, layers.Dense(1, name="fc")(x))
    search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8))
    search.compile(optimizer="adam", loss="mse")
    x, y = np.random.default_rng(0).uniform(0, 1, (3, 6, 6, 1)).astype("float32"), np.zeros((3, 1), "float32")
    search.fit(x, y, batch_size=1, epochs=1, verbose=0)
    deploy = tfjpq.export(tfjpq.freeze(search))
    art = tflm_export.convert(deploy, x, check_tflm=False)
    assert art.inputs[0]["shape"] == [1, 6, 6, 1] and art.outputs[0]["shape"] == [1, 1]


def test_nan_or_inf_in_data_is_a_clear_error():
    x = np.ones((4, 6, 6, 1), np.float32)
    x[2, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"training data: x holds 1 NaN value\(s\).*first at index \(2, 0, 0, 0\)"):
        tfjpq.check_data(x, np.zeros(4), what="training data")
    tfjpq.check_data(np.ones(3), np.arange(3))                      # clean data passes
    model = _trained_bn(_small())
    from tfjpq import precrop, zeroq

    with pytest.raises(DataError, match="zeroq.sensitivity data"):
        zeroq.sensitivity(model, x)
    with pytest.raises(DataError, match="precrop data"):
        precrop.scores(model, "snip", data=(x, np.zeros(4, np.int32)))
    with pytest.raises(tflm_export.InvalidArgumentError, match="NaN or Inf"):
        tflm_export.emulate(tflm_export.convert(model, np.ones((4, 6, 6, 1), np.float32)), inputs=x)
    with pytest.raises(tflm_export.ConversionError, match=r"representative_data holds 1 NaN or Inf.*\(2, 0, 0, 0\)"):
        tflm_export.convert(model, x)                               # calibration data: before any conversion
    x_inf = np.ones((4, 6, 6, 1), np.float32)
    x_inf[1, 3, 3, 0] = np.inf
    with pytest.raises(tflm_export.ConversionError, match=r"representative_data\(\) item 1 holds 1 NaN or Inf"):
        tflm_export.convert(model, lambda: iter([x_inf[k : k + 1] for k in range(4)]))


def test_nan_weights_after_a_diverged_fit_are_refused_by_wrap_and_freeze():
    model = _trained_bn(_small())
    w = model.get_layer("fc").get_weights()
    w[0][0, 0] = np.inf
    model.get_layer("fc").set_weights(w)
    with pytest.raises(DataError, match="layer 'fc' has 1 NaN or Inf"):
        tfjpq.wrap(model)
    search = tfjpq.wrap(_trained_bn(_small()))
    search.get_layer("fc").kernel.assign(np.full(search.get_layer("fc").kernel.shape, np.nan, np.float32))
    with pytest.raises(DataError, match="tfjpq.freeze: layer 'fc'"):
        tfjpq.freeze(search)


def test_model_without_quantizable_layer():
    inp = keras.Input((6, 6, 1))
    model = keras.Model(inp, layers.GlobalAveragePooling2D()(layers.ReLU()(inp)))
    with pytest.raises(UnsupportedModelError, match="no Conv2D, DepthwiseConv2D or Dense layer to search"):
        tfjpq.wrap(model)


def test_weight_bits_unsorted_duplicated_or_without_8():
    model = _trained_bn(_small())
    search = tfjpq.wrap(model, weight_bits=(8, 0, 4, 2))              # unsorted: sorted
    assert {tuple(c.bits) for c in search.precision_choices()} == {(0, 2, 4, 8), (2, 4, 8)}   # (the output: never pruned)
    with pytest.raises(ValueError, match="distinct"):
        tfjpq.wrap(model, weight_bits=(0, 4, 4, 8))                   # duplicated: refused
    search = tfjpq.wrap(model, weight_bits=(0, 2, 4))                 # without 8: a legal, smaller space
    frozen = tfjpq.freeze(search)
    deploy = tfjpq.export(frozen)
    assert max(max(bits) for bits in deploy.channel_bits.values()) <= 4
    assert search.reference_cost > 0                                  # still priced against all-8-bit


def test_strength_or_target_of_zero():
    model = _trained_bn(_small())
    with pytest.warns(UserWarning, match="strength=0.*without a target"):
        tfjpq.wrap(model, strength=0)
    with pytest.raises(ValueError, match="strength=0 with a target"):
        tfjpq.wrap(model, strength=0, target=1000)
    with pytest.raises(ValueError, match="target must be a positive number"):
        tfjpq.wrap(model, target=0)
    for bad in (dict(strength=float("nan")), dict(target=float("nan")), dict(temperature=0), dict(act_clip=-1)):
        with pytest.raises(ValueError):
            tfjpq.wrap(model, **bad)


def test_untrained_batchnorm_statistics_warn_in_zeroq_and_the_search():
    from tfjpq import zeroq

    fresh = _small()
    with pytest.warns(UserWarning, match=r"\['bn1'\] still hold their initial statistics"):
        tfjpq.wrap(fresh)
    with pytest.warns(UserWarning, match="ZeroQ distils data"):
        zeroq.distill(fresh, num_samples=2, iterations=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tfjpq.wrap(_trained_bn(_small()))                              # trained statistics: no warning


def test_read_only_out_dir_is_a_clear_error_and_nothing_is_written(tmp_path):
    art = tflm_export.convert(_trained_bn(_small()), np.ones((4, 6, 6, 1), np.float32), check_tflm=False)
    with pytest.raises(tflm_export.OutDirError, match="cannot write out_dir") as info:
        art.save("/proc/tfjpq_out/model")                            # read-only even for root
    assert isinstance(info.value, OSError) and isinstance(info.value, tflm_export.TFLMExportError)
    if os.geteuid() != 0:                                             # a chmod'ed folder binds only non-root users
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(tflm_export.OutDirError):
            art.save(ro / "model")
        assert list(ro.iterdir()) == []
    art.save(tmp_path / "ok")
    assert sorted(os.listdir(tmp_path / "ok")) == sorted(tflm_export.artifact.FILES)


@pytest.mark.parametrize("typo, expected", [("nano33", "nano33ble"), ("nucleo-f746", "nucleo-f746zg"),
                                            ("stm32h734", "stm32h743"), ("Nucleo-L4R5ZI ", None)])
def test_board_name_typo_suggests_the_closest(typo, expected):
    if expected is None:                                              # case and spaces are forgiven
        assert tflm_export.get_board(typo).name == "nucleo-l4r5zi"
        return
    with pytest.raises(tflm_export.InvalidArgumentError, match=f"did you mean '{expected}'"):
        tflm_export.get_board(typo)
