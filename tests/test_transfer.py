"""Style transfer with the VAE's attribute vectors (issue 28, parts 4 and 5):
style latents in the bundle, `sample --transfer`, `evaluate --classifier` on
a VAE, on the labelled corpus the tests write (conftest.styles_data_dir)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import note_seq
import numpy as np
import pytest

from musegen_jax import checkpoint
from musegen_jax import errors
from musegen_jax import evaluate as evaluate_lib
from musegen_jax import export as export_lib
from musegen_jax import sample as sample_lib
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax.data import features
from musegen_jax.data import pipeline
from tests.conftest import STYLE_CORPUS_STYLES
from tests.conftest import _style_piece
from tests.conftest import load_config


@pytest.fixture(scope="module")
def vae_bundle(styles_data_dir, tmp_path_factory) -> str:
  run = str(tmp_path_factory.mktemp("vae_run"))
  bundle = str(tmp_path_factory.mktemp("vae") / "bundle")
  train.train_and_evaluate(load_config("vae", data__dir=styles_data_dir,
                                       num_train_steps=60, checkpoint_every_steps=60,
                                       eval_every_steps=60, sample_every_steps=0),
                           run)
  export_lib.export(run, bundle)
  return bundle


@pytest.mark.slow
def test_the_bundle_keeps_each_style_mean_latent_and_transfer_moves_by_them(vae_bundle):
  bundle = checkpoint.load_bundle(vae_bundle)
  assert list(bundle.config.styles) == list(STYLE_CORPUS_STYLES)
  table = bundle.extras["style_latents"]
  assert table["styles"] == list(STYLE_CORPUS_STYLES)
  # 6 train pieces per style; 48 quarter notes are 192 sixteenth-note chord
  # tokens and an EOS: 7 windows of 32.
  assert table["windows"] == [42, 42, 42]
  task = tasks.create_task(bundle.config,
                           pipeline.representation_from_spec(bundle.representation))
  piece = _style_piece("drone", seed=99)
  means = np.asarray(table["means"], np.float32)
  mu, _ = task.encode(bundle.params, task.encode_pieces([piece]))
  z, sources = task.transfer_latents(bundle.params, [piece], "runs", bundle.extras,
                                     from_style="drone", strength=0.5)
  expected = mu + 0.5 * (means[2] - means[1])
  np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
  assert sources == ["drone"]
  z0, nearest = task.transfer_latents(bundle.params, [piece], "runs", bundle.extras,
                                      strength=0.0)
  np.testing.assert_allclose(z0, mu, rtol=1e-6, atol=1e-6)
  assert nearest[0] in STYLE_CORPUS_STYLES
  with pytest.raises(errors.UserError, match=r"--to_style='jazz': unknown; this VAE "
                                             r"knows chorale, drone, runs"):
    task.transfer_latents(bundle.params, [piece], "jazz", bundle.extras)
  with pytest.raises(errors.UserError, match=r"--transfer needs a VAE trained on a "
                                             r"labelled dataset"):
    task.transfer_latents(bundle.params, [piece], "runs", {})


@pytest.mark.slow
def test_sample_transfer_writes_the_source_and_the_moved_pieces(vae_bundle, tmp_path):
  source = str(tmp_path / "drone.mid")
  note_seq.sequence_proto_to_midi_file(_style_piece("drone", seed=7), source)
  out = str(tmp_path / "to_runs")
  paths = sample_lib.sample(vae_bundle, out, num_samples=2, transfer=source,
                            to_style="runs", strength=1.0)
  assert len(paths) == 2
  for name in ("source.mid", "source.png", "sample_000.png", "sample_001.mid"):
    assert os.path.isfile(os.path.join(out, name)), name
  with pytest.raises(errors.UserError, match=r"--strength=1.5: must be in \[0, 1\]"):
    sample_lib.sample(vae_bundle, str(tmp_path / "x"), transfer=source,
                      to_style="runs", strength=1.5)
  with pytest.raises(errors.UserError, match=r"--transfer=.*drone.mid: name the target "
                                             r"--to_style"):
    sample_lib.sample(vae_bundle, str(tmp_path / "x"), transfer=source)
  with pytest.raises(errors.UserError, match=r"unknown; this VAE knows"):
    sample_lib.sample(vae_bundle, str(tmp_path / "x"), transfer=source, to_style="jazz")
  with pytest.raises(errors.UserError, match=r"--windows=0: must be >= 1"):
    sample_lib.sample(vae_bundle, str(tmp_path / "x"), transfer=source,
                      to_style="runs", windows=0)
  with pytest.raises(errors.UserError, match=r"--windows=2 needs --transfer"):
    sample_lib.sample(vae_bundle, str(tmp_path / "x"), windows=2)
  assert not os.path.exists(str(tmp_path / "x"))

  # Two windows: the source is the first two windows joined (twice the
  # first's length: 32 sixteenths each), and each sample two decoded windows.
  out2 = str(tmp_path / "to_runs_2")
  paths2 = sample_lib.sample(vae_bundle, out2, num_samples=1, transfer=source,
                             to_style="runs", windows=2)
  read = lambda *p: note_seq.midi_file_to_note_sequence(os.path.join(*p))
  one, two = read(out, "source.mid"), read(out2, "source.mid")
  end = lambda ns: max(n.end_time for n in ns.notes)
  assert end(one) == pytest.approx(4.0, abs=0.01)
  assert end(two) == pytest.approx(2 * end(one), abs=0.01)
  assert [n.pitch for n in two.notes][:len(one.notes)] == [n.pitch for n in one.notes]
  assert len(paths2) == 1 and read(paths2[0]).notes


@pytest.mark.slow
def test_evaluate_measures_a_transfer_with_the_classifier(vae_bundle, styles_data_dir,
                                                         tmp_path):
  cls_run, cls_bundle = str(tmp_path / "cls"), str(tmp_path / "cls_bundle")
  train.train_and_evaluate(load_config("style_classifier", data__dir=styles_data_dir),
                           cls_run)
  export_lib.export(cls_run, cls_bundle, "best")
  result = evaluate_lib.evaluate_transfer(vae_bundle, cls_bundle, to_style="runs",
                                          num_samples=3, split="test")
  runs = result["transfer"]["runs"]
  assert runs["pieces"] == 3  # Test pieces of chorale and drone, 2 each: the first 3.
  for key in ("target_share", "source_share", "pitch_class", "rhythm",
              "baseline_pitch_class", "baseline_rhythm", "source_window_share"):
    assert 0.0 <= runs[key] <= 1.0, key
  assert runs["target_share"] + runs["source_share"] <= 1.0
  # The synthetic styles are told apart in the VAE's windows as in whole
  # pieces: the classifier's ceiling for the shares is reached.
  assert runs["source_window_share"] == 1.0
  assert result["mean_target_share"] == runs["target_share"]
  # Three windows of each piece, joined: the same pieces, judged whole.
  three = evaluate_lib.evaluate_transfer(vae_bundle, cls_bundle, to_style="runs",
                                         num_samples=3, split="test", windows=3)
  assert three["windows"] == 3 and three["transfer"]["runs"]["pieces"] == 3
  assert three["transfer"]["runs"]["source_window_share"] == 1.0
  with pytest.raises(errors.UserError, match=r"--windows=0: must be >= 1"):
    evaluate_lib.evaluate_transfer(vae_bundle, cls_bundle, windows=0)


def test_pitch_class_and_rhythm_similarity():
  a = _style_piece("runs", seed=1)
  assert features.similarity(a, a) == {"pitch_class": pytest.approx(1.0),
                                       "rhythm": pytest.approx(1.0)}
  empty = note_seq.NoteSequence()
  assert features.similarity(a, empty) == {"pitch_class": 0.0, "rhythm": 0.0}
  # Drones sound on beat 1 of each bar only; runs on every sixteenth.
  drone, runs = _style_piece("drone", seed=2), _style_piece("runs", seed=3)
  assert features.onset_histogram(drone).tolist() == [12.0] + [0.0] * 15
  assert features.similarity(drone, runs)["rhythm"] == pytest.approx(0.25)


# --- the conditioned VAE (issue 28, part 3) ----------------------------------


def _cvae_config(data_dir: str, **overrides):
  settings = dict(condition__enabled=True, data__dir=data_dir, num_eval_batches=-1)
  settings.update(overrides)
  return load_config("vae", **settings)


def _task(config):
  tasks.configure_from_data(config, config.data.dir)
  return tasks.create_task(config, train.load_representation(config, config.data.dir))


def test_a_conditioned_vae_reads_each_window_style_and_starts_as_the_plain_one(
    styles_data_dir):
  config = _cvae_config(styles_data_dir)
  task = _task(config)
  assert task.styles == list(STYLE_CORPUS_STYLES)
  windows = task.eval_data(styles_data_dir, "valid")
  # The first column is the piece's style: every style is there.
  assert set(windows[:, 0].tolist()) == {0, 1, 2}
  # The sequences never start with the pieces' leading EOS (as unstyled):
  # one that starts with EOS is a piece's end.
  ends = windows[windows[:, 1] == task.eos_id, 2:]
  assert len(ends) and np.all(ends == task.pad_id)
  assert np.sum(windows[:, 1:] == task.eos_id) == 6  # One per valid piece.
  batch = next(iter(task.create_train_dataset(styles_data_dir)))
  assert batch["tokens"].shape == (config.batch_size, config.data.seq_len + 1)
  assert np.all((batch["tokens"][:, 0] >= 0) & (batch["tokens"][:, 0] < 3))
  params = task.init_params(jax.random.PRNGKey(0))
  # One row per style and one for "no style", all zero at the start.
  np.testing.assert_array_equal(params["style_embedding"],
                                np.zeros((4, config.model.latent_dim)))
  np.testing.assert_array_equal(params["encoder_style_embedding"],
                                np.zeros((4, 2 * config.model.encoder_hidden_size)))
  plain = _task(load_config("vae", data__dir=styles_data_dir))
  tables = ("style_embedding", "encoder_style_embedding")
  plain_params = {k: v for k, v in params.items() if k not in tables}
  assert (jax.tree.structure(plain_params)
          == jax.tree.structure(plain.init_params(jax.random.PRNGKey(0))))
  batch = {"tokens": jnp.asarray(windows[:config.batch_size])}
  sums = task.eval_step(params, batch)
  # Zero embeddings: the conditioned model is the plain one (which drops
  # the first column the style takes).
  for key, value in plain.eval_step(plain_params, batch).items():
    np.testing.assert_allclose(sums[key], value, rtol=1e-6, err_msg=key)
  for table in tables:
    moved = dict(params, **{table: params[table].at[:3].set(3.0)})
    assert float(task.eval_step(moved, batch)["recon_sum"]) != float(sums["recon_sum"]), table
  # The "no style" rows alone are what label dropout trains: with them
  # moved, the labelled windows score as before.
  unstyled = dict(params, **{t: params[t].at[3].set(3.0) for t in tables})
  np.testing.assert_allclose(task.eval_step(unstyled, batch)["recon_sum"],
                             sums["recon_sum"], rtol=1e-6)


def test_a_conditioned_vae_guides_and_moves_by_its_style(styles_data_dir):
  task = _task(_cvae_config(styles_data_dir))
  params = task.init_params(jax.random.PRNGKey(1))
  for i, table in enumerate(("style_embedding", "encoder_style_embedding")):
    params[table] = 5.0 * jax.random.normal(jax.random.PRNGKey(3 + i),
                                            params[table].shape)
  rng = jax.random.PRNGKey(2)
  draw = lambda style, guidance: task.sample_pieces(
      params, rng, num_samples=3, length=24, style=style, guidance=guidance)[0]
  # Guidance 0 is the "no style" pass alone; 1 the styled one alone.
  np.testing.assert_array_equal(draw("drone", 0.0), draw(None, 1.0))
  styled = draw("drone", 1.0)
  assert not np.array_equal(styled, draw(None, 1.0))
  assert not np.array_equal(styled, draw("drone", 3.0))
  # Transfer moves the latent by the attribute vectors (the piece and the
  # style means encoded with no style) and decodes it with the styles' mix.
  piece = _style_piece("drone", seed=99)
  extras = task.bundle_extras(params, styles_data_dir)
  means = np.asarray(extras["style_latents"]["means"], np.float32)
  mu, _ = task.encode(params, task.encode_pieces([piece]))
  z, sources = task.transfer_latents(params, [piece], "runs", extras,
                                     from_style="drone", strength=0.25)
  np.testing.assert_allclose(z, mu + 0.25 * (means[2] - means[1]), rtol=1e-5, atol=1e-5)
  assert sources == ["drone"]
  # The encoder reads the style: a piece encoded as "drone" lies elsewhere.
  assert not np.allclose(task.encode(params, task.encode_pieces([piece]), "drone")[0], mu)
  weights = task.transfer_styles("runs", ["drone", "runs"], strength=0.25)
  np.testing.assert_allclose(weights, [[0.0, 0.75, 0.25, 0.0], [0.0, 0.0, 1.0, 0.0]])
  full = task.generate(params, rng, np.repeat(mu, 2, 0), length=24, shared_noise=True,
                       style=task.transfer_styles("runs", ["drone", "chorale"], 1.0))
  np.testing.assert_array_equal(full[0], full[1])  # Strength 1: the source is gone.
  np.testing.assert_array_equal(full[:1], task.generate(
      params, rng, mu, length=24, shared_noise=True, style="runs"))
  with pytest.raises(errors.UserError, match=r"--style='baroque': unknown; this VAE "
                                             r"knows chorale, drone, runs"):
    task.sample_pieces(params, rng, num_samples=1, length=4, style="baroque")
  with pytest.raises(errors.UserError, match=r"--to_style='jazz': unknown; this VAE "
                                             r"knows chorale, drone, runs"):
    task.transfer_latents(params, [piece], "jazz", extras)
  plain = _task(load_config("vae", data__dir=styles_data_dir))
  plain_params = plain.init_params(jax.random.PRNGKey(1))
  with pytest.raises(errors.UserError, match=r"--style=drone: this VAE is not "
                                             r"style-conditioned"):
    plain.sample_pieces(plain_params, rng, num_samples=1, length=4, style="drone")
  with pytest.raises(errors.UserError, match=r"--style/--guidance: this VAE is not "
                                             r"style-conditioned"):
    plain.generate(plain_params, rng, mu, length=4, guidance=2.0)
  with pytest.raises(ValueError, match=r"config.condition.dropout=1.0 must be in \[0, 1\)"):
    train.check_config(_cvae_config(styles_data_dir, condition__dropout=1.0))


@pytest.mark.slow
def test_a_vae_bundle_warm_starts_a_conditioned_vae_that_samples_and_transfers_by_style(
    vae_bundle, styles_data_dir, tmp_path, capsys):
  run, bundle = str(tmp_path / "cvae"), str(tmp_path / "cvae_bundle")
  config = _cvae_config(styles_data_dir, init_from=vae_bundle, num_train_steps=150,
                        learning_rate=1e-2, warmup_steps=10, checkpoint_every_steps=150,
                        eval_every_steps=150, sample_every_steps=0, num_eval_batches=2)
  train.train_and_evaluate(config, run)
  export_lib.export(run, bundle)
  loaded = checkpoint.load_bundle(bundle)
  assert loaded.config.condition.enabled and list(loaded.config.styles) == list(
      STYLE_CORPUS_STYLES)
  # Everything but the new style table came from the plain VAE's bundle.
  plain = checkpoint.load_bundle(vae_bundle)
  tables = {"style_embedding", "encoder_style_embedding"}
  assert set(loaded.params) == set(plain.params) | tables
  for table in tables:
    assert float(np.abs(np.asarray(loaded.params[table])).max()) > 0, table

  def low_share(paths):  # Samples whose median pitch is a drone's (< 55).
    medians = [np.median([n.pitch for n in note_seq.midi_file_to_note_sequence(p).notes]
                         or [0]) for p in paths]
    return float(np.mean(np.asarray(medians) < 55))

  shares = {}
  for style in ("drone", "runs"):
    paths = sample_lib.sample(bundle, str(tmp_path / style), num_samples=16, style=style,
                              guidance=2.0)
    assert len(paths) == 16 and all(os.path.isfile(p) for p in paths)
    shares[style] = low_share(paths)
  # The drone style lives two octaves below the others.
  assert shares["drone"] >= shares["runs"] + 0.25, shares
  with pytest.raises(errors.UserError, match=r"--guidance=2.0: name the --style"):
    sample_lib.sample(bundle, str(tmp_path / "x"), guidance=2.0)
  with pytest.raises(errors.UserError, match=r"unknown; this VAE knows chorale, drone, runs"):
    sample_lib.sample(bundle, str(tmp_path / "x"), style="jazz")
  assert not os.path.exists(str(tmp_path / "x"))

  source = str(tmp_path / "runs.mid")
  note_seq.sequence_proto_to_midi_file(_style_piece("runs", seed=7), source)
  moved = {}
  for target in ("drone", "chorale"):
    out = str(tmp_path / f"to_{target}")
    paths = sample_lib.sample(bundle, out, num_samples=2, transfer=source,
                              to_style=target, from_style="runs", guidance=2.0)
    assert f"runs.mid: runs -> {target} (strength 1)" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, "source.png")) and len(paths) == 2
    moved[target] = [[n.pitch for n in note_seq.midi_file_to_note_sequence(p).notes]
                     for p in paths]
  # Moved to and decoded as another style (how far a model this small moves
  # a piece is measured in BUILD_NOTES, not here).
  assert moved["drone"] != moved["chorale"]


@pytest.mark.slow
def test_a_plain_vae_samples_a_style_from_its_region_of_the_latent_space(
    vae_bundle, tmp_path):
  bundle = checkpoint.load_bundle(vae_bundle)
  task = tasks.create_task(bundle.config,
                           pipeline.representation_from_spec(bundle.representation))
  table = bundle.extras["style_latents"]
  means, stds = (np.asarray(table[k], np.float32) for k in ("means", "stds"))
  assert stds.shape == means.shape == (3, task.latent_dim)
  # The spread of the aggregate posterior: at least the posteriors' own.
  mu, logvar = task.encode(bundle.params, task.encode_pieces([_style_piece("runs", 5)]))
  assert np.all(stds > 0) and np.all(np.isfinite(stds))
  z = task.style_prior_latents(jax.random.PRNGKey(0), 20000, "runs", bundle.extras)
  np.testing.assert_allclose(z.mean(0), means[2], atol=0.05 * stds[2].max())
  np.testing.assert_allclose(z.std(0), stds[2], rtol=0.05)
  # A bundle from before the spreads were stored: unit spread about the mean.
  old = {"style_latents": {k: v for k, v in table.items() if k != "stds"}}
  z = task.style_prior_latents(jax.random.PRNGKey(0), 20000, "runs", old)
  np.testing.assert_allclose(z.std(0), np.ones_like(stds[2]), rtol=0.05)
  # sample --style on the plain VAE decodes those latents: the same tokens
  # as decoding them by hand.
  rng = jax.random.PRNGKey(4)
  tokens, _ = task.sample_pieces(bundle.params, rng, num_samples=3, length=16,
                                 style="drone", extras=bundle.extras)
  latent_rng, decode_rng = jax.random.split(rng)
  np.testing.assert_array_equal(tokens, task.generate(
      bundle.params, decode_rng,
      task.style_prior_latents(latent_rng, 3, "drone", bundle.extras), length=16))
  paths = sample_lib.sample(vae_bundle, str(tmp_path / "drone"), num_samples=2,
                            style="drone")
  assert len(paths) == 2 and all(os.path.isfile(p) for p in paths)
  with pytest.raises(errors.UserError, match=r"--style='jazz': unknown; this VAE "
                                             r"knows chorale, drone, runs"):
    sample_lib.sample(vae_bundle, str(tmp_path / "x"), style="jazz")
  with pytest.raises(errors.UserError, match=r"--nostyle_prior: a VAE that is not "
                                             r"style-conditioned"):
    sample_lib.sample(vae_bundle, str(tmp_path / "x"), style="drone", style_prior=False)
  with pytest.raises(errors.UserError, match=r"--style/--guidance: this VAE is not "
                                             r"style-conditioned"):
    sample_lib.sample(vae_bundle, str(tmp_path / "x"), style="drone", guidance=2.0)
  assert not os.path.exists(str(tmp_path / "x"))
