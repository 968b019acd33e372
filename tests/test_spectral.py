"""The GAN's audio measures: pitch salience and chroma profiles on real
rendered chorales, white noise, pure tones and the smoke WaveGAN's output;
the calibrated Frechet evaluation; bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from musegen_jax import spectral
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax.data import audio

pytestmark = pytest.mark.usefixtures("fewer_optimizations")

RATE = 16000


@pytest.fixture(scope="module")
def audio_dir(jsb_data_dir):
  config = load_config("gan")
  return audio.ensure_audio_dir(jsb_data_dir,
                                train.load_representation(config, jsb_data_dir))


def _measure(clips):
  """(mean salience, mean sorted chroma profile) of [n, length] clips."""
  sums = jax.jit(lambda x: spectral.pitch_sums(x, RATE))(jnp.asarray(clips))
  return spectral.pitch_summary(jax.device_get(sums))


def _tone(hz, length=16384):
  return np.sin(2 * np.pi * hz * np.arange(length) / RATE).astype(np.float32)


def test_pitch_measures_separate_chorales_noise_tones_and_the_smoke_wavegan(audio_dir):
  valid = audio.eval_clips(audio_dir, slice_len=16384, split="valid",
                           max_clips=64)[..., 0]
  train_clips = audio.eval_clips(audio_dir, slice_len=16384, split="train",
                                 max_clips=64)[..., 0]
  noise = np.random.default_rng(0).uniform(-1, 1, (16, 16384)).astype(np.float32)
  # The smoke config's generator (d = 4): its transposed convolutions' stride
  # artefacts are steady lines at multiples of 62.5 Hz, the bands heard in
  # the smoke run's samples.
  config = load_config("gan")
  task = tasks.create_task(config, train.load_representation(config, ""))
  params = task.eval_params(task.init_state(jax.random.PRNGKey(0)))
  smoke = task.generate(jax.tree.map(np.asarray, nn_unbox(params)),
                        np.asarray(task.latents(jax.random.PRNGKey(1), 16)))
  smoke = smoke / np.abs(smoke).max(1, keepdims=True)

  real, real_profile = _measure(valid)
  other, other_profile = _measure(train_clips)
  noise_salience, noise_profile = _measure(noise)
  tone_salience, tone_profile = _measure(np.stack([_tone(440.0)] * 2))
  # A quarter tone sharp of A4: in no band.
  off_salience, _ = _measure(np.stack([_tone(440.0 * 2 ** (0.5 / 12))] * 2))
  smoke_salience, smoke_profile = _measure(smoke)

  assert 0.7 < real < 0.95 and abs(real - other) < 0.05, (real, other)
  assert noise_salience < 0.35 and smoke_salience < 0.35, (noise_salience,
                                                           smoke_salience)
  assert tone_salience > 0.99 and off_salience < 0.01
  # The chroma profile tells the tone and the noise from the chorales, and
  # real from real by very little.
  baseline = spectral.chroma_distance(other_profile, real_profile)
  assert baseline < 0.05, baseline
  for name, profile in (("noise", noise_profile), ("tone", tone_profile),
                        ("smoke", smoke_profile)):
    assert spectral.chroma_distance(profile, real_profile) > 5 * baseline + 0.2, name
  np.testing.assert_allclose(tone_profile, [1.0] + [0.0] * 11, atol=1e-3)
  assert np.all(np.diff(real_profile) <= 1e-9)  # Sorted, strongest first.
  np.testing.assert_allclose(real_profile.sum(), 1.0, rtol=1e-5)


def nn_unbox(tree):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  return nn.meta.unbox(tree)


def test_silence_nan_and_short_clips():
  silent = np.zeros((2, 8192), np.float32)
  features = spectral.pitch_features(jnp.asarray(silent), RATE)
  np.testing.assert_array_equal(features["salience"], [0.0, 0.0])
  np.testing.assert_allclose(features["profile"], np.full((2, 12), 1 / 12))
  # A clip with a NaN is silenced and counted, the others kept.
  clips = np.stack([_tone(440.0, 8192), _tone(440.0, 8192)])
  clips[1, 100] = np.nan
  cleaned, count = spectral.finite_clips(jnp.asarray(clips))
  assert float(count) == 1.0
  np.testing.assert_array_equal(cleaned[0], clips[0])
  np.testing.assert_array_equal(cleaned[1], np.zeros(8192))
  with pytest.raises(ValueError, match="4096"):
    spectral.pitch_features(jnp.zeros((1, 2048)), RATE)


def test_eval_reports_the_real_baseline_at_the_same_clip_count(audio_dir):
  """The GAN's eval: frechet beside real-vs-real at the eval's clip count, the
  ratio, the pitch measures with real audio's, NaN clips scored as silence."""
  config = load_config("gan", num_eval_batches=2)  # 16 clips.
  task = tasks.create_task(config, train.load_representation(config, ""))
  data = task.eval_data(audio_dir, "valid")
  assert data["baseline"]["split"] == "train"
  # The chorales' figures at 16 clips (PERF_NOTES: 561).
  assert 400 < data["baseline"]["frechet"] < 700
  real = audio.eval_clips(audio_dir, slice_len=16384, split="valid",
                          max_clips=16)
  sums = jax.device_get(jax.jit(task._features)(jnp.asarray(real)))
  summary = task.summarize(sums, data)
  # Real clips scored against themselves: distance 0, ratio 0, salience
  # ratio 1.
  assert summary["frechet"] == pytest.approx(0.0, abs=1e-2)
  assert summary["salience_ratio"] == pytest.approx(1.0, abs=1e-6)
  assert summary["clips"] == 16 and summary["nonfinite_clips"] == 0
  bad = real.copy()
  bad[3, 10] = np.nan
  sums = jax.device_get(jax.jit(task._features)(jnp.asarray(bad)))
  summary = task.summarize(sums, data)
  assert summary["nonfinite_clips"] == 1 and np.isfinite(summary["frechet"])
  assert summary["frechet_ratio"] == pytest.approx(
      summary["frechet"] / summary["frechet_real"])
  # `evaluate` reads at least 512 clips unless told.
  assert tasks.evaluate_num_batches(config) == 64
  assert tasks.evaluate_num_batches(load_config("gan", num_eval_batches=-1)) == -1


@pytest.mark.parametrize("n_fft,hop", [(1024, 256), (256, 64), (1024, 512),
                                       (100, 30)])
def test_frames_and_their_gradient_equal_a_gather_of_every_window(n_fft, hop):
  # Frames are cut from blocks of `hop` samples where hop divides n_fft (a
  # slice's gradient instead of a gather's scatter-add): the same windows.
  audio = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4000))
  num_frames = 1 + (4000 - n_fft) // hop
  index = np.arange(num_frames)[:, None] * hop + np.arange(n_fft)[None, :]
  np.testing.assert_array_equal(spectral.frame(audio, n_fft, hop),
                                np.asarray(audio)[..., index])
  weights = jax.random.normal(jax.random.PRNGKey(1), (num_frames, n_fft))
  grad = jax.grad(lambda x: jnp.sum(jnp.sin(spectral.frame(x, n_fft, hop)) * weights))
  want = jax.grad(lambda x: jnp.sum(jnp.sin(x[..., index]) * weights))
  np.testing.assert_allclose(grad(audio), want(audio), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="shorter than n_fft"):
    spectral.frame(audio[..., :n_fft - 1], n_fft, hop)
