"""The GAN's options beside WaveGAN: oscillator-bank generator and its
voices, STFT discriminators (patches, packs), R1, two time scales, EMA
warm-up, mode seeking, feature matching, coverage, older configs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_config
from musegen_jax import parallel
from musegen_jax import spectral
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax.models import audio_gan
from musegen_jax.models import wavegan
from musegen_jax.tasks import gan

pytestmark = pytest.mark.usefixtures("fewer_optimizations")


def _cpu(**overrides):
  settings = dict(num_train_steps=4, log_every_steps=2, eval_every_steps=4,
                  checkpoint_every_steps=2, sample_every_steps=4,
                  num_eval_batches=1)
  settings.update(overrides)
  return load_config("gan", "smoke,cpu", **settings)


def _task(config):
  return tasks.create_task(config, train.load_representation(config, ""))


def test_oscillator_bank_is_a_sum_of_sinusoids_with_interpolated_amplitudes():
  rate, per_octave, hop, frames = 16000, 24, 128, 16
  freqs = audio_gan.bank_frequencies(rate, per_octave)
  assert freqs[0] == pytest.approx(32.703, abs=1e-3)  # C1.
  assert freqs[-1] < 0.95 * rate / 2 <= freqs[-1] * 2 ** (1 / per_octave)
  a4 = int(np.argmin(np.abs(freqs - 440.0)))
  assert freqs[a4] == pytest.approx(440.0)
  amps = np.zeros((1, frames, len(freqs)), np.float32)
  amps[0, :, a4] = np.linspace(0.0, 1.0, frames)  # A ramp over the frames.
  y = np.asarray(audio_gan.oscillator_bank(jnp.asarray(amps), rate, per_octave, hop))
  sin_t, cos_t, _ = audio_gan._synthesis_constants(rate, per_octave, 1, frames, hop)
  phase0 = np.arctan2(sin_t[0, a4], cos_t[0, a4])
  n = np.arange(frames * hop)
  envelope = np.interp(n, np.arange(frames) * hop, amps[0, :, a4])
  np.testing.assert_allclose(
      y[0], envelope * np.sin(2 * np.pi * 440.0 * n / rate + phase0), atol=2e-4)


def test_harmonic_bank_holds_exact_partials_and_silences_those_above_nyquist():
  rate = 16000
  freqs = audio_gan.bank_frequencies(rate, 24, harmonics=6).reshape(-1, 6)
  assert freqs.shape == (6 * 24 + 1, 6)  # C1 to C7 in quarter tones.
  np.testing.assert_allclose(freqs / freqs[:, :1], np.tile(np.arange(1, 7), (145, 1)))
  assert freqs[-1, 0] == pytest.approx(2093.0, abs=0.1)
  # C7's 4th partial (8.4 kHz) is above Nyquist: a full amplitude there is
  # silent; its fundamental is not.
  amps = np.zeros((1, 16, freqs.size), np.float32)
  amps[0, :, freqs.size - 3] = 1.0
  silent = audio_gan.oscillator_bank(jnp.asarray(amps), rate, 24, 128, harmonics=6)
  assert float(jnp.max(jnp.abs(silent))) == 0.0
  amps[0, :, freqs.size - 6] = 1.0
  tone = np.asarray(audio_gan.oscillator_bank(jnp.asarray(amps), rate, 24, 128,
                                              harmonics=6))[0]
  peak = np.argmax(np.abs(np.fft.rfft(tone))) * rate / len(tone)
  assert peak == pytest.approx(2093.0, abs=1.0)


def test_stft_and_combined_discriminators_give_one_column_each():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16384, 1)), jnp.float32)
  d = audio_gan.STFTDiscriminator(sizes=(256, 1024), dim=4)
  variables = d.init(jax.random.PRNGKey(0), x)
  assert d.apply(variables, x).shape == (2, 2)
  assert set(variables["params"]) == {
      f"stft{n}_{layer}" for n in (256, 1024)
      for layer in ("conv_0", "conv_1", "conv_2", "output")}
  with pytest.raises(ValueError, match="longer than the clips"):
    d.init(jax.random.PRNGKey(0), x[:, :128])
  config = _cpu(model__discriminators="waveform,stft", model__stft_pack=1,
                model__stft_patches=False)
  both = gan.build_discriminator(config)
  rngs = {"params": jax.random.PRNGKey(0), "phase_shuffle": jax.random.PRNGKey(1)}
  out, _ = both.init_with_output(rngs, x, train=True)
  assert out.shape == (2, 1 + len(config.model.stft_sizes))
  # The waveform discriminator alone keeps WaveGAN's parameter names.
  assert isinstance(gan.build_discriminator(_cpu(model__discriminators="waveform")),
                    wavegan.WaveGANDiscriminator)


def test_r1_penalty_by_hand():
  w = jnp.asarray([[1.0, -2.0], [0.5, 3.0]])
  critic = lambda x: jnp.sum(x * w, axis=(1, 2))
  real = jnp.zeros((3, 2, 2))
  assert float(gan.r1_penalty(critic, real)) == pytest.approx(1 + 4 + 0.25 + 9)
  # The hinge and non-saturating losses average over the columns of
  # several discriminators.
  d_real = jnp.asarray([[2.0, 0.0]])
  d_fake = jnp.asarray([[-2.0, 0.5]])
  assert float(gan.critic_loss("hinge", d_real, d_fake)) == pytest.approx(
      (0 + 1) / 2 + (0 + 1.5) / 2)


def test_two_time_scales_give_each_network_its_rate():
  task = _task(_cpu(learning_rate=1e-4, gan__d_learning_rate=4e-4))
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.ones(3)}
  for tx, rate in ((task.g_tx, 1e-4), (task.d_tx, 4e-4)):
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -rate, rtol=1e-3)  # Adam's first step.
  task = _task(_cpu(learning_rate=1e-4, gan__d_learning_rate=0.0))
  updates, _ = task.d_tx.update(grads, task.d_tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -1e-4, rtol=1e-3)


def test_lr_end_factor_decays_both_rates_on_a_cosine():
  task = _task(_cpu(num_train_steps=100, learning_rate=1e-4,
                    gan__d_learning_rate=4e-4, gan__lr_end_factor=0.1))
  params, grads = {"w": jnp.ones(3)}, {"w": jnp.ones(3)}
  for tx, rate in ((task.g_tx, 1e-4), (task.d_tx, 4e-4)):
    state = tx.init(params)
    steps = {}
    for step in range(101):
      updates, state = tx.update(grads, state, params)
      steps[step] = float(updates["w"][0])
    # Adam's unit steps times the schedule: full rate, half way, 0.1 at the end.
    np.testing.assert_allclose(-steps[0], rate, rtol=1e-3)
    np.testing.assert_allclose(-steps[50], rate * (0.1 + 0.9 * 0.5), rtol=1e-3)
    np.testing.assert_allclose(-steps[100], rate * 0.1, rtol=1e-3)
  assert float(task.learning_rate_fn(100)) == pytest.approx(1e-5)
  # The default stays constant, with Adam's state as before (no schedule count).
  constant = _task(_cpu(learning_rate=1e-4))
  assert float(constant.learning_rate_fn(100)) == pytest.approx(1e-4)
  assert (jax.tree.structure(constant.g_tx.init(params))
          != jax.tree.structure(task.g_tx.init(params)))


@pytest.mark.slow
def test_cpu_recipe_step_with_r1_and_ema_warmup():
  config = _cpu(gan__r1_weight=1.0, gan__feature_matching_weight=1.0,
                gan__mode_seeking_weight=1.0, gan__moment_weight=1.0)
  task = _task(config)
  mesh = parallel.create_mesh()
  state = train.create_train_state(task, config, mesh, jax.random.PRNGKey(0))
  before = jax.device_get(state)
  step, _ = train.jit_steps(task, mesh)
  real = np.random.default_rng(0).uniform(
      -1, 1, (config.batch_size, 1, 16384, 1)).astype(np.float32)
  state, metrics = step(state, parallel.global_batch({"audio": real}, mesh),
                        jax.random.PRNGKey(1))
  after = jax.device_get(state)
  assert float(metrics["nonfinite"]) == 0 and float(metrics["r1"]) > 0
  assert float(metrics["coverage"]) > 0  # The recipe's coverage term.
  assert float(metrics["feature_matching"]) > 0 and float(metrics["mode_seeking"]) > 0
  # Moment matching: at step 0 the running average is the batch's moments.
  assert float(metrics["moments"]) > 0
  expected = gan.mel_moments(jnp.asarray(real[:, 0]), 16000)
  for key in ("mean", "outer"):
    np.testing.assert_allclose(after.real_moments[key], expected[key], rtol=1e-4,
                               atol=1e-4)
  for name in ("g_params", "d_params"):
    changed = [not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(after, name)))]
    # Hinge terms past the margin give some discriminator columns no
    # gradient in one step; most parameters move.
    assert sum(changed) >= len(changed) // 2 and (name == "d_params" or all(changed)), name
  # Warm-up: at step 0 the decay is (1 + 0) / (10 + 0) = 0.1.
  for e0, g1, e1 in zip(jax.tree.leaves(before.ema_params),
                        jax.tree.leaves(after.g_params),
                        jax.tree.leaves(after.ema_params)):
    np.testing.assert_allclose(e1, 0.1 * e0 + 0.9 * g1, rtol=1e-5, atol=1e-7)


def test_architecture_mistakes_name_the_key():
  for overrides, key in ((dict(model__generator="wavenet"), "model.generator"),
                         (dict(model__discriminators="stft,stft"),
                          "model.discriminators"),
                         (dict(model__discriminators="mel"), "model.discriminators"),
                         (dict(model__stft_sizes=(3000,)), "model.stft_sizes"),
                         (dict(model__stft_sizes=(32768,)), "model.stft_sizes"),
                         (dict(model__frame_hop=100), "model.frame_hop"),
                         (dict(model__frame_hop=2048), "model.frame_hop"),
                         (dict(gan__r1_weight=-1.0), "gan.r1_weight"),
                         (dict(gan__d_learning_rate=-1e-4), "gan.d_learning_rate")):
    with pytest.raises(ValueError, match=key):
      train.check_config(_cpu(**overrides))




def test_a_config_from_before_the_options_builds_wavegan():
  """Bundles exported before these keys existed load as the WaveGAN they are."""
  from ml_collections import config_dict  # pylint: disable=import-outside-toplevel
  config = load_config("gan").to_dict()
  for key in ("generator", "discriminators", "d_dim", "stft_sizes", "stft_dim",
              "frame_kernel_size", "frame_hop", "oscillators_per_octave",
              "normalize_output", "minibatch_std", "harmonics", "voices",
              "voice_range", "frame_partials", "hard_voices", "stft_patches",
              "stft_pack", "voice_pitch_frames"):
    del config["model"][key]
  for key in ("r1_weight", "d_learning_rate", "ema_warmup", "mode_seeking_weight",
              "feature_matching_weight", "coverage_weight"):
    del config["gan"][key]
  config = config_dict.ConfigDict(config)
  train.check_config(config)
  task = _task(config)
  assert isinstance(task.generator, wavegan.WaveGANGenerator)
  assert isinstance(task.discriminator, wavegan.WaveGANDiscriminator)
  assert not config.gan.ema_warmup and config.model.harmonics == 1
  assert config.model.voices == 0 and config.gan.coverage_weight == 0


def test_mode_seeking_and_feature_matching_by_hand():
  rng = np.random.default_rng(0)
  clip = rng.normal(size=(1, 4096, 1)).astype(np.float32)
  z = rng.uniform(-1, 1, (2, 8)).astype(np.float32)
  # Two equal clips: the spectrogram distance is 0, the loss 1 / 1e-5.
  same = gan.mode_seeking_loss(jnp.asarray(np.concatenate([clip, clip])), z)
  assert float(same) == pytest.approx(1e5, rel=1e-3)
  # A louder copy is (nearly: the floor of the log) the same mode, since each
  # clip's mean log power is left out.
  louder = gan.mode_seeking_loss(jnp.asarray(np.concatenate([clip, 3 * clip])), z)
  assert float(louder) > 5e4
  other = np.concatenate([clip, rng.normal(size=(1, 4096, 1)).astype(np.float32)])
  feats = np.asarray(audio_gan.log_power_frames(jnp.asarray(other[..., 0]), 1024, 256))
  feats = feats - feats.mean(axis=(1, 2), keepdims=True)
  ratio = np.mean(np.abs(feats[0] - feats[1])) / np.mean(np.abs(z[0] - z[1]))
  assert float(gan.mode_seeking_loss(jnp.asarray(other), z)) == pytest.approx(
      1 / (ratio + 1e-5), rel=1e-4)
  real = [jnp.asarray([[[1.0, 2.0], [3.0, 4.0]]]), jnp.ones((2, 3, 1))]
  fake = [jnp.asarray([[[0.0, 2.0], [1.0, 0.0]]]), jnp.zeros((2, 3, 1))]
  # Layer 1: channel means (2, 3) vs (0.5, 1): |1.5| and |2| average 1.75;
  # layer 2: |1 - 0| = 1; the mean over layers 1.375.
  assert float(gan.feature_matching_loss(real, fake)) == pytest.approx(1.375)


def test_voices_sound_one_pitch_each_within_their_range():
  gen = audio_gan.OscillatorGenerator(slice_len=4096, latent_dim=8, dim=8, hop=128,
                                      per_octave=12, harmonics=3, voices=2,
                                      voice_range=(48, 60))
  z = jax.random.uniform(jax.random.PRNGKey(0), (3, 8), minval=-1, maxval=1)
  params = gen.init(jax.random.PRNGKey(1), z)
  audio, captured = gen.apply(params, z, mutable=["intermediates"])
  amps = np.asarray(captured["intermediates"]["pitch_amplitudes"][0])
  assert audio.shape == (3, 4096, 1) and amps.shape == (3, 32, 73)  # C1..C7.
  sounding = amps > 0
  assert sounding.any() and (sounding.sum(-1) <= 2).all()  # Two voices a frame.
  midi = 24 + np.nonzero(sounding)[2]
  assert midi.min() >= 48 and midi.max() <= 60
  # Gradients reach the pitch logits through the one-hot choice.
  grads = jax.grad(lambda p: jnp.sum(gen.apply(p, z) ** 2))(params)
  kernel = nn.unbox(grads["params"]["voice_pitches"]["kernel"])
  assert float(jnp.abs(kernel).sum()) > 0


def test_voices_hold_their_pitch_for_pitch_frames_and_keep_the_parameters():
  kwargs = dict(slice_len=4096, latent_dim=8, dim=8, hop=128, per_octave=12,
                harmonics=3, voices=2, voice_range=(48, 60))
  z = jax.random.uniform(jax.random.PRNGKey(0), (3, 8), minval=-1, maxval=1)
  every = audio_gan.OscillatorGenerator(**kwargs)
  held = audio_gan.OscillatorGenerator(**kwargs, pitch_frames=8)
  params = every.init(jax.random.PRNGKey(1), z)
  # The same parameters (a checkpoint of either loads in the other).
  assert (jax.tree.map(np.shape, held.init(jax.random.PRNGKey(1), z))
          == jax.tree.map(np.shape, params))
  amps = {}
  for name, gen in (("every", every), ("held", held)):
    _, captured = gen.apply(params, z, mutable=["intermediates"])
    amps[name] = np.asarray(captured["intermediates"]["pitch_amplitudes"][0])
  groups = (amps["held"] > 0).reshape(3, 4, 8, 73)  # 32 frames in 4 groups.
  # Within each group of 8 frames the voices sound the same pitches...
  assert (groups == groups[:, :, :1]).all()
  # ... while every frame chooses its own without pitch_frames.
  each = (amps["every"] > 0).reshape(3, 4, 8, 73)
  assert not (each == each[:, :, :1]).all()
  # Loudness still changes from frame to frame within a group.
  loud = amps["held"].sum(-1).reshape(3, 4, 8)
  assert np.abs(np.diff(loud, axis=-1)).max() > 0
  with pytest.raises(ValueError, match="pitch_frames=3"):
    audio_gan.OscillatorGenerator(**kwargs, pitch_frames=3).init(
        jax.random.PRNGKey(1), z)


def test_stft_patches_give_one_logit_per_position():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4096, 1)), jnp.float32)
  whole = audio_gan.STFTDiscriminator(sizes=(256, 1024), dim=4)
  patches = audio_gan.STFTDiscriminator(sizes=(256, 1024), dim=4, patches=True)
  assert whole.apply(whole.init(jax.random.PRNGKey(0), x), x).shape == (2, 2)
  # Frames 61 and 13 (hop n / 4), then strides 1, 2, 2: 16 and 4 positions.
  assert patches.apply(patches.init(jax.random.PRNGKey(0), x), x).shape == (2, 20)


def test_voice_and_loss_option_mistakes_name_the_key():
  for overrides, key in ((dict(model__voices=4, model__harmonics=1), "model.voices"),
                         (dict(model__voices=4, model__voice_range=(12, 60)),
                          "model.voice_range"),
                         (dict(model__voices=4, model__voice_range=(60, 48)),
                          "model.voice_range"),
                         (dict(model__discriminators="waveform", model__stft_pack=1,
                               gan__feature_matching_weight=1.0),
                          "gan.feature_matching_weight"),
                         (dict(gan__mode_seeking_weight=-1.0),
                          "gan.mode_seeking_weight"),
                         (dict(gan__moment_weight=-0.5), "gan.moment_weight"),
                         (dict(gan__moment_distance="l2"), "gan.moment_distance"),
                         (dict(gan__lr_end_factor=0.0), "gan.lr_end_factor"),
                         (dict(gan__lr_end_factor=1.5), "gan.lr_end_factor"),
                         (dict(model__stft_pack=3), "model.stft_pack"),
                         (dict(model__voice_pitch_frames=3),
                          "model.voice_pitch_frames"),
                         (dict(model__voice_pitch_frames=256),
                          "model.voice_pitch_frames"),
                         (dict(model__discriminators="waveform,stft"),
                          "model.stft_pack")):
    with pytest.raises(ValueError, match=key):
      train.check_config(_cpu(**overrides))


def test_coverage_is_the_symmetric_chamfer_distance_of_spectrogram_frames():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(2, 2048, 1)).astype(np.float32)
  fake = rng.normal(size=(3, 2048, 1)).astype(np.float32)
  assert float(gan.coverage_loss(jnp.asarray(real), jnp.asarray(real))) == (
      pytest.approx(0.0, abs=1e-3))

  def frames(x):
    f = np.asarray(audio_gan.log_power_frames(jnp.asarray(x[..., 0]), 1024, 512))
    return f.reshape(-1, f.shape[-1]).astype(np.float64)
  r, f = frames(real), frames(fake)
  dist = ((r[:, None, :] - f[None, :, :]) ** 2).mean(-1)
  expected = dist.min(1).mean() + dist.min(0).mean()
  assert float(gan.coverage_loss(jnp.asarray(real), jnp.asarray(fake))) == (
      pytest.approx(expected, rel=1e-3))
  # Only the generated clips get gradients.
  grad_real, grad_fake = jax.grad(gan.coverage_loss, argnums=(0, 1))(
      jnp.asarray(real), jnp.asarray(fake))
  assert not np.any(np.asarray(grad_real)) and np.any(np.asarray(grad_fake))


def _mel_stats(x):
  """Mean and covariance of the Frechet distance's log-mel frames, by numpy."""
  mel = np.asarray(spectral.log_mel(jnp.asarray(x[..., 0]), 16000, n_fft=1024,
                                    hop=256, n_mels=64), np.float64)
  mel = mel.reshape(-1, 64)
  return mel.mean(0), np.cov(mel, rowvar=False, bias=True)


