"""Matmuls in bfloat16 with float32 sums (`model.matmul_dtype="bfloat16"`):
`layers.matmul` and its gradients against float64 references built from the
same bfloat16-rounded operands, the blocked attention with bfloat16 operands,
the Transformer, the LSTM, the GRUs (their hand-written recurrences too) and
the VAE with bfloat16 matmuls against their float32 selves, and the smoke
configs' train -> export -> sample."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import note_seq
import numpy as np
import pytest

from musegen_jax import export as export_lib
from musegen_jax import models
from musegen_jax import sample as sample_lib
from musegen_jax import train
from musegen_jax.models import gru
from musegen_jax.models import layers
from musegen_jax.models import lstm
from musegen_jax.models import transformer
from musegen_jax.tasks import vae as vae_task

from conftest import load_config

BF16 = jnp.bfloat16


def _rounded(a) -> np.ndarray:
  """`a` rounded to bfloat16, as float64."""
  return np.asarray(jnp.asarray(a).astype(BF16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 6)])
def test_swap_last_axes_is_a_transpose_of_the_last_two_axes(shape):
  a = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  swapped = jax.jit(layers.swap_last_axes)(a)
  np.testing.assert_array_equal(swapped, jnp.swapaxes(a, -1, -2))


def test_matmul_multiplies_bfloat16_operands_and_sums_in_float32():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 64)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(64, 24)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(3, 5, 24)), jnp.float32)  # Output gradient.

  y, vjp = jax.vjp(jax.jit(lambda x, w: layers.matmul(x, w, BF16)), x, w)
  dx, dw = vjp(g)
  assert y.dtype == dx.dtype == dw.dtype == jnp.float32
  assert y.shape == (3, 5, 24) and dx.shape == x.shape and dw.shape == w.shape

  # Products of bfloat16 values are exact in float32; only the float32 sums
  # round. Any float32 operand or a bfloat16 sum would miss by ~1e-2.
  xr, wr, gr = _rounded(x), _rounded(w), _rounded(g)
  np.testing.assert_allclose(y, xr @ wr, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, gr @ wr.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      dw, xr.reshape(-1, 64).T @ gr.reshape(-1, 24), rtol=1e-5, atol=1e-5)
  # Rounding the operands is what separates it from the float32 product.
  assert not np.allclose(y, np.asarray(x, np.float64) @ np.asarray(w, np.float64),
                         rtol=1e-5, atol=1e-5)

  # bfloat16 activations (model.dtype "bfloat16"): results in bfloat16,
  # the parameter's gradient in float32.
  y16, vjp16 = jax.vjp(lambda x, w: layers.matmul(x, w, BF16), x.astype(BF16), w)
  dx16, dw16 = vjp16(g.astype(BF16))
  assert (y16.dtype, dx16.dtype, dw16.dtype) == (BF16, BF16, jnp.float32)
  np.testing.assert_allclose(np.asarray(y16, np.float64), xr @ wr, rtol=1e-2,
                             atol=1e-2)


def test_causal_attention_with_bfloat16_operands_follows_float32():
  rng = np.random.default_rng(1)
  length = 128  # Two query blocks.
  q, k, v = (jnp.asarray(rng.normal(size=(2, 3, length, 8)), jnp.float32)
             for _ in range(3))
  bias = jnp.asarray(rng.normal(size=(2, 3, length, length)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(2, 3, length, 8)), jnp.float32)

  def loss(q, k, v, bias, dtype):
    y = transformer.causal_attention(q.astype(dtype), k.astype(dtype),
                                     v.astype(dtype), bias, 0.5, 0)
    return jnp.sum(y.astype(jnp.float32) * weights), y

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True),
                 static_argnums=4)
  (full, _), full_grads = grad(q, k, v, bias, jnp.float32)
  (low, y), low_grads = grad(q, k, v, bias, BF16)
  assert y.dtype == BF16
  assert low_grads[3].dtype == jnp.float32  # The bias keeps its dtype.
  np.testing.assert_allclose(low, full, rtol=2e-2)
  for a, b in zip(low_grads, full_grads):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    # bfloat16 keeps 8 bits: within a few percent of float32, direction kept.
    assert np.linalg.norm(a - b) < 0.03 * np.linalg.norm(b)


def _pair(attention, impl="einsum"):
  kwargs = dict(vocab_size=13, num_layers=2, d_model=32, num_heads=4,
                mlp_dim=64, max_len=16, attention=attention,
                attention_impl=impl)
  return (transformer.TransformerLanguageModel(**kwargs),
          transformer.TransformerLanguageModel(**kwargs, matmul_dtype=BF16))


def _assert_follows_float32(full, low, tokens):
  """`low` (bfloat16 matmuls) against `full` (float32) on the same parameters:
  the same parameter tree, float32 logits within 0.05, the loss within 1%,
  float32 gradients within 5% in norm. Returns (params, low's logits)."""
  params = full.init(jax.random.PRNGKey(1), tokens)["params"]
  # The same parameters: checkpoints move between the two.
  assert jax.tree.structure(params) == jax.tree.structure(
      low.init(jax.random.PRNGKey(1), tokens)["params"])

  def loss(model, p):
    logits = model.apply({"params": p}, tokens)[0]
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]), logits

  (loss_full, logits_full), grads_full = jax.jit(jax.value_and_grad(
      lambda p: loss(full, p), has_aux=True))(params)
  (loss_low, logits_low), grads_low = jax.jit(jax.value_and_grad(
      lambda p: loss(low, p), has_aux=True))(params)
  assert logits_low.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads_low))
  np.testing.assert_allclose(logits_low, logits_full, atol=0.05)
  np.testing.assert_allclose(loss_low, loss_full, rtol=1e-2)
  assert not np.array_equal(logits_low, logits_full)  # bfloat16 really ran.
  flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
  assert np.linalg.norm(flat(grads_low) - flat(grads_full)) < 0.05 * np.linalg.norm(
      flat(grads_full))
  return params, logits_low


