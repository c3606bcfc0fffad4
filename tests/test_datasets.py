"""Data loaders: the MFCC front end on synthetic audio, CIFAR-10 and Speech Commands read through
tfds from tiny records written by tfds itself, and the error when the data are not there."""

import numpy as np
import pytest
import tensorflow as tf

from tfjpq import audio, datasets
from tfjpq.errors import DataError

SR = 16000


def sine(freq_hz, seconds=1.0, amplitude=0.5):
    t = np.arange(int(SR * seconds)) / SR
    return (amplitude * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


# --------------------------------------------------------------------------- front end

def test_front_end_defaults_are_mlperf_tiny_kws():
    fe = audio.MLPERF_TINY_KWS
    assert (fe.window_samples, fe.stride_samples, fe.fft_length) == (480, 320, 512)
    assert fe.feature_shape == (49, 10, 1)
    assert audio.KWSFrontEnd(window_ms=40).feature_shape == (49, 10, 1)   # ARM ML-KWS-for-MCU window


@pytest.mark.parametrize("window_ms", [30.0, 40.0])
def test_mfcc_of_a_sine_has_the_shape_and_finite_values(window_ms):
    fe = audio.KWSFrontEnd(window_ms=window_ms)
    feats = audio.mfcc(sine(1000), fe).numpy()
    assert feats.shape == (49, 10, 1) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    # a steady tone: every frame gives the same coefficients
    assert np.abs(feats - feats.mean(0)).max() < 1e-2 * np.abs(feats).max()


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_a_sine_puts_its_energy_in_the_mel_bin_of_its_frequency(freq):
    log_mel = audio.log_mel_spectrogram(sine(freq) / 32768.0).numpy()
    centres = audio.mel_center_frequencies()
    peak = int(log_mel.mean(0).argmax())
    nearest = int(np.abs(centres - freq).argmin())
    assert abs(peak - nearest) <= 1, (freq, centres[peak], centres[nearest])
    # bins far from the tone are orders of magnitude weaker (log scale)
    far = np.abs(np.arange(len(centres)) - peak) > 5
    assert log_mel.mean(0)[far].max() < log_mel.mean(0)[peak] - 4


def test_mel_centres_match_tf_signals_filters():
    fe = audio.MLPERF_TINY_KWS
    matrix = audio._mel_matrix(fe).numpy()                       # (fft bins, mel bins)
    bin_hz = np.arange(matrix.shape[0]) * fe.sample_rate / fe.fft_length
    peak_hz = bin_hz[matrix.argmax(0)]
    spacing = fe.sample_rate / fe.fft_length
    assert np.abs(peak_hz - audio.mel_center_frequencies(fe)).max() <= spacing


def test_short_clips_are_zero_padded_and_long_clips_cropped():
    short = sine(1000, seconds=0.5)
    padded = audio.fit_length(short, SR).numpy()
    assert padded.shape == (SR,) and (padded[: len(short)] == short).all() and (padded[len(short):] == 0).all()
    long = np.concatenate([sine(1000), sine(3000, seconds=0.5)])
    assert (audio.fit_length(long, SR).numpy() == long[:SR]).all()
    # the features of a long clip are those of its first second
    np.testing.assert_allclose(audio.mfcc(long).numpy(), audio.mfcc(long[:SR]).numpy(), rtol=1e-5, atol=1e-4)
    # a half-second clip: the padded half is silence, so the late frames are at the log floor
    log_mel = audio.log_mel_spectrogram(padded / 32768.0).numpy()
    assert log_mel[-5:].max() < np.log(1e-5) < log_mel[:20].min()


def test_peak_normalization_makes_features_independent_of_volume():
    tone = np.sin(2 * np.pi * 700 * np.arange(SR) / SR).astype(np.float32)   # float: no int16 rounding noise
    np.testing.assert_allclose(audio.mfcc(0.01 * tone).numpy(), audio.mfcc(0.9 * tone).numpy(), rtol=1e-4, atol=1e-3)
    silence = audio.mfcc(np.zeros(SR, np.int16)).numpy()
    assert np.isfinite(silence).all()


def test_mfcc_runs_in_a_tf_data_pipeline_on_clips_of_any_length():
    clips = [sine(500, 0.3), sine(500, 1.0), sine(500, 1.4)]
    ds = tf.data.Dataset.from_generator(lambda: iter(clips), output_signature=tf.TensorSpec([None], tf.int16))
    out = list(ds.map(audio.mfcc).as_numpy_iterator())
    assert [o.shape for o in out] == [(49, 10, 1)] * 3
    batch = audio.mfcc(np.stack([sine(500), sine(2000)])).numpy()
    assert batch.shape == (2, 49, 10, 1)
    np.testing.assert_allclose(batch[0], audio.mfcc(sine(500)).numpy(), rtol=1e-5, atol=1e-4)


def test_front_end_rejects_parameters_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        audio.KWSFrontEnd(window_ms=2000)
    with pytest.raises(ValueError, match="mel range"):
        audio.KWSFrontEnd(upper_hz=9000)
    with pytest.raises(ValueError, match="num_mfcc"):
        audio.KWSFrontEnd(num_mfcc=41)


# --------------------------------------------------------------------------- tfds records

def write_tfds_records(name, data_dir, splits):
    """Write ``splits`` ({split: [example dict]}) as a prepared tfds data set ``name`` in ``data_dir``.

    The real builder's features, version and file format, written by tfds's own writer; only the
    example source is replaced, so the loaders read exactly what a real ``tfds build`` leaves.
    """
    import tensorflow_datasets as tfds

    real = tfds.builder_cls(name)

    class Synthetic(real, skip_registration=True):
        def _split_generators(self, dl_manager):
            return {split: self._synthetic(examples) for split, examples in splits.items()}

        def _synthetic(self, examples):
            for i, example in enumerate(examples):
                yield f"synthetic_{i}", example

    Synthetic.name = name
    builder = Synthetic(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("tfds_cifar")

    def examples(n, offset):
        return [{"id": f"{i}", "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                 "label": (i + offset) % 10} for i in range(n)]

    splits = {"train": examples(12, 0), "test": examples(5, 3)}
    write_tfds_records("cifar10", root, splits)
    return root, splits


def test_cifar10_loads_from_tfds_records(cifar_dir):
    root, splits = cifar_dir
    (x, y), (xt, yt) = datasets.load("cifar10", data_dir=root)
    assert x.shape == (12, 32, 32, 3) and xt.shape == (5, 32, 32, 3)
    assert x.dtype == np.float32 and y.dtype == np.int32 and 0 <= x.min() and x.max() <= 1
    # the same examples, as pixels / 255, each with its label (tfds may reorder within a split)
    written = {e["image"].tobytes(): e["label"] for e in splits["train"]}
    loaded = {np.round(img * 255).astype(np.uint8).tobytes(): label for img, label in zip(x, y)}
    assert loaded == written
    assert sorted(yt.tolist()) == sorted(e["label"] for e in splits["test"])


def test_cifar10_max_examples_caps_each_split(cifar_dir):
    root, _ = cifar_dir
    (x, y), (xt, yt) = datasets.load_cifar10(data_dir=root, max_examples=4)
    assert len(x) == len(y) == 4 and len(xt) == 4


def test_speech_commands_loads_mfccs_from_tfds_records(tmp_path):
    labels = datasets.SPEECH_COMMANDS_LABELS
    yes, silence = labels.index("yes"), labels.index("_silence_")
    clips = [(sine(600), yes), (sine(2500, seconds=0.6), labels.index("no")),
             (np.zeros(SR, np.int16), silence), (sine(900, seconds=1.3), labels.index("_unknown_"))]
    write_tfds_records("speech_commands", tmp_path, {
        "train": [{"audio": a, "label": y} for a, y in clips],
        "test": [{"audio": sine(600), "label": yes}],
        "validation": [{"audio": sine(600), "label": yes}]})
    (x, y), (xt, yt) = datasets.load("speech_commands", data_dir=tmp_path)
    assert x.shape == (4, 49, 10, 1) and xt.shape == (1, 49, 10, 1) and np.isfinite(x).all()
    assert sorted(y.tolist()) == sorted(lbl for _, lbl in clips) and yt.tolist() == [yes]
    # the loader's features are the front end's features of the stored clip
    for clip, label in clips:
        i = int(np.flatnonzero(y == label)[0])
        np.testing.assert_allclose(x[i], audio.mfcc(clip).numpy(), rtol=1e-5, atol=1e-4)
    (xv, _), = datasets.load_speech_commands(data_dir=tmp_path, splits=("validation",))
    assert xv.shape == (1, 49, 10, 1)


@pytest.mark.parametrize("name, what", [("cifar10", "CIFAR-10"), ("speech_commands", "Speech Commands")])
def test_missing_tfds_data_fails_at_once_saying_what_to_do(tmp_path, name, what):
    with pytest.raises(DataError) as info:
        datasets.load(name, data_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert what in msg and str(tmp_path) in msg
    assert f"tfds build {name} --data_dir {tmp_path}" in msg and "download=True" in msg
    assert not any(tmp_path.iterdir()) or not (tmp_path / name / "dataset_info.json").exists()


def test_unknown_name_lists_the_tfds_tasks():
    with pytest.raises(ValueError, match="speech_commands"):
        datasets.load("cifar")