def test_moment_matching_by_hand_and_only_the_generated_clips_get_gradients():
  """The loss against real statistics computed by numpy, zero for the same
  clips, and gradients for the generated clips only."""
  rng = np.random.default_rng(0)
  real = rng.normal(size=(2, 4096, 1)).astype(np.float32)
  # A tone: its log-mel frames differ from noise's in mean and covariance.
  t = np.arange(4096) / 16000
  fake = np.stack([np.sin(2 * np.pi * f * t) for f in (220, 330, 440)])[..., None]
  fake = (fake + 0.01 * rng.normal(size=fake.shape)).astype(np.float32)
  loss = lambda r, f: gan.moment_matching_loss(gan.mel_moments(r, 16000), f, 16000)
  assert float(loss(jnp.asarray(real), jnp.asarray(real))) == pytest.approx(0.0, abs=1e-3)

  (mu_r, cov_r), (mu_f, cov_f) = _mel_stats(real), _mel_stats(fake)
  expected = np.sum((mu_r - mu_f) ** 2) + np.linalg.norm(cov_r - cov_f)
  assert float(loss(jnp.asarray(real), jnp.asarray(fake))) == pytest.approx(
      expected, rel=1e-3)
  grad_real, grad_fake = jax.grad(loss, argnums=(0, 1))(jnp.asarray(real),
                                                        jnp.asarray(fake))
  assert not np.any(np.asarray(grad_real))
  assert np.all(np.isfinite(np.asarray(grad_fake))) and np.any(np.asarray(grad_fake))


