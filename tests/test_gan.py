"""The WaveGAN task: losses, the compiled step, the Frechet evaluation, and the
smoke config end to end (train, resume, export, sample, evaluate) on the
chorales rendered to audio, on 8 forced CPU devices."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import matplotlib.image as plt_image
import numpy as np
import pytest
import soundfile
from tensorboard.backend.event_processing import event_accumulator

from musegen_jax import checkpoint
from musegen_jax import evaluate as evaluate_lib
from musegen_jax import export as export_lib
from musegen_jax import parallel
from musegen_jax import sample as sample_lib
from musegen_jax import spectral
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax import workdir as workdir_lib
from musegen_jax.data import audio
from musegen_jax.tasks import gan

from conftest import load_config, log_rows

# A few steps at tiny shapes each: compile time dominates.
pytestmark = pytest.mark.usefixtures("fewer_optimizations")


def _tiny(**overrides):
  """The smoke config, shortened: 4 steps, 2 critic updates, d = 4."""
  settings = dict(num_train_steps=4, log_every_steps=2, eval_every_steps=4,
                  checkpoint_every_steps=2, sample_every_steps=4,
                  num_eval_batches=1)
  settings.update(overrides)
  return load_config("gan", **settings)


@pytest.fixture(scope="module")
def audio_dir(jsb_data_dir):
  """The bundled chorales rendered with the GAN config's synthesizer."""
  config = _tiny()
  return audio.ensure_audio_dir(jsb_data_dir,
                                train.load_representation(config, jsb_data_dir))


def _task(config):
  return tasks.create_task(config, train.load_representation(config, ""))


def test_gradient_penalty_equals_the_hand_computed_value():
  # A linear critic w.x has gradient w at every point: GP = (|w| - 1)^2.
  w = jnp.asarray([[0.5], [2.0], [-1.0]])
  critic = lambda x: jnp.sum(x * w, axis=(1, 2))
  real = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 1))
  fake = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 1))
  gp = gan.gradient_penalty(critic, real, fake, jnp.linspace(0, 1, 4))
  np.testing.assert_allclose(float(gp), (np.sqrt(0.25 + 4 + 1) - 1) ** 2, rtol=1e-6)
  # A critic with a unit gradient everywhere is not penalized.
  unit = lambda x: jnp.sum(x * jnp.asarray([[0.6], [0.8], [0.0]]), axis=(1, 2))
  assert float(gan.gradient_penalty(unit, real, fake, jnp.full(4, 0.3))) < 1e-10


def test_losses_by_hand():
  d_real, d_fake = jnp.asarray([1.0, 3.0]), jnp.asarray([-1.0, 0.5])
  assert float(gan.critic_loss("wgan-gp", d_real, d_fake)) == pytest.approx(-2.25)
  assert float(gan.generator_loss("wgan-gp", d_fake)) == pytest.approx(0.25)
  softplus = lambda x: np.log1p(np.exp(x))
  assert float(gan.critic_loss("bce", d_real, d_fake)) == pytest.approx(
      np.mean(softplus(-np.asarray([1.0, 3.0]))) + np.mean(softplus(np.asarray([-1.0, 0.5]))),
      rel=1e-6)
  assert float(gan.critic_loss("hinge", d_real, d_fake)) == pytest.approx(0.0 + 0.75)
  with pytest.raises(ValueError, match="'wgan'"):
    gan.critic_loss("wgan", d_real, d_fake)


