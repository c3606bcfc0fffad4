"""The keyword-spotting front end: 1 s of 16 kHz audio -> a 49 x 10 x 1 MFCC image.

What MLPerf Tiny's KWS training script (``mlcommons/tiny``,
``benchmark/training/keyword_spotting``) feeds its DS-CNN, written with
``tf.signal`` so it runs inside a ``tf.data`` pipeline:

1. scale the int16 samples to [-1, 1] by the clip's peak (a silent clip stays 0);
2. pad with zeros at the end, or keep the first second, to ``clip_samples``;
3. magnitude STFT, Hann window of ``window_ms``, hop ``stride_ms``, FFT length the
   next power of two;
4. ``num_mel_bins`` triangular mel filters from ``lower_hz`` to ``upper_hz``;
5. ``log(mel + 1e-6)``;
6. DCT-II (``tf.signal.mfccs_from_log_mel_spectrograms``), first ``num_mfcc`` terms.

Defaults are MLPerf Tiny's: 16 kHz, 1 s, 30 ms window, 20 ms stride, 40 mel bins over
20-4000 Hz, 10 coefficients: 49 frames x 10. ARM's ML-KWS-for-MCU DS-CNN uses a 40 ms
window with the same stride (``window_ms=40``), which also gives 49 x 10.

Example::

    from tfjpq import audio
    wave = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)   # 1 kHz, 1 s
    audio.mfcc(wave).shape                                      # (49, 10, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

__all__ = ["KWSFrontEnd", "MLPERF_TINY_KWS", "fit_length", "normalize_peak", "log_mel_spectrogram", "mfcc",
           "mel_center_frequencies"]

LOG_OFFSET = 1e-6


@dataclass(frozen=True)
class KWSFrontEnd:
    """The parameters of the MFCC front end (defaults: MLPerf Tiny KWS).

    Example::

        fe = KWSFrontEnd(window_ms=40)      # ARM ML-KWS-for-MCU's window
        fe.num_frames, fe.feature_shape     # (49, (49, 10, 1))
    """

    sample_rate: int = 16000
    clip_seconds: float = 1.0
    window_ms: float = 30.0
    stride_ms: float = 20.0
    num_mel_bins: int = 40
    lower_hz: float = 20.0
    upper_hz: float = 4000.0
    num_mfcc: int = 10

    def __post_init__(self):
        if self.window_samples > self.clip_samples or self.stride_samples < 1:
            raise ValueError(f"window {self.window_ms} ms / stride {self.stride_ms} ms do not fit a "
                             f"{self.clip_seconds} s clip at {self.sample_rate} Hz")
        if not 0 <= self.lower_hz < self.upper_hz <= self.sample_rate / 2:
            raise ValueError(f"mel range {self.lower_hz}-{self.upper_hz} Hz must lie in 0-{self.sample_rate / 2} Hz")
        if not 1 <= self.num_mfcc <= self.num_mel_bins:
            raise ValueError(f"num_mfcc must be in 1..num_mel_bins ({self.num_mel_bins}), got {self.num_mfcc}")

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def stride_samples(self) -> int:
        return int(round(self.sample_rate * self.stride_ms / 1000))

    @property
    def fft_length(self) -> int:
        return 1 << (self.window_samples - 1).bit_length()

    @property
    def num_frames(self) -> int:
        return 1 + (self.clip_samples - self.window_samples) // self.stride_samples

    @property
    def feature_shape(self) -> tuple:
        return (self.num_frames, self.num_mfcc, 1)


MLPERF_TINY_KWS = KWSFrontEnd()


def fit_length(wave, length: int):
    """Zero-pad at the end or keep the first ``length`` samples of the last axis.

    Example::

        fit_length(tf.ones([12000]), 16000).shape   # (16000,)
    """
    wave = tf.convert_to_tensor(wave)
    n = tf.shape(wave)[-1]
    wave = wave[..., :length]
    pad = tf.maximum(length - n, 0)
    rank = wave.shape.rank
    paddings = tf.concat([tf.zeros([rank - 1, 2], tf.int32), tf.stack([[0, pad]])], axis=0)
    out = tf.pad(wave, paddings)
    return tf.ensure_shape(out, wave.shape[:-1].concatenate([length]))


def normalize_peak(wave):
    """float32 samples divided by the clip's largest magnitude (all-zero clips stay zero).

    Example::

        normalize_peak(tf.constant([0, 8192, -16384], tf.int16))   # [0., 0.5, -1.]
    """
    wave = tf.cast(wave, tf.float32)
    peak = tf.reduce_max(tf.abs(wave), axis=-1, keepdims=True)
    return tf.math.divide_no_nan(wave, peak)


def _mel_matrix(fe: KWSFrontEnd):
    return tf.signal.linear_to_mel_weight_matrix(fe.num_mel_bins, fe.fft_length // 2 + 1, fe.sample_rate,
                                                 fe.lower_hz, fe.upper_hz)


def mel_center_frequencies(fe: KWSFrontEnd = MLPERF_TINY_KWS) -> np.ndarray:
    """Centre frequency in Hz of each mel filter (HTK mel scale, as ``tf.signal`` uses).

    Example::

        mel_center_frequencies()[:3]   # about [75, 133, 193] Hz
    """
    def to_mel(hz):
        return 1127.0 * np.log1p(hz / 700.0)

    edges = np.linspace(to_mel(fe.lower_hz), to_mel(fe.upper_hz), fe.num_mel_bins + 2)
    return 700.0 * np.expm1(edges[1:-1] / 1127.0)


def log_mel_spectrogram(wave, fe: KWSFrontEnd = MLPERF_TINY_KWS):
    """``log(mel magnitude + 1e-6)`` of float samples, ``(..., samples)`` -> ``(..., frames, num_mel_bins)``.

    No padding or normalization here (:func:`mfcc` does both first).

    Example::

        log_mel_spectrogram(tf.zeros([16000])).shape   # (49, 40)
    """
    wave = tf.cast(wave, tf.float32)
    spec = tf.abs(tf.signal.stft(wave, frame_length=fe.window_samples, frame_step=fe.stride_samples,
                                 fft_length=fe.fft_length, window_fn=tf.signal.hann_window))
    mel = tf.tensordot(spec, _mel_matrix(fe), 1)
    return tf.math.log(mel + LOG_OFFSET)


def mfcc(wave, fe: KWSFrontEnd = MLPERF_TINY_KWS):
    """MFCC features of raw audio: ``(..., samples)`` int16 or float -> ``(..., frames, num_mfcc, 1)`` float32.

    Peak-normalizes, pads or crops to ``fe.clip_samples``, then log-mel and DCT. Works on
    numpy arrays and tensors, one clip or a batch, eagerly or in ``tf.data.Dataset.map``.

    Example::

        feats = mfcc(int16_clip)                              # (49, 10, 1)
        ds = ds.map(lambda a, y: (mfcc(a), y))                # in a tf.data pipeline
    """
    wave = fit_length(normalize_peak(wave), fe.clip_samples)
    coeffs = tf.signal.mfccs_from_log_mel_spectrograms(log_mel_spectrogram(wave, fe))[..., :fe.num_mfcc]
    return coeffs[..., None]