def test_moment_matching_by_the_frechet_distance_is_the_frechet_distance():
  """With moment_distance "frechet" the term is the Frechet distance between
  the two Gaussians (scipy's matrix square root, spectral.frechet_distance),
  zero for the same clips, with finite gradients for the generated clips."""
  rng = np.random.default_rng(1)
  real = rng.normal(size=(4, 16384, 1)).astype(np.float32)
  t = np.arange(16384) / 16000
  fake = np.stack([np.sin(2 * np.pi * f * t) for f in (220, 330, 440)])[..., None]
  fake = (fake + 0.05 * rng.normal(size=fake.shape)).astype(np.float32)
  loss = lambda r, f: gan.moment_matching_loss(gan.mel_moments(r, 16000), f, 16000,
                                               "frechet")
  same = float(loss(jnp.asarray(real), jnp.asarray(real)))
  assert same == pytest.approx(0.0, abs=0.05)

  (mu_r, cov_r), (mu_f, cov_f) = _mel_stats(real), _mel_stats(fake)
  expected = spectral.frechet_distance(mu_r, cov_r, mu_f, cov_f)
  assert float(loss(jnp.asarray(real), jnp.asarray(fake))) == pytest.approx(
      expected, rel=1e-3)
  # Its covariance term is not the Frobenius norm's.
  trace_term = expected - np.sum((mu_r - mu_f) ** 2)
  assert abs(trace_term - np.linalg.norm(cov_r - cov_f)) > 0.05 * trace_term
  grad_real, grad_fake = jax.grad(loss, argnums=(0, 1))(jnp.asarray(real),
                                                        jnp.asarray(fake))
  assert not np.any(np.asarray(grad_real))
  assert np.all(np.isfinite(np.asarray(grad_fake))) and np.any(np.asarray(grad_fake))
