"""GRU models: the recurrence against a reference loop, both directions,
windows that slide, the next-token-only objective, and the bigru smoke run."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import note_seq
import numpy as np
import optax
import pytest

from musegen_jax import flops as flops_lib
from musegen_jax import export as export_lib
from musegen_jax import models
from musegen_jax import sample as sample_lib
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax.data import pipeline
from musegen_jax.models import gru

from conftest import load_config
from gru_reference import H, gru_weights, reference_gru

# A few steps at tiny shapes each: compile time dominates.
pytestmark = pytest.mark.usefixtures("fewer_optimizations")


def _direction(weights, d):
  return [np.asarray(weights[k][d], np.float64)
          for k in ("w_ih", "b_ih", "w_hh", "b_hh")]


def _layer_params(w):
  return {"params": {k: jnp.asarray(v, jnp.float32) for k, v in w.items()}}


def test_backward_direction_reads_the_sequence_in_reverse():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 2, 3))
  w = gru_weights(rng, 3, directions=2)
  layer = gru.GRULayer(H, bidirectional=True)
  outputs, finals = layer.apply(_layer_params(w), jnp.asarray(x, jnp.float32))
  zeros = np.zeros((2, H))
  fwd_hs, fwd_ht = reference_gru(x, *_direction(w, 0), zeros)
  bwd_hs, bwd_ht = reference_gru(x[::-1], *_direction(w, 1), zeros)
  np.testing.assert_allclose(outputs[..., :H], fwd_hs, atol=1e-5)
  # Put back in input order: output t of the backward direction has read
  # steps T-1 .. t.
  np.testing.assert_allclose(outputs[..., H:], bwd_hs[::-1], atol=1e-5)
  np.testing.assert_allclose(finals[0], fwd_ht, atol=1e-5)
  np.testing.assert_allclose(finals[1], bwd_ht, atol=1e-5)
  # The two directions have their own weights: swapping them changes things.
  swapped = {k: v[::-1] for k, v in w.items()}
  other, _ = layer.apply(_layer_params(swapped), jnp.asarray(x, jnp.float32))
  assert not np.allclose(other, outputs)


def test_padded_sequences_reverse_within_their_length():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(6, 2, 3))
  lengths = np.array([4, 6])
  x[4:, 0] = 99.0  # Padding after the first sequence's 4 steps.
  w = gru_weights(rng, 3, directions=2)
  outputs, _ = gru.GRULayer(H, bidirectional=True).apply(
      _layer_params(w), jnp.asarray(x, jnp.float32), lengths=jnp.asarray(lengths))
  bwd_hs, _ = reference_gru(x[:4, :1][::-1], *_direction(w, 1), np.zeros((1, H)))
  np.testing.assert_allclose(outputs[:4, 0, H:], bwd_hs[::-1, 0], atol=1e-5)
  # The encoder's forward final state is the one at each sequence's end.
  encoder = gru.BiGRUEncoder(H, num_layers=1)
  params = {"params": {"bigru_0": _layer_params(w)["params"]}}
  _, final = encoder.apply(params, jnp.asarray(x, jnp.float32),
                           lengths=jnp.asarray(lengths))
  fwd_hs, _ = reference_gru(x[:4, :1], *_direction(w, 0), np.zeros((1, H)))
  np.testing.assert_allclose(final[0, :H], fwd_hs[-1, 0], atol=1e-5)
  np.testing.assert_allclose(final[0, H:], bwd_hs[-1, 0], atol=1e-5)


def _lm(**kwargs):
  settings = dict(vocab_size=11, embed_dim=6, hidden_size=8, num_layers=2)
  settings.update(kwargs)
  return gru.GRULanguageModel(**settings)


def test_causal_gru_never_looks_ahead_and_carries_its_state():
  model = _lm()
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, 11)
  params = model.init(jax.random.PRNGKey(1), tokens)["params"]
  logits, carry = model.apply({"params": params}, tokens)
  assert logits.shape == (2, 9, 11) and len(carry) == 2
  changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % 11)
  other, _ = model.apply({"params": params}, changed)
  np.testing.assert_array_equal(logits[:, :5], other[:, :5])
  assert not np.allclose(logits[:, 5:], other[:, 5:])
  # Token by token with the carry equals the whole sequence at once.
  first, carry = model.apply({"params": params}, tokens[:, :4])
  rest, _ = model.apply({"params": params}, tokens[:, 4:], carry=carry)
  np.testing.assert_allclose(jnp.concatenate([first, rest], 1), logits,
                             rtol=1e-5, atol=1e-6)
  # Multi-hot frames (the piano-roll task) go straight into the first layer.
  frames = jax.random.bernoulli(jax.random.PRNGKey(2), 0.2, (2, 5, 11))
  frame_params = model.init(jax.random.PRNGKey(1), frames.astype(jnp.float32))["params"]
  assert "embed" not in frame_params
  assert model.apply({"params": frame_params}, frames.astype(jnp.float32))[0].shape == (
      2, 5, 11)


def _window_model(window=6):
  return gru.BiGRUWindowModel(vocab_size=13, embed_dim=5, hidden_size=4,
                              num_layers=2, window=window, dense_dim=7, pad_id=0)


def test_window_model_slides_its_window():
  model = _window_model()
  tokens = jax.random.randint(jax.random.PRNGKey(3), (3, 10), 2, 13)
  params = model.init(jax.random.PRNGKey(4), tokens)["params"]
  logits, window = model.apply({"params": params}, tokens)
  assert logits.shape == (3, 1, 13)
  np.testing.assert_array_equal(window, tokens[:, -6:])
  # Only the last `window` tokens matter, and all of them do (both directions).
  other, _ = model.apply({"params": params}, tokens.at[:, 0].set(1))
  np.testing.assert_array_equal(other, logits)
  for position in (4, 9):
    other, _ = model.apply({"params": params}, tokens.at[:, position].set(1))
    assert not np.allclose(other, logits)
  # A carry is the previous window: appending a token slides it.
  step, slid = model.apply({"params": params}, tokens[:, -1:], carry=tokens[:, 3:9])
  np.testing.assert_array_equal(slid, window)
  np.testing.assert_allclose(step, logits, rtol=1e-6)
  # Fewer tokens than the window are left-padded.
  short, padded = model.apply({"params": params}, tokens[:, :2])
  np.testing.assert_array_equal(padded[:, :4], 0)
  np.testing.assert_array_equal(padded[:, 4:], tokens[:, :2])
  assert short.shape == (3, 1, 13)


def test_next_token_only_loss_and_sliding_eval(jsb_data_dir):
  config = load_config("bigru")
  rep = train.load_representation(config, jsb_data_dir)
  task = tasks.create_task(config, rep)
  assert task.last_only
  window = config.data.seq_len
  tokens = np.random.default_rng(0).integers(2, rep.vocab_size,
                                             (4, window + 1)).astype(np.int32)
  tokens[3, -1] = rep.pad_id  # A padded target carries no weight.
  params = task.init_params(jax.random.PRNGKey(0))
  sums = task.eval_step(params, {"tokens": jnp.asarray(tokens)})
  logits, _ = task.model.apply({"params": params}, jnp.asarray(tokens[:, :-1]))
  expected = optax.softmax_cross_entropy_with_integer_labels(
      logits[:3, 0], jnp.asarray(tokens[:3, -1]))
  np.testing.assert_allclose(float(sums["loss_sum"]), float(expected.sum()), rtol=1e-5)
  assert float(sums["weight_sum"]) == 3.0

  # Sliding eval windows: every token after a piece's first ends exactly one.
  windows = pipeline.eval_windows(jsb_data_dir, rep, seq_len=window,
                                  split="valid", sliding=True)
  from musegen_jax.data import shards
  pieces = [pipeline.encode_with_boundary(rep, ns) for ns in shards.read_note_sequences(
      shards.split_paths(jsb_data_dir, "valid"))]
  assert len(windows) == sum(len(p) - 1 for p in pieces)
  np.testing.assert_array_equal(windows[0, :window - 1], rep.pad_id)
  np.testing.assert_array_equal(windows[0, window - 1:], pieces[0][:2])
  last = len(pieces[0]) - 2
  np.testing.assert_array_equal(windows[last], pieces[0][-(window + 1):])


def test_left_padded_training_windows():
  crop = pipeline.RandomWindow(5, pad_value=0, left_pad=True)
  x = np.arange(1, 21, dtype=np.int32)
  seen_first, starts = set(), set()
  for seed in range(400):
    out = crop.random_map({"value": x, "bad_records": 0},
                          np.random.default_rng(seed))["tokens"]
    real = out[out != 0]
    assert len(real) >= 2  # At least two real tokens: an input and the target.
    np.testing.assert_array_equal(real, np.arange(real[0], real[0] + len(real)))
    np.testing.assert_array_equal(out[:5 - len(real)], 0)  # Padding on the left.
    seen_first.add(int(out[-1]))
  # Every token after the first is some window's target.
  assert seen_first == set(range(2, 21))


def test_create_model_and_flops():
  config = load_config("bigru", variant=None)
  model = models.create_model(config.model, 201, pad_id=0)
  assert isinstance(model, gru.BiGRUWindowModel)
  assert (model.window, model.hidden_size, model.dense_dim) == (50, 128, 256)
  # Per example: 3 layers x 2 directions x 50 steps x 2 (in + hidden) x 3 gates.
  flops = flops_lib.gru_train_flops(vocab_size=201, embed_dim=100, hidden_size=128,
                                 num_layers=3, batch_size=64, seq_len=50,
                                 bidirectional=True, dense_dim=256, last_only=True)
  layers = 2 * 2 * 64 * 50 * 3 * 128 * ((100 + 128) + 2 * (256 + 128))
  head = 2 * 64 * (256 * 256 + 256 * 201)
  assert flops == 3 * (layers + head)
  with pytest.raises(ValueError, match="config.model.window=50 must equal "
                     "config.data.seq_len=40"):
    train.check_config(load_config("bigru", variant=None, data__seq_len=40))


@pytest.mark.slow
def test_bigru_smoke_trains_exports_and_samples_midi(tmp_path):
  workdir, bundle = str(tmp_path / "run"), str(tmp_path / "export")
  config = load_config("bigru", num_train_steps=6, log_every_steps=2,
                       eval_every_steps=6, num_eval_batches=2,
                       checkpoint_every_steps=6, sample_every_steps=6)
  train.train_and_evaluate(config, workdir)
  assert os.path.exists(os.path.join(workdir, "samples", "6", "sample_000.mid"))
  export_lib.export(workdir, bundle)
  paths = sample_lib.sample(bundle, str(tmp_path / "samples"), num_samples=2,
                            length=40, seed=1)
  assert len(paths) == 2
  for path in paths:
    ns = note_seq.midi_file_to_note_sequence(path)
    assert ns.notes


@pytest.mark.slow
def test_jsb_gru_smoke_trains_exports_and_evaluates_test_nll(tmp_path):
  from musegen_jax import evaluate
  workdir, bundle = str(tmp_path / "run"), str(tmp_path / "export")
  config = load_config("jsb_gru", num_train_steps=4, eval_every_steps=4,
                       checkpoint_every_steps=4, log_every_steps=2,
                       sample_every_steps=4)
  assert config.model.name == "gru"
  train.train_and_evaluate(config, workdir)
  assert os.listdir(os.path.join(workdir, "samples", "4"))
  export_lib.export(workdir, bundle, "best")
  test = evaluate.evaluate(bundle, split="test")
  # Every frame of the 77 test pieces; NLL at most that of p = 1/2 per key
  # (plus slack for 4 steps from a random start).
  assert test["frames"] == 4725
  assert 0 < test["nll"] < 88 * np.log(2) + 1