def test_slerp_keeps_the_endpoints_and_the_norm():
  a, b = np.asarray([1.0, 0.0, 0.0]), np.asarray([0.0, 2.0, 0.0])
  path = gan.slerp(a, b, 5)
  np.testing.assert_allclose(path[0], a, atol=1e-6)
  np.testing.assert_allclose(path[-1], b, atol=1e-6)
  # On the arc, not the chord: the midpoint keeps its distance from 0.
  assert np.linalg.norm(path[2]) > np.linalg.norm((a + b) / 2) + 0.1


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["wgan-gp", "bce"])
def test_one_compiled_step_changes_both_networks_and_the_ema_and_skips_nan(loss):
  config = _tiny(gan__loss=loss, gan__gp_weight=10.0 if loss == "wgan-gp" else 0.0)
  task = _task(config)
  mesh = parallel.create_mesh()
  state = train.create_train_state(task, config, mesh, jax.random.PRNGKey(0))
  before = jax.device_get(state)
  step, _ = train.jit_steps(task, mesh)
  real = np.random.default_rng(0).uniform(
      -1, 1, (config.batch_size, config.gan.critic_steps, 16384, 1)).astype(np.float32)
  state, metrics = step(state, parallel.global_batch({"audio": real}, mesh),
                        jax.random.PRNGKey(1))
  after = jax.device_get(state)
  assert int(after.step) == 1 and float(metrics["nonfinite"]) == 0
  for name in ("g_params", "d_params", "ema_params"):
    old, new = (jax.tree_util.tree_flatten_with_path(getattr(s, name))[0]
                for s in (before, after))
    unchanged = {jax.tree_util.keystr(path) for (path, a), (_, b) in zip(old, new)
                 if np.array_equal(a, b)}
    # Under the Wasserstein loss the critic's output bias has a zero
    # gradient (it adds equally to real and fake scores).
    expected = ({"['output']['bias']"} if name == "d_params" and loss == "wgan-gp"
                else set())
    assert unchanged == expected, name
  # The EMA moved by (1 - decay) of the generator's update.
  decay = config.gan.ema_decay
  for e0, g1, e1 in zip(jax.tree.leaves(before.ema_params),
                        jax.tree.leaves(after.g_params),
                        jax.tree.leaves(after.ema_params)):
    np.testing.assert_allclose(e1, decay * e0 + (1 - decay) * g1, rtol=1e-5, atol=1e-7)
  for key in ("d_loss", "g_loss", "gp", "wdist"):
    assert np.isfinite(float(metrics[key]))
  if loss == "wgan-gp":
    assert float(metrics["gp"]) > 0

  # The same compiled step given a NaN in one critic batch: the whole update
  # (both networks, the EMA) is skipped and counted.
  real[0, 1, 100, 0] = np.nan
  state, metrics = step(state, parallel.global_batch({"audio": real}, mesh),
                        jax.random.PRNGKey(2))
  skipped = jax.device_get(state)
  assert float(metrics["nonfinite"]) == 1.0
  assert int(skipped.step) == 2 and int(skipped.skipped_updates) == 1
  for a, b in zip(jax.tree.leaves((after.g_params, after.d_params, after.ema_params)),
                  jax.tree.leaves((skipped.g_params, skipped.d_params,
                                   skipped.ema_params))):
    np.testing.assert_array_equal(a, b)


def test_frechet_is_small_for_real_vs_real_and_large_for_noise(audio_dir):
  clips = audio.eval_clips(audio_dir, slice_len=16384, max_clips=96)
  assert len(clips) == 96
  features = jax.jit(lambda x: spectral.feature_sums(
      spectral.log_mel(x[..., 0], 16000, n_fft=1024, hop=256, n_mels=64)))
  stats = lambda x: spectral.stats_from_sums(jax.device_get(features(jnp.asarray(x))))
  first, second = stats(clips[:48]), stats(clips[48:])
  noise = np.random.default_rng(0).uniform(-1, 1, (48, 16384, 1)).astype(np.float32)
  real_vs_real = spectral.frechet_distance(*first, *second)
  real_vs_noise = spectral.frechet_distance(*first, *stats(noise))
  assert spectral.frechet_distance(*first, *first) == pytest.approx(0.0, abs=1e-3)
  assert 0 < real_vs_real < real_vs_noise / 20, (real_vs_real, real_vs_noise)


def test_config_errors_name_the_key():
  for overrides, key in ((dict(gan__loss="wgan"), "gan.loss"),
                         (dict(data__slice_len=20000), "data.slice_len"),
                         (dict(gan__ema_decay=1.0), "gan.ema_decay"),
                         (dict(model__conv_impl="fft"), "fft"),
                         (dict(gan__critic_steps=0), "gan.critic_steps")):
    with pytest.raises(ValueError, match=key):
      train.check_config(_tiny(**overrides))


