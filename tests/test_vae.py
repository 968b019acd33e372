"""Tests of the sequence VAE: the KL, free bits and beta by hand, shapes and
logical axis names, a causal decoder, padding-blind encoding, interpolation
endpoints, config errors, and the smoke config through train -> export ->
evaluate -> sample (prior and between two real MIDI files)."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import note_seq
import numpy as np
import pytest
from flax import traverse_util

from musegen_jax import checkpoint
from musegen_jax import evaluate as evaluate_lib
from musegen_jax import export as export_lib
from musegen_jax import parallel
from musegen_jax.parallel import pmap
from musegen_jax import sample as sample_lib
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax.data import jsb
from musegen_jax.data import pipeline
from musegen_jax.models import vae
from musegen_jax.tasks import vae as vae_task

from conftest import load_config, tiny_lstm_config

VOCAB, LATENT, PAD, START = 11, 4, 0, 1

# Tiny shapes: compile time dominates.
pytestmark = pytest.mark.usefixtures("fewer_optimizations")


def _model(**overrides):
  fields = dict(vocab_size=VOCAB, embed_dim=8, encoder_hidden_size=6,
                encoder_num_layers=2, decoder_hidden_size=10, decoder_num_layers=2,
                latent_dim=LATENT, pad_id=PAD, start_id=START)
  fields.update(overrides)
  return vae.SequenceVAE(**fields)


def _tokens(batch=3, length=7, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 2, VOCAB)


@pytest.fixture(scope="module")
def model_and_params():
  model = _model()
  boxed = jax.jit(model.init)(jax.random.PRNGKey(1), _tokens())["params"]
  return model, boxed


@pytest.fixture(scope="module")
def smoke_task(jsb_data_dir):
  config = load_config("vae")
  rep = train.load_representation(config, jsb_data_dir)
  task = tasks.create_task(config, rep)
  return task, jax.jit(task.init_params)(jax.random.PRNGKey(0)), jsb_data_dir


def test_kl_is_zero_at_the_prior_and_matches_a_hand_value():
  zeros = jnp.zeros((2, 5))
  np.testing.assert_array_equal(vae.kl_divergence(zeros, zeros), [0.0, 0.0])
  mu, logvar = jnp.asarray([[1.0, 2.0]]), jnp.asarray([[0.0, np.log(2.0)]])
  # 0.5 * [(1 + 1 - 1 - 0) + (2 + 4 - 1 - log 2)]
  np.testing.assert_allclose(vae.kl_divergence(mu, logvar),
                             [0.5 * (6.0 - np.log(2.0))], rtol=1e-6)


def test_free_bits_and_beta_schedule_by_hand():
  np.testing.assert_allclose(vae_task.free_bits_kl(jnp.asarray([1.0, 4.0, 5.0, 10.0]), 4.0),
                             [0.0, 0.0, 1.0, 6.0])
  for step, beta in ((0, 0.0), (25, 0.125), (100, 0.5), (1000, 0.5)):
    assert float(vae_task.beta_schedule(step, 0.5, 100)) == pytest.approx(beta)
  assert float(vae_task.beta_schedule(0, 0.5, 0)) == 0.5  # No warmup.


def test_loss_is_recon_plus_beta_times_kl_beyond_free_bits(smoke_task):
  task, params, data_dir = smoke_task
  windows = task.eval_data(data_dir)[:8]
  noise = jax.random.normal(jax.random.PRNGKey(3), (8, task.latent_dim))
  sums = jax.jit(lambda p, t: task._sums(p, t, noise, None, jnp.float32(0.7),
                                         train=False))(params, windows)
  x = windows[:, 1:]
  mu, logvar = task.encode(params, x)
  kl = np.asarray(vae.kl_divergence(mu, logvar))
  np.testing.assert_allclose(float(sums["kl_sum"]), kl.sum(), rtol=1e-5)
  expected = float(sums["recon_sum"]) + 0.7 * np.maximum(
      kl - task.config.vae.free_bits, 0).sum()
  np.testing.assert_allclose(float(sums["loss_sum"]), expected, rtol=1e-5)
  assert float(sums["sequence_sum"]) == 8
  assert float(sums["token_sum"]) == np.sum(x != task.pad_id)


@pytest.mark.slow
def test_pmap_with_accumulation_equals_one_jit_step(jsb_data_dir):
  """The latent noise is drawn for the global batch: same update either way."""
  settings = dict(model__dropout_rate=0.0, warmup_steps=0, vae__beta_warmup_steps=0)
  config = load_config("vae", **settings)
  task = tasks.create_task(config, train.load_representation(config, jsb_data_dir))
  batch = {"tokens": task.eval_data(jsb_data_dir)[:config.batch_size]}
  mesh = train.create_mesh(config)
  state = train.create_train_state(task, config, mesh, jax.random.PRNGKey(0))
  replicated = parallel.replicate(state)  # Before the jit step donates `state`.
  step, _ = train.jit_steps(task, mesh)
  reference, metrics = step(state, parallel.global_batch(batch, mesh),
                            jax.random.PRNGKey(1))

  pmap_config = load_config("vae", grad_accum_steps=2, parallelism="pmap", **settings)
  pmap_step = pmap.train_step(tasks.create_task(pmap_config, task.representation))
  pmapped, pmap_metrics = parallel.unreplicate(pmap_step(
      replicated, parallel.device_batch(batch), jax.random.PRNGKey(1)))
  for key in ("loss", "recon", "kl"):
    np.testing.assert_allclose(float(pmap_metrics[key]), float(metrics[key]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(pmapped.params), jax.tree.leaves(reference.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


def test_shapes_and_logical_axis_names(model_and_params):
  model, boxed = model_and_params
  flat = traverse_util.flatten_dict(boxed, sep="/")
  names = {k: v.names for k, v in flat.items()}
  assert all(isinstance(v, nn.Partitioned) for v in flat.values())
  assert names["mu/kernel"] == ("hidden", "latent")
  assert names["logvar/bias"] == ("latent",)
  assert names["initial_state/kernel"] == ("latent", "hidden")
  assert names["embed/embedding"] == ("vocab", "embed")
  assert names["encoder/bigru_1/w_hh"] == (None, "hidden", "gates")
  assert names["decoder_0/w_ih"] == ("embed", "gates")
  assert names["head/kernel"] == ("hidden", "vocab")
  params = nn.unbox(boxed)
  shapes = {k: v.shape for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  assert shapes["mu/kernel"] == (12, LATENT)  # Both directions' final states.
  assert shapes["initial_state/kernel"] == (LATENT, 2 * 2 * 10)  # (h, c) x layers.
  assert shapes["decoder_0/w_ih"] == (8 + LATENT, 40)  # Embedding and z.
  tokens = _tokens()
  logits, mu, logvar = model.apply({"params": params}, tokens)
  assert logits.shape == (3, 7, VOCAB) and logits.dtype == jnp.float32
  assert mu.shape == logvar.shape == (3, LATENT)
  z = jnp.ones((3, LATENT))
  logits, carry = model.apply({"params": params}, z, tokens[:, :2], method=model.decode)
  assert logits.shape == (3, 2, VOCAB)
  assert [tuple(c.shape for c in layer) for layer in carry] == [((3, 10), (3, 10))] * 2


def test_decoder_is_causal_and_steps_like_the_full_pass(model_and_params):
  model, boxed = model_and_params
  params = nn.unbox(boxed)
  z = jax.random.normal(jax.random.PRNGKey(2), (2, LATENT))
  decode = jax.jit(lambda t, c=None: model.apply({"params": params}, z, t, c,
                                                 method=model.decode))
  tokens = _tokens(batch=2, length=9)
  base, _ = decode(tokens)
  for t in (0, 4, 8):
    changed = tokens.at[:, t].set((tokens[:, t] - 1) % (VOCAB - 2) + 2)
    logits, _ = decode(changed)
    np.testing.assert_array_equal(np.asarray(logits[:, :t]), np.asarray(base[:, :t]))
    assert not np.allclose(logits[:, t], base[:, t])
  # One token at a time from the carry gives the same logits.
  logits, carry = decode(tokens[:, :1])
  steps = [logits]
  for t in range(1, 9):
    logits, carry = decode(tokens[:, t:t + 1], carry)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), base, rtol=1e-5, atol=1e-5)
  # z matters.
  other, _ = jax.jit(lambda t: model.apply({"params": params}, -z, t,
                                           method=model.decode))(tokens)
  assert not np.allclose(other, base)


def test_encoder_reads_each_sequence_up_to_its_padding(model_and_params):
  model, boxed = model_and_params
  params = nn.unbox(boxed)
  encode = jax.jit(lambda t: model.apply({"params": params}, t, method=model.encode))
  tokens = _tokens(batch=2, length=5)
  short = jnp.pad(tokens, ((0, 0), (0, 2)), constant_values=PAD)
  longer = jnp.pad(tokens, ((0, 0), (0, 6)), constant_values=PAD)
  np.testing.assert_allclose(encode(short)[0], encode(longer)[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(encode(short)[1], encode(longer)[1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(encode(tokens)[0], encode(tokens[:, ::-1])[0])


def test_interpolation_endpoints_decode_the_inputs_latents(smoke_task):
  task, params, _ = smoke_task
  a, b = jsb.load_jsb("valid")[:2]
  path = task.interpolation_latents(params, jax.random.PRNGKey(0), 5, endpoints=[a, b])
  assert path.shape == (5, task.latent_dim)
  # Independently: each piece's first seq_len tokens after its leading EOS.
  rows = [pipeline.pad_to(pipeline.encode_with_boundary(task.representation, ns)[1:],
                          task.seq_len, task.pad_id) for ns in (a, b)]
  mu, _ = jax.jit(lambda t: task.model.apply({"params": params}, t,
                                             method=task.model.encode))(np.stack(rows))
  np.testing.assert_allclose(path[0], mu[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(path[-1], mu[1], rtol=1e-6, atol=1e-6)
  # On the great circle: norms between the ends' norms.
  norms = np.linalg.norm(path, axis=1)
  assert np.all(norms >= norms[[0, -1]].min() - 1e-4)
  assert np.all(norms <= norms[[0, -1]].max() + 1e-4)
  # The decoded ends are the ends' own decodes (shared noise across rows).
  rng = jax.random.PRNGKey(5)
  tokens = task.generate(params, rng, path, length=16, shared_noise=True)
  ends = task.generate(params, rng, np.asarray(mu), length=16, shared_noise=True)
  np.testing.assert_array_equal(tokens[[0, -1]], ends)


def test_config_errors_name_the_key():
  for overrides, message in (
      ({"vae__free_bits": -1.0}, r"config\.vae\.free_bits=-1\.0 must be >= 0"),
      ({"vae__beta": -0.5}, r"config\.vae\.beta=-0\.5"),
      ({"vae__beta_warmup_steps": -3}, r"config\.vae\.beta_warmup_steps=-3"),
      ({"model__latent_dim": 0}, r"config\.model\.latent_dim=0 must be > 0"),
      ({"model__word_dropout": 1.0}, r"config\.model\.word_dropout=1\.0"),
      ({"model__name": "lstm"}, r"config\.model\.name='lstm'"),
      ({"data__representation": "pianoroll"}, r"config\.data\.representation='pianoroll'"),
      ({"sample__top_p": 0.0}, r"config\.sample\.top_p=0\.0")):
    with pytest.raises(ValueError, match=message):
      train.check_config(load_config("vae", **overrides))
  train.check_config(load_config("vae", None))  # The full config is valid.


def _midi_pair(directory) -> list[str]:
  paths = []
  for i, ns in enumerate(jsb.load_jsb("test")[:2]):
    paths.append(str(directory / f"piece_{i}.mid"))
    note_seq.sequence_proto_to_midi_file(ns, paths[-1])
  return paths


def _parse_all(paths):
  for path in paths:
    assert os.path.exists(path) and os.path.getsize(path[:-4] + ".png") > 1000
    note_seq.midi_file_to_note_sequence(path)


@pytest.mark.slow
def test_smoke_config_trains_exports_evaluates_and_samples(tmp_path):
  workdir, bundle = str(tmp_path / "run"), str(tmp_path / "export")
  config = load_config("vae", num_train_steps=6, log_every_steps=2,
                       eval_every_steps=6, num_eval_batches=1,
                       checkpoint_every_steps=6, sample_every_steps=6)
  train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "samples", "6"))) == [
      "sample_000.mid", "sample_000.png", "sample_001.mid", "sample_001.png"]
  export_lib.export(workdir, bundle)
  metrics = evaluate_lib.evaluate(bundle, split="test", num_batches=1)
  assert metrics["nelbo"] == pytest.approx(metrics["recon"] + metrics["kl"])
  assert metrics["kl"] >= 0 and metrics["sequences"] == config.batch_size

  prior = sample_lib.sample(bundle, str(tmp_path / "prior"), num_samples=2, seed=1)
  assert len(prior) == 2
  _parse_all(prior)
  ends = _midi_pair(tmp_path)
  walk = sample_lib.sample(bundle, str(tmp_path / "walk"), endpoints=",".join(ends),
                           interpolate_steps=3, temperature=0.5, seed=2)
  assert [os.path.basename(p) for p in walk] == [
      "sample_000.mid", "sample_001.mid", "sample_002.mid"]
  _parse_all(walk)

  with pytest.raises(ValueError, match="exactly two MIDI files"):
    sample_lib.sample(bundle, str(tmp_path / "x"), endpoints=ends[:1],
                      interpolate_steps=3)
  with pytest.raises(ValueError, match="interpolate_steps >= 2"):
    sample_lib.sample(bundle, str(tmp_path / "x"), endpoints=ends)
  with pytest.raises(ValueError, match="--primer=.*: a primer continues a language model"):
    sample_lib.sample(bundle, str(tmp_path / "x"), primer=ends[0])


def test_endpoints_need_a_vae_bundle(tmp_path, jsb_data_dir):
  config = tiny_lstm_config()
  rep = train.load_representation(config, jsb_data_dir)
  task = tasks.create_task(config, rep)
  bundle = checkpoint.export_bundle(
      str(tmp_path / "lm"), params=jax.jit(task.init_params)(jax.random.PRNGKey(0)),
      config=config, representation=pipeline.representation_spec(rep), step=0)
  with pytest.raises(ValueError, match="--endpoints needs a VAE bundle; .* 'lm' model"):
    sample_lib.sample(bundle, str(tmp_path / "x"), endpoints=_midi_pair(tmp_path),
                      interpolate_steps=3)
