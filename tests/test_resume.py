"""Resume: an interrupted search or fine-tune continues with keras.callbacks.BackupAndRestore and loses nothing.

The slow test kills child processes (``os._exit`` from a callback, mid-epoch) and
resumes them; the fast ones interrupt a fit in this process with an exception.
Both compare with an uninterrupted run of the same seed, exactly.
"""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import tfjpq
from tfjpq import datasets, zoo
from tfjpq.callbacks import SearchLogger, StrengthWarmup, TemperatureDecay, load_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(os.path.dirname(__file__), "_resume_child.py")
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _child(workdir, *args, expect=0):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",  # the checkout under test
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, CHILD, str(workdir), *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _assert_same(a, b, keys):
    missing = sorted(set(keys) - set(b.files))
    assert not missing, f"missing after the resume: {missing[:10]}"
    differ = [k for k in keys if not np.array_equal(a[k], b[k])]
    assert not differ, f"not restored exactly: {differ[:10]}"


@pytest.mark.slow
def test_killed_search_and_finetune_resume_to_the_uninterrupted_result(tmp_path):
    """Kill mid-epoch in the search, resume; kill mid-epoch in the fine-tune, resume: the same bits as no kill."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    full.mkdir(), resumed.mkdir()
    _child(full, "--out", str(tmp_path / "full.npz"))
    # 8 batches an epoch: batch 5 of search epoch 2, with the backup of epoch 1 on disk
    _child(resumed, "--kill", "search:13", expect=17)
    assert (resumed / "search_backup" / "latest.weights.h5").exists() and not (resumed / "search.keras").exists()
    assert [r["epoch"] for r in load_records(resumed / "records.json")] == [0]
    _child(resumed, "--kill", "finetune:11", expect=17)  # resumes the search, then dies in fine-tune epoch 2
    assert (resumed / "search.keras").exists() and not (resumed / "search_backup").exists()
    _child(resumed, "--out", str(tmp_path / "resumed.npz"))
    assert not (resumed / "finetune_backup").exists()  # BackupAndRestore removes its folder at the end

    a, b = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    final = [k for k in a.files if not k.startswith("finetune_history/")]
    _assert_same(a, b, final)  # every variable of the search and tuned models, the fine-tune optimizer, choices
    assert len(json.loads(str(b["records"]))) == 3 and str(a["records"]) == str(b["records"])
    for k in a.files:  # the resumed fit's History holds the epochs it ran: the last one
        if k.startswith("finetune_history/"):
            assert np.array_equal(a[k][-1:], b[k]), k
    sa, sb = np.load(full / "search_state.npz"), np.load(resumed / "search_state.npz")
    opt = [k for k in sa.files if not k.startswith("history/")]
    assert any(k.startswith("arch_optimizer/") and "alpha" in k for k in opt)
    _assert_same(sa, sb, opt)  # both optimizers' states (iterations, Adam moments of weights and logits)
    for k in sa.files:
        if k.startswith("history/"):  # the resumed search ran epochs 2 and 3
            assert np.array_equal(sa[k][-2:], sb[k]), k


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def digits_small():
    (x, y), _ = datasets.load("digits")
    return x[:192], y[:192]


@pytest.fixture(scope="module")
def base(digits_small):
    x, y = digits_small
    keras.utils.set_random_seed(0)
    model = zoo.small_cnn(width=4)
    zoo.train(model, x, y, epochs=2)
    return model


def _fit(base, data, backup, epochs, interrupt=None, logger=None, **wrap):
    """A fresh search model (as in a new process) trained with BackupAndRestore; returns it and the callbacks."""
    x, y = data
    search = tfjpq.wrap(base, **wrap)
    search.compile(optimizer="adam", loss=LOSS)
    callbacks = [TemperatureDecay(rate=0.3)]
    if "target" not in wrap:
        callbacks.append(StrengthWarmup(epochs=2))
    if logger is not None:
        callbacks.append(logger)
    callbacks.append(keras.callbacks.BackupAndRestore(str(backup)))
    if interrupt is not None:
        callbacks.append(_Interrupt(*interrupt))
    hist = None
    try:
        hist = search.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0, callbacks=callbacks)
    except KeyboardInterrupt:
        pass
    return search, hist


def _state(search):
    out = {v.path: v.numpy() for v in search.variables}
    for name in ("optimizer", "arch_optimizer"):
        out.update({f"{name}/{v.path.split('/', 1)[-1]}": v.numpy() for v in getattr(search, name).variables})
    return out


@pytest.mark.parametrize("wrap", [dict(target=700), dict(strength=0.5)], ids=["target", "warmup"])
def test_backup_restores_weights_logits_controller_and_both_optimizers(base, digits_small, tmp_path, wrap):
    keras.utils.set_random_seed(3)
    ref, _ = _fit(base, digits_small, tmp_path / "ref", epochs=2, **wrap)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # Keras warns "Skipping variable loading for optimizer"
        warnings.filterwarnings("ignore", message="tfjpq.wrap")
        keras.utils.set_random_seed(3)
        _fit(base, digits_small, tmp_path / "b", epochs=2, interrupt=(1, 3), **wrap)
        resumed, hist = _fit(base, digits_small, tmp_path / "b", epochs=2, **wrap)
    assert len(hist.history["loss"]) == 1  # epoch 2 only
    a, b = _state(ref), _state(resumed)
    assert a.keys() == b.keys()
    assert any(k.startswith("arch_optimizer/") and "alpha_momentum" in k for k in a)  # the logits' Adam moments are compared
    assert [k for k in a if not np.array_equal(a[k], b[k])] == []
    assert resumed.strength == ref.strength and float(resumed._multiplier) == float(ref._multiplier)
    if "target" not in wrap:
        assert resumed.strength == pytest.approx(0.5)  # StrengthWarmup ramped to the wrapped strength, not to 0


def test_optimizers_are_built_at_compile_on_the_variables_they_update(base):
    search = tfjpq.wrap(base)
    search.compile(optimizer="adam", loss=LOSS)
    n_arch, n_all = len(search.arch_variables()), len(search.trainable_variables)
    assert search.optimizer.built and search.arch_optimizer.built
    assert len(search.optimizer._trainable_variables) == n_all - n_arch
    assert len(search.arch_optimizer._trainable_variables) == n_arch
    shared = tfjpq.wrap(base)
    shared.compile(optimizer="adam", loss=LOSS, arch_optimizer="shared")
    assert shared.arch_optimizer is None and len(shared.optimizer._trainable_variables) == n_all
    tuned = tfjpq.freeze(search)  # no trainable logits: the logits' optimizer stays unbuilt, unused
    tuned.compile(optimizer="adam", loss=LOSS)
    assert tuned.arch_variables() == [] and not tuned.arch_optimizer.built


def test_logger_records_survive_a_resume(base, digits_small, tmp_path):
    path = tmp_path / "records.json"
    keras.utils.set_random_seed(3)
    ref_logger = SearchLogger(verbose=0)
    _fit(base, digits_small, tmp_path / "ref", epochs=3, logger=ref_logger, target=700)
    keras.utils.set_random_seed(3)
    _fit(base, digits_small, tmp_path / "b", epochs=3, interrupt=(2, 1), logger=SearchLogger(verbose=0, backup_path=path),
         target=700)
    assert [r["epoch"] for r in load_records(path)] == [0, 1]
    logger = SearchLogger(verbose=0, backup_path=path)  # a new process: a new logger, the same file
    _fit(base, digits_small, tmp_path / "b", epochs=3, logger=logger, target=700)
    assert [r["epoch"] for r in logger.records] == [0, 1, 2]
    assert logger.records == ref_logger.records  # exactly, bit-width histogram keys back as ints
    assert load_records(path) == ref_logger.records
    fresh = SearchLogger(verbose=0, backup_path=path)  # a run from epoch 0 does not take stale records
    fresh.set_model(logger.model)
    fresh.on_train_begin()
    fresh.on_epoch_begin(0)
    assert fresh.records == []
    path.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_records(path)


def test_resumed_logger_warns_when_the_backup_is_ahead_of_its_records(tmp_path):
    path = tmp_path / "records.json"
    tfjpq.callbacks.save_records(path, [{"epoch": 0, "totals": {}, "rows": []}])
    logger = SearchLogger(verbose=0, backup_path=path)
    logger.on_train_begin()
    with pytest.warns(UserWarning, match=r"no records of epoch\(s\) \[1\].*before BackupAndRestore"):
        logger.on_epoch_begin(2)
    assert [r["epoch"] for r in logger.records] == [0]


def test_resumed_logger_drops_records_of_epochs_it_runs_again():
    logger = SearchLogger(verbose=0)
    logger.records = [{"epoch": e} for e in range(4)]
    logger.on_train_begin()
    logger.on_epoch_begin(2)  # a backup of epoch 2's start, and the logger had seen epochs 2 and 3
    assert [r["epoch"] for r in logger.records] == [0, 1]


def test_strength_setter_keeps_the_multiplier_in_fixed_mode_only(base):
    search = tfjpq.wrap(base, strength=0.3)
    search.strength = 0.1
    assert float(search._multiplier) == pytest.approx(0.1)
    warm = StrengthWarmup(epochs=2)
    warm.set_model(search)
    warm.on_train_begin()
    warm.on_epoch_begin(1)
    assert search.strength == pytest.approx(0.05) and float(search._multiplier) == pytest.approx(0.1)
    targeted = tfjpq.wrap(base, target=700, strength=0.3)
    targeted.strength = 2.0  # the controller's multiplier is its own state
    assert float(targeted._multiplier) == pytest.approx(0.3)
