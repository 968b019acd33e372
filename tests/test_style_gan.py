"""The class-conditional GAN (issue 28 part 6): labelled audio records, the
style embedding of the generator, the projection discriminator, per-style
Frechet distances, and `sample --style`, on the labelled corpus the tests
write (conftest.styles_data_dir: drone, chorale and runs pieces)."""

from __future__ import annotations

import os

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from musegen_jax import checkpoint
from musegen_jax import errors
from musegen_jax import evaluate as evaluate_lib
from musegen_jax import export as export_lib
from musegen_jax import parallel
from musegen_jax import sample as sample_lib
from musegen_jax import spectral
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax.data import audio
from musegen_jax.data import shards
from musegen_jax.tasks import gan
from tests.conftest import STYLE_CORPUS_STYLES
from tests.conftest import load_config
from tests.conftest import log_rows

pytestmark = pytest.mark.usefixtures("fewer_optimizations")


def _config(data_dir: str, variant: str = "smoke", **overrides):
  settings = dict(data__dir=data_dir, condition__enabled=True, num_train_steps=4,
                  log_every_steps=2, eval_every_steps=4, checkpoint_every_steps=4,
                  sample_every_steps=4, num_eval_batches=2)
  settings.update(overrides)
  return load_config("gan", variant, **settings)


def _task(config, data_dir: str):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    tasks.configure_from_data(config, data_dir)
  return tasks.create_task(config, train.load_representation(config, data_dir))


def test_audio_records_carry_their_piece_style():
  x = np.linspace(-1, 1, 50, dtype=np.float32)
  plain, labelled = audio.encode_audio_record(x), audio.encode_audio_record(x, "drone")
  np.testing.assert_array_equal(audio.audio_record_pcm(plain),
                                audio.audio_record_pcm(labelled))
  assert audio.audio_record_label(plain) is None
  assert audio.audio_record_label(labelled) == "drone"
  pcm, style = audio.StyledPCM(("chorale", "drone"))(labelled)
  assert style == 1 and len(pcm) == 50
  with pytest.raises(ValueError, match=r"style label None is not one of chorale, drone"):
    audio.StyledPCM(("chorale", "drone"))(plain)
  with pytest.raises(ValueError, match=r"audio record of 99 bytes"):
    audio.audio_record_pcm(plain[:99])


def test_feature_sums_by_group_are_each_groups_own_sums():
  features = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 4))
  groups = jnp.asarray([2, 0, 2, 1, 0, 2])
  sums = spectral.feature_sums_by_group(features, groups, 3)
  for g in range(3):
    own = spectral.feature_sums(features[np.asarray(groups) == g])
    for key in ("sum", "outer", "count"):
      np.testing.assert_allclose(sums[key][g], own[key], rtol=1e-5, atol=1e-5)


def test_the_styles_tables_start_at_zero_and_then_steer_both_networks(styles_data_dir):
  task = _task(_config(styles_data_dir, model__discriminators="waveform,stft"),
               styles_data_dir)
  assert task.styles == list(STYLE_CORPUS_STYLES)
  state = task.init_state(jax.random.PRNGKey(0))
  g, d = nn.unbox(state.g_params), nn.unbox(state.d_params)
  assert g["style_embedding"]["embedding"].shape == (3, task.latent_dim)
  projections = sorted(k for m in d.values() for k in m if "style_projection" in k)
  assert len(projections) == 4  # The waveform discriminator's, one per STFT size.
  z = np.asarray(task.latents(jax.random.PRNGKey(1), 4))
  clips = lambda params, ids: task.generator.apply({"params": params}, z, style=ids)
  same = jnp.asarray([0, 0, 0, 0])
  # At the start the style changes nothing: the zero rows.
  np.testing.assert_array_equal(clips(g, same), clips(g, jnp.asarray([1, 2, 1, 2])))
  g = jax.tree.map(lambda x: x, g)
  g["style_embedding"]["embedding"] = jax.random.normal(jax.random.PRNGKey(2),
                                                         (3, task.latent_dim))
  assert not np.allclose(clips(g, same), clips(g, jnp.asarray([1, 1, 1, 1])))
  # The projection discriminator: the logits move by <e_style, pooled features>.
  x = clips(g, same)
  logits = lambda params, ids: task.discriminator.apply(
      {"params": params}, x, style=ids)
  np.testing.assert_array_equal(logits(d, same), logits(d, jnp.asarray([2, 2, 2, 2])))
  d = jax.tree.map(lambda v: v, d)
  member = next(m for m in d.values() if "style_projection" in m)
  member["style_projection"]["embedding"] = jnp.ones_like(
      member["style_projection"]["embedding"]).at[1].set(0.0)
  moved = np.asarray(logits(d, same) - logits(d, jnp.asarray([1, 1, 1, 1])))
  assert np.all(moved[:, 0] != 0) and np.all(moved[:, 1:] == 0), moved
  with pytest.raises(ValueError, match=r"config.model.stft_pack=2: a class-conditional"):
    train.check_config(_config(styles_data_dir, model__stft_pack=2,
                               model__discriminators="stft"))