@pytest.mark.parametrize("attention,impl", [("absolute", "einsum"),
                                            ("relative", "einsum"),
                                            ("relative", "fused")])
def test_transformer_with_bfloat16_matmuls_follows_float32(attention, impl,
                                                          fewer_optimizations):
  full, low = _pair(attention, impl)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 16), 0, 13)
  params, logits_low = _assert_follows_float32(full, low, tokens)

  # Still causal: a later token never moves an earlier logit.
  changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % 13)
  moved = jax.jit(lambda p: low.apply({"params": p}, changed)[0])(params)
  np.testing.assert_array_equal(moved[:, :9], logits_low[:, :9])
  assert not np.allclose(moved[:, 9], logits_low[:, 9])


def _close_in_norm(low, full, tolerance):
  """Every leaf of `low` within `tolerance` of `full` in relative L2 norm."""
  for a, b in zip(jax.tree.leaves(low), jax.tree.leaves(full)):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    assert np.linalg.norm(a - b) <= tolerance * np.linalg.norm(b), (
        np.linalg.norm(a - b) / np.linalg.norm(b))


def _recurrence_case(name, rng):
  """(function of float32 arrays and a matmul dtype, its float32 arguments)."""
  time, batch, hidden, features = 9, 3, 8, 5
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape) * 0.5, jnp.float32)
  if name == "lstm_layer":
    args = (normal(time, batch, features), normal(features, 4 * hidden),
            normal(4 * hidden), normal(hidden, 4 * hidden), normal(batch, hidden),
            normal(batch, hidden))
    return lambda dtype, *a: lstm.lstm_layer(*a, dtype), args
  if name == "lstm_recurrence":
    args = (normal(time, batch, 4 * hidden), normal(hidden, 4 * hidden),
            normal(batch, hidden), normal(batch, hidden))
    return lambda dtype, *a: lstm.lstm_recurrence(*a, dtype), args
  args = (normal(time, 2, batch, 3 * hidden), normal(2, hidden, 3 * hidden),
          normal(2, 3 * hidden), normal(2, batch, hidden))  # Two directions.
  return lambda dtype, *a: gru.gru_recurrence(*a, dtype), args


@pytest.mark.parametrize("name", ["lstm_layer", "lstm_recurrence", "gru_recurrence"])
def test_recurrences_with_bfloat16_matmuls_follow_float32(name):
  """The hand-written backward passes with bfloat16 matmuls: outputs and every
  gradient within 3% of the float32 pass, in float32, and not equal to it
  (the matmuls really ran in bfloat16)."""
  fn, args = _recurrence_case(name, np.random.default_rng(0))
  weights = [np.random.default_rng(1).normal(size=o.shape).astype(np.float32)
             for o in jax.eval_shape(lambda *a: fn(None, *a), *args)]

  def loss(dtype, *a):
    outs = fn(dtype, *a)
    return sum(jnp.sum(jnp.sin(o) * w) for o, w in zip(outs, weights)), outs

  grad = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(1, len(args) + 1)),
                                    has_aux=True), static_argnums=0)
  (_, outs_full), grads_full = grad(None, *args)
  (_, outs_low), grads_low = grad(BF16, *args)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves((outs_low, grads_low)))
  _close_in_norm(outs_low, outs_full, 0.03)
  _close_in_norm(grads_low, grads_full, 0.03)
  assert not np.array_equal(grads_low[0], grads_full[0])