def _log(workdir):
  return {row["step"]: row for row in log_rows(workdir)}


@pytest.mark.slow
def test_smoke_trains_resumes_exactly_exports_and_samples_wavs(tmp_path, audio_dir):
  del audio_dir  # Rendered once for the module.
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  final = train.train_and_evaluate(_tiny(), full)
  train.train_and_evaluate(_tiny(), cut, stop_at_step=3)
  resumed = train.train_and_evaluate(_tiny(), cut)
  assert _log(cut) == _log(full) and sorted(_log(full)) == [1, 2, 3, 4]
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # The loop's samples: WAVs at the config's rate and length, with spectrograms.
  step_dir = os.path.join(full, "samples", "4")
  wavs = sorted(f for f in os.listdir(step_dir) if f.endswith(".wav"))
  assert wavs == ["sample_000.wav", "sample_001.wav"]
  for name in wavs:
    data, rate = soundfile.read(os.path.join(step_dir, name))
    assert rate == 16000 and data.shape == (16384,) and np.abs(data).max() > 0
    assert os.path.exists(os.path.join(step_dir, name[:-4] + ".png"))
  # The Frechet distance was logged and picks the best checkpoint.
  manager = checkpoint.create_manager(os.path.join(full, "checkpoints"), keep=3)
  assert checkpoint.best_step(manager) == 4
  manager.close()
  # The valid rows are in train_log.jsonl too.
  assert [r["step"] for r in log_rows(full, "valid")] == [4]
  assert log_rows(full, "valid")[0]["valid/frechet"] > 0
  # And the learning curve of the task's curve keys, a PNG in the workdir.
  curve = plt_image.imread(workdir_lib.Layout(str(full)).learning_curve)
  assert curve.ndim == 3 and curve.shape[0] > 200
  # TensorBoard's own reader lists the audio under its audio tab and the
  # spectrograms under its image tab: one tag per kind and sample.
  events = event_accumulator.EventAccumulator(
      os.path.join(full, "tensorboard"), size_guidance={"audio": 0, "images": 0})
  events.Reload()
  tags = events.Tags()
  assert sorted(tags["audio"]) == ["samples/audio/0", "samples/audio/1"]
  assert sorted(tags["images"]) == ["samples/spectrogram/0", "samples/spectrogram/1"]
  assert {"train/d_loss", "valid/frechet"} <= set(tags["scalars"])
  assert events.Audio("samples/audio/0")[0].sample_rate == 16000

  bundle_dir = export_lib.export(full, str(tmp_path / "export"), "best")
  bundle = checkpoint.load_bundle(bundle_dir)
  np.testing.assert_array_equal(
      jax.tree.leaves(bundle.params["params"])[0],
      np.asarray(jax.tree.leaves(final.ema_params)[0]))
  paths = sample_lib.sample(bundle_dir, str(tmp_path / "walk"), seed=3,
                            interpolate_steps=3)
  clips = [soundfile.read(p)[0] for p in paths]
  assert len(clips) == 3 and all(c.shape == (16384,) for c in clips)
  # The same seed draws the same latents: the same clips.
  again = sample_lib.sample(bundle_dir, str(tmp_path / "again"), seed=3,
                            interpolate_steps=3)
  np.testing.assert_array_equal(soundfile.read(again[1])[0], clips[1])
  with pytest.raises(ValueError, match="interpolate_steps"):
    sample_lib.sample(bundle_dir, str(tmp_path / "bad"), interpolate_steps=-1)

  result = evaluate_lib.evaluate(bundle_dir, split="test", num_batches=1)
  assert result["split"] == "test" and result["frechet"] > 0
  assert result["frames"] == 8 * 61  # One batch of 8 clips, 61 frames each.
  # Beside the distance: the real-vs-real baseline at the same 8 clips, the
  # ratio, and the pitch measures with real audio's figures.
  assert result["clips"] == 8 and result["frechet_real"] > 0
  assert result["frechet_ratio"] == pytest.approx(
      result["frechet"] / result["frechet_real"])
  assert 0.6 < result["salience_real"] < 1 and 0 <= result["salience"] <= 1
  assert result["chroma_distance_real"] < result["chroma_distance"]