def test_each_styles_clips_are_measured_against_every_styles_real_clips(styles_data_dir):
  task = _task(_config(styles_data_dir), styles_data_dir)
  # Three styles' log-mel features: Gaussians with distinct means.
  mel = np.random.default_rng(0).normal(size=(3, 200, 64)) + np.arange(3)[:, None, None]
  sums = jax.device_get(spectral.feature_sums_by_group(
      jnp.asarray(mel, jnp.float32), jnp.arange(3), 3))
  pitch = {"salience": 1.0, "profile": np.ones(12), "clips": 3.0}
  real = {"mel": spectral.feature_sums(jnp.asarray(mel, jnp.float32))}
  eval_data = {"real_stats": spectral.stats_from_sums(real["mel"]),
               "real_profile": np.ones(12) / 3,
               "style_stats": [spectral.stats_from_sums(g) for g in gan._groups(sums)],
               "baseline": {"frechet": 1.0, "chroma_distance": 0.0, "salience": 1.0,
                            "frechet_by_style": [2.0, 4.0, 8.0]}}

  def summary(order):
    by_style = jax.tree.map(lambda x: np.asarray(x)[list(order)], sums)
    return task.summarize({"mel": real["mel"], "mel_by_style": by_style,
                           "pitch": pitch, "nonfinite": 0.0}, eval_data)

  right = summary([0, 1, 2])  # Each style's clips are its real ones.
  assert right["style_match"] == 1.0
  for name, base in zip(STYLE_CORPUS_STYLES, (2.0, 4.0, 8.0)):
    assert abs(right[f"style/{name}/frechet"]) < 1e-6
    assert right[f"style/{name}/frechet_real"] == base
    assert right[f"style/{name}/frechet_others"] > 64  # Means 1 or 2 apart in 64 dims.
  wrong = summary([1, 2, 0])  # Every style sounds like another.
  assert wrong["style_match"] == 0.0
  assert wrong["style/chorale/frechet"] == pytest.approx(spectral.frechet_distance(
      *eval_data["style_stats"][1], *eval_data["style_stats"][0]))
  assert wrong["frechet_ratio_by_style"] == pytest.approx(np.mean(
      [wrong[f"style/{n}/frechet"] / b for n, b in zip(STYLE_CORPUS_STYLES, (2, 4, 8))]))