def test_lstm_backward_loop_updates_its_buffer_in_place_with_bfloat16_matmuls():
  """The reverse loop writes each step's gradient over the saved gate
  derivatives [time, batch, 4 * hidden]. With bfloat16 matmuls, a second
  read of that buffer after the write made XLA copy all of it every step
  (2.3x slower steps on the LSTM benchmark): no such copy is compiled."""
  fn, args = _recurrence_case("lstm_layer", np.random.default_rng(0))
  buffer_shape = "f32[9,3,32]"  # time, batch, 4 * hidden
  for dtype in (None, BF16):
    hlo = jax.jit(jax.grad(lambda *a: jnp.sum(fn(dtype, *a)[0]),
                           argnums=(0, 1, 3))).lower(*args).compile().as_text()
    copies = [line for line in hlo.splitlines()
              if f"= {buffer_shape}" in line and " copy(" in line]
    assert not copies, (dtype, copies)


def _create(config):
  if config.model.name == "vae":
    return vae_task.create_model(config.model, 13, pad_id=0, start_id=1)
  return models.create_model(config.model, 13)


def _recurrent_pair(name):
  if name == "vae":
    config = load_config("vae", model__encoder_hidden_size=16,
                         model__decoder_hidden_size=16, model__latent_dim=8)
  else:
    config = load_config({"lstm": "lstm", "gru": "jsb_gru", "bigru": "bigru"}[name],
                         model__num_layers=2, model__hidden_size=16)
  full = _create(config)
  config.model.matmul_dtype = "bfloat16"
  return full, _create(config)


@pytest.mark.parametrize("name", ["lstm", "gru", "bigru", "vae"])
def test_recurrent_models_with_bfloat16_matmuls_follow_float32(name,
                                                              fewer_optimizations):
  full, low = _recurrent_pair(name)
  assert low.matmul_dtype == BF16 and full.matmul_dtype is None
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 24), 2, 13)
  if name == "gru":  # The piano-roll GRU reads multi-hot frames.
    tokens = jax.random.bernoulli(jax.random.PRNGKey(0), 0.2, (3, 24, 13)).astype(
        jnp.uint8)
  _assert_follows_float32(full, low, tokens)


def test_the_config_key_selects_the_matmul_dtype():
  for dtype, matmul_dtype, expected in [("float32", "", None),
                                        ("float32", "float32", None),
                                        ("float32", "bfloat16", BF16),
                                        ("bfloat16", "", BF16)]:
    for name in ("transformer", "lstm", "bigru", "jsb_gru", "vae"):
      config = load_config(name, model__dtype=dtype,
                           model__matmul_dtype=matmul_dtype)
      assert _create(config).matmul_dtype == expected
  config = load_config("transformer", model__matmul_dtype="float16")
  with pytest.raises(ValueError, match="config.model.matmul_dtype='float16'"):
    models.create_model(config.model, 13)


@pytest.mark.slow
@pytest.mark.usefixtures("fewer_optimizations")
def test_smoke_config_with_bfloat16_matmuls_trains_exports_and_samples(tmp_path):
  workdir, bundle = str(tmp_path / "run"), str(tmp_path / "export")
  config = load_config("transformer", num_train_steps=30, log_every_steps=10,
                       eval_every_steps=30, num_eval_batches=1,
                       checkpoint_every_steps=30, sample_every_steps=0,
                       model__matmul_dtype="bfloat16")
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "train_log.jsonl")) as f:
    losses = [json.loads(line)["train/loss"] for line in f
              if "train/loss" in line]
  assert len(losses) >= 3 and all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.5  # It learns.
  export_lib.export(workdir, bundle)
  paths = sample_lib.sample(bundle, str(tmp_path / "samples"), num_samples=2,
                            length=32, seed=1)
  assert len(paths) == 2
  for path in paths:
    note_seq.midi_file_to_note_sequence(path)  # Parses as MIDI.