@pytest.mark.slow
def test_a_class_conditional_gan_trains_measures_each_style_and_samples_one(
    styles_data_dir, tmp_path):
  # The CPU recipe's networks and terms: oscillators, STFT discriminators on
  # patches, coverage and moment matching (each style's own), one clip a row.
  config = _config(styles_data_dir, "smoke,cpu", model__stft_pack=1, batch_size=8)
  audio_dir = audio.ensure_audio_dir(styles_data_dir,
                                     train.load_representation(config, styles_data_dir))
  meta = shards.read_metadata(audio_dir)
  assert meta["record_labels"] is True
  labels = {audio.audio_record_label(r)
            for r in shards.read_records(shards.split_paths(audio_dir, "train"))}
  assert labels == set(STYLE_CORPUS_STYLES)
  clips, ids = audio.eval_clips_by_style(audio_dir, tuple(STYLE_CORPUS_STYLES),
                                         slice_len=16384, split="valid", max_clips=6)
  # Balanced: two windows of each style, in style order.
  assert ids.tolist() == [0, 0, 1, 1, 2, 2] and clips.shape == (6, 16384, 1)

  run = str(tmp_path / "run")
  train.train_and_evaluate(config, run)
  valid = log_rows(run, "valid")[-1]
  for style in STYLE_CORPUS_STYLES:
    key = f"valid/style/{style}/"
    assert valid[key + "frechet"] > 0 and valid[key + "frechet_real"] > 0
    assert valid[key + "frechet_ratio"] == pytest.approx(
        valid[key + "frechet"] / valid[key + "frechet_real"], rel=1e-5)
    assert valid[key + "frechet_others"] > 0
  assert 0.0 <= valid["valid/style_match"] <= 1.0
  assert valid["valid/frechet_ratio_by_style"] == pytest.approx(np.mean(
      [valid[f"valid/style/{s}/frechet_ratio"] for s in STYLE_CORPUS_STYLES]), rel=1e-5)
  bundle = export_lib.export(run, str(tmp_path / "bundle"))
  assert list(checkpoint.load_bundle(bundle).config.styles) == list(STYLE_CORPUS_STYLES)
  result = evaluate_lib.evaluate(bundle, split="test", num_batches=2)
  assert set(result["style"]) == set(STYLE_CORPUS_STYLES) and result["clips"] == 16
  assert result["style"]["drone"]["frechet_ratio"] > 0

  paths = sample_lib.sample(bundle, str(tmp_path / "drone"), num_samples=2, style="drone",
                            seed=5)
  drone = [soundfile.read(p)[0] for p in paths]
  assert len(drone) == 2 and drone[0].shape == (16384,)
  # The same latents in another style: the generator reads the style.
  runs = [soundfile.read(p)[0] for p in sample_lib.sample(
      bundle, str(tmp_path / "runs"), num_samples=2, style="runs", seed=5)]
  assert not np.allclose(drone[0], runs[0])
  with pytest.raises(errors.UserError, match=r"--style='jazz': unknown; this GAN knows "
                                             r"chorale, drone, runs"):
    sample_lib.sample(bundle, str(tmp_path / "x"), style="jazz")
  with pytest.raises(errors.UserError, match=r"--guidance=2.0: a GAN has no"):
    sample_lib.sample(bundle, str(tmp_path / "x"), style="drone", guidance=2.0)
  assert not os.path.exists(str(tmp_path / "x"))


def test_moment_matching_compares_each_style_with_its_own_real_statistics():
  rng = np.random.default_rng(0)
  clips = jnp.asarray(rng.normal(scale=0.1, size=(6, 16384, 1)), jnp.float32)
  fake = jnp.asarray(rng.normal(scale=0.2, size=(6, 16384, 1)), jnp.float32)
  style = jnp.asarray([0, 2, 0, 2, 2, 0])
  empty = {"mean": jnp.zeros((3, 64)), "outer": jnp.zeros((3, 64, 64)),
           "batches": jnp.zeros((3,))}
  moments = gan.update_styled_moments(empty, clips, style, 16000, parallel.IDENTITY)
  # The first batch's moments of each style present; style 1 stays empty.
  for s in (0, 2):
    own = gan.mel_moments(clips[np.asarray(style) == s], 16000)
    np.testing.assert_allclose(moments["mean"][s], own["mean"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(moments["outer"][s], own["outer"], rtol=1e-4, atol=1e-3)
  assert moments["batches"].tolist() == [1.0, 0.0, 1.0]
  np.testing.assert_array_equal(moments["mean"][1], 0.0)
  # A second batch of style 0 alone: the plain mean of its two batches.
  again = gan.update_styled_moments(moments, fake[:2], jnp.asarray([0, 0]), 16000,
                                    parallel.IDENTITY)
  np.testing.assert_allclose(again["mean"][0], 0.5 * (moments["mean"][0] + gan.mel_moments(
      fake[:2], 16000)["mean"]), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(again["mean"][2], moments["mean"][2])
  # The loss: each style's fake clips against its own statistics, weighted
  # by its share of the clips (here 3 and 3).
  loss = gan.styled_moment_matching_loss(moments, fake, style, 16000, "frechet")
  per_style = [gan.moment_matching_loss({k: moments[k][s] for k in ("mean", "outer")},
                                        fake[np.asarray(style) == s], 16000, "frechet")
               for s in (0, 2)]
  np.testing.assert_allclose(loss, 0.5 * sum(per_style), rtol=1e-4)
  assert float(per_style[0]) > 0
