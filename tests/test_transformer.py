"""Tests of the Transformer language model: shapes, causality, relative
attention against a naive reference, cached decoding, limits, and the smoke
config through train -> export -> sample."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import note_seq
import numpy as np
import pytest

from musegen_jax import flops as flops_lib
from musegen_jax import export as export_lib
from musegen_jax import models
from musegen_jax import errors
from musegen_jax import sample as sample_lib
from musegen_jax import train
from musegen_jax.models import transformer
from musegen_jax.tasks import lm

from conftest import load_config

VOCAB, LAYERS, D_MODEL, HEADS, MLP, MAX_LEN = 13, 2, 16, 4, 32, 12
KINDS = ("absolute", "relative")

# Tiny shapes: compile time dominates.
pytestmark = pytest.mark.usefixtures("fewer_optimizations")


def _model(attention="relative", position_encoding="learned", dropout_rate=0.0,
           max_len=MAX_LEN, attention_window=0):
  return transformer.TransformerLanguageModel(
      vocab_size=VOCAB, num_layers=LAYERS, d_model=D_MODEL, num_heads=HEADS,
      mlp_dim=MLP, max_len=max_len, dropout_rate=dropout_rate,
      attention=attention, position_encoding=position_encoding,
      attention_window=attention_window)


def _tokens(batch=2, length=9, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, VOCAB)


def _params(model, seed=0):
  init = jax.jit(lambda rng: nn.unbox(model.init(rng, _tokens())["params"]))
  return init(jax.random.PRNGKey(seed))


def _apply(model, params, tokens, carry=None):
  return jax.jit(lambda p, t, c: model.apply({"params": p}, t, carry=c))(
      params, tokens, carry)


def test_output_shapes_and_carry():
  model = _model()
  tokens = _tokens(batch=3, length=7)
  logits, carry = _apply(model, _params(model), tokens)
  assert logits.shape == (3, 7, VOCAB) and logits.dtype == jnp.float32
  assert int(carry["pos"]) == 7
  assert len(carry["layers"]) == LAYERS
  for layer in carry["layers"]:
    assert layer["k"].shape == layer["v"].shape == (3, HEADS, MAX_LEN,
                                                    D_MODEL // HEADS)
  empty = model.initial_carry(3)
  assert jax.tree.structure(empty) == jax.tree.structure(carry)


def test_variables_carry_logical_axis_names():
  boxed = jax.jit(lambda rng: _model().init(rng, _tokens())["params"])(
      jax.random.PRNGKey(0))
  attention = boxed["block_0"]["attention"]
  assert attention["qkv_kernel"].names == ("embed", None, "heads", "head_dim")
  assert attention["rel_embedding"].names == ("heads", None, "head_dim")
  assert boxed["token_embedding"].names == ("vocab", "embed")
  assert boxed["block_1"]["mlp"]["wi"].names == ("embed", "mlp")
  shapes = jax.tree.map(jnp.shape, nn.unbox(boxed))
  assert shapes["block_0"]["attention"]["qkv_kernel"] == (D_MODEL, 3, HEADS, 4)
  assert shapes["block_0"]["attention"]["rel_embedding"] == (HEADS, MAX_LEN, 4)
  assert shapes["head_kernel"] == (D_MODEL, VOCAB)  # Untied from the embedding.
  assert shapes["position_embedding"] == (MAX_LEN, D_MODEL)
  absolute = jax.eval_shape(lambda: _params(_model("absolute", "sinusoidal")))
  assert "rel_embedding" not in absolute["block_0"]["attention"]
  assert "position_embedding" not in absolute
  # Boxed parameters apply as they are, too.
  np.testing.assert_allclose(_apply(_model(), boxed, _tokens())[0],
                             _apply(_model(), nn.unbox(boxed), _tokens())[0],
                             rtol=1e-6)


@pytest.mark.parametrize("attention", KINDS)
def test_changing_a_future_token_never_changes_an_earlier_logit(attention):
  model = _model(attention, "learned")
  params = _params(model)
  tokens = _tokens(batch=1, length=10)
  base, _ = _apply(model, params, tokens)
  for t in (0, 4, 9):
    changed = tokens.at[0, t].set((tokens[0, t] + 1) % VOCAB)
    logits, _ = _apply(model, params, changed)
    np.testing.assert_array_equal(np.asarray(logits[:, :t]),
                                  np.asarray(base[:, :t]))
    assert not np.allclose(logits[:, t], base[:, t])


@pytest.mark.parametrize("attention", KINDS)
def test_a_local_window_limits_what_each_logit_sees(attention):
  # Each of the LAYERS layers looks back window - 1 positions, so the logit
  # at t depends on tokens t - LAYERS * (window - 1) .. t and on no others.
  window = 3
  reach = LAYERS * (window - 1)
  model = _model(attention, "none", attention_window=window)
  params = _params(model)
  tokens = _tokens(batch=1, length=MAX_LEN)
  base, _ = _apply(model, params, tokens)
  for s in (0, 3):
    changed = tokens.at[0, s].set((tokens[0, s] + 1) % VOCAB)
    logits, _ = _apply(model, params, changed)
    moved = ~np.isclose(np.asarray(logits[0]), np.asarray(base[0]),
                        rtol=0, atol=1e-6).all(-1)
    np.testing.assert_array_equal(
        np.flatnonzero(moved), np.arange(s, min(s + reach + 1, MAX_LEN)))
  with pytest.raises(ValueError, match="attention_window=-1"):
    _apply(_model(attention, attention_window=-1), params, tokens)


def test_skew_equals_a_gather_of_relative_distances():
  rng = np.random.default_rng(0)
  for queries, keys, offset in ((5, 5, 0), (3, 8, 2), (1, 8, 7), (4, 8, 0)):
    rel = rng.normal(size=(2, queries, keys)).astype(np.float32)
    for off in (offset, jnp.int32(offset)):
      out = np.asarray(transformer.skew(jnp.asarray(rel), off))
      for t in range(queries):
        for j in range(offset + t + 1):  # The causal entries.
          assert out[0, t, j] == rel[0, t, j - (offset + t) + keys - 1]
          assert out[1, t, j] == rel[1, t, j - (offset + t) + keys - 1]


def _naive_relative_attention(params, x, cache_x, offset, max_len):
  """softmax((q k + q E_r[distance]) / sqrt(d)) v with explicit loops.

  `cache_x` [batch, offset, embed] are the (normalized) inputs of the earlier
  positions, x those of positions offset, offset + 1, ...
  """
  p = jax.tree.map(np.asarray, params)
  xs = np.concatenate([cache_x, x], 1).astype(np.float64)
  qkv = np.einsum("btd,dkhe->kbthe", xs, p["qkv_kernel"]) + p["qkv_bias"][:, None, None]
  q, k, v = qkv
  batch, total, heads, head_dim = q.shape
  out = np.zeros((batch, x.shape[1], heads, head_dim))
  for b in range(batch):
    for h in range(heads):
      for i in range(offset, total):
        logits = np.full(total, -np.inf)
        for j in range(i + 1):
          e = p["rel_embedding"][h, max_len - 1 + j - i]
          logits[j] = (q[b, i, h] @ k[b, j, h] + q[b, i, h] @ e) / np.sqrt(head_dim)
        w = np.exp(logits - logits.max())
        out[b, i - offset, h] = (w / w.sum()) @ v[b, :, h]
  return np.einsum("bthe,hed->btd", out, p["out_kernel"]) + p["out_bias"]


def test_relative_attention_equals_a_naive_reference():
  layer = transformer.SelfAttention(num_heads=2, max_len=MAX_LEN,
                                    attention="relative")
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 8))
  params = nn.unbox(layer.init(jax.random.PRNGKey(2), x)["params"])
  full, cache = layer.apply({"params": params}, x)
  np.testing.assert_allclose(
      full, _naive_relative_attention(params, x, x[:, :0], 0, MAX_LEN),
      rtol=1e-4, atol=1e-5)
  # Through the cache: 4 positions first, then 2 more at offset 4.
  _, cache = layer.apply({"params": params}, x[:, :4])
  step, _ = layer.apply({"params": params}, x[:, 4:], cache, jnp.int32(4))
  np.testing.assert_allclose(
      step, _naive_relative_attention(params, x[:, 4:], x[:, :4], 4, MAX_LEN),
      rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention,position_encoding,window", [
    ("absolute", "learned", 0), ("absolute", "sinusoidal", 0),
    ("relative", "none", 0), ("relative", "sinusoidal", 3)])
def test_cached_decoding_equals_full_recompute(attention, position_encoding,
                                               window):
  model = _model(attention, position_encoding, attention_window=window)
  params = _params(model)
  tokens = _tokens(batch=2, length=MAX_LEN)
  step_fn = jax.jit(lambda c, t: model.apply({"params": params}, t, carry=c))
  full = jax.jit(lambda t: model.apply({"params": params}, t))
  # Prime with 5 tokens, then one token at a time up to max_len, each step
  # against a fresh pass over the whole prefix.
  logits, carry = full(tokens[:, :5])
  np.testing.assert_allclose(logits, full(tokens)[0][:, :5], rtol=1e-5,
                             atol=1e-5)
  for t in range(5, MAX_LEN):
    logits, carry = step_fn(carry, tokens[:, t:t + 1])
    assert int(carry["pos"]) == t + 1
    np.testing.assert_allclose(logits[:, 0], full(tokens[:, :t + 1])[0][:, t],
                               rtol=1e-5, atol=1e-5, err_msg=f"step {t}")
  # Several tokens at once after a carry, and from an empty carry.
  _, carry = full(tokens[:, :5])
  logits, _ = step_fn(carry, tokens[:, 5:9])
  np.testing.assert_allclose(logits, full(tokens[:, :9])[0][:, 5:9],
                             rtol=1e-5, atol=1e-5)
  logits, _ = step_fn(model.initial_carry(2), tokens[:, :6])
  np.testing.assert_allclose(logits, full(tokens[:, :6])[0], rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("attention", ["absolute", "relative"])
def test_a_cache_shorter_than_max_len_gives_the_same_logits(attention):
  model = _model(attention, "learned")
  params = _params(model)
  tokens = _tokens(batch=2, length=10)
  full = _apply(model, params, tokens)[0]
  logits, carry = jax.jit(lambda p, t: model.apply({"params": p}, t, cache_len=10))(
      params, tokens[:, :4])
  assert carry["layers"][0]["k"].shape[2] == 10
  for t in range(4, 10):
    step, carry = _apply(model, params, tokens[:, t:t + 1], carry)
    np.testing.assert_allclose(step[:, 0], full[:, t], rtol=1e-5, atol=1e-5)
  # Eager calls: the cache position is a concrete number, checked at once.
  with pytest.raises(ValueError, match="runs past the cache of 10 positions"):
    model.apply({"params": params}, tokens[:, :1], carry=carry)
  with pytest.raises(ValueError, match="cache_len=3 must be between"):
    model.apply({"params": params}, tokens[:, :4], cache_len=3)


def test_sampling_loop_runs_with_the_cache():
  model = _model("relative", "sinusoidal")
  params = _params(model)
  out = lm.sample_tokens(model, params, jax.random.PRNGKey(0), _tokens(2, 3),
                         length=MAX_LEN - 3, temperature=1.0, top_k=0,
                         top_p=0.9, eos_id=-1, pad_id=0)
  assert out.shape == (2, MAX_LEN - 3)
  assert np.all((np.asarray(out) >= 0) & (np.asarray(out) < VOCAB))


def test_longer_than_max_len_fails_naming_max_len():
  model = _model()
  params = _params(model)
  with pytest.raises(ValueError, match="max_len=12"):
    model.apply({"params": params}, _tokens(length=MAX_LEN + 1))
  _, carry = _apply(model, params, _tokens(length=MAX_LEN - 1))
  with pytest.raises(ValueError, match="max_len=12"):
    model.apply({"params": params}, _tokens(length=2), carry=carry)
  # A traced position can't be checked while tracing: the logits say it.
  logits, _ = _apply(model, params, _tokens(length=2), carry)
  assert np.all(np.isnan(logits))
  logits, _ = _apply(model, params, _tokens(length=1), carry)
  assert np.all(np.isfinite(logits))


def test_dropout_only_in_training():
  model = _model(dropout_rate=0.5)
  params = _params(model)
  tokens = _tokens()
  train = jax.jit(lambda rng: model.apply({"params": params}, tokens, train=True,
                                          rngs={"dropout": rng})[0])
  a, b = train(jax.random.PRNGKey(1)), train(jax.random.PRNGKey(2))
  c, _ = _apply(model, params, tokens)
  assert not np.allclose(a, b)
  np.testing.assert_allclose(c, _apply(_model(), params, tokens)[0])


def test_create_model_and_flops():
  config = load_config("transformer")
  model = models.create_model(config.model, VOCAB)
  assert isinstance(model, transformer.TransformerLanguageModel)
  assert (model.d_model, model.num_heads, model.attention) == (
      config.model.d_model, config.model.num_heads, config.model.attention)
  kwargs = dict(vocab_size=390, d_model=256, num_layers=4, mlp_dim=1024,
                batch_size=8, seq_len=256)
  absolute = flops_lib.transformer_train_flops(**kwargs)
  # Per token and layer: QKV + out + MLP = 2 * 256 * (4 * 256 + 2 * 1024);
  # attention 2 * 2 * 256 * 256; head 2 * 256 * 390; fwd + bwd = 3x.
  tokens = 8 * 256
  expected = 3 * tokens * (4 * (2 * 256 * 3072 + 4 * 256 * 256) + 2 * 256 * 390)
  assert absolute == expected
  assert flops_lib.transformer_train_flops(**kwargs, attention="relative") == (
      expected + 3 * 4 * 2 * tokens * 256 * 256)


@pytest.mark.slow
def test_smoke_config_trains_exports_and_samples_midi(tmp_path):
  workdir, bundle = str(tmp_path / "run"), str(tmp_path / "export")
  config = load_config("transformer", num_train_steps=6, log_every_steps=2,
                       eval_every_steps=6, num_eval_batches=1,
                       checkpoint_every_steps=6, sample_every_steps=0)
  train.train_and_evaluate(config, workdir)
  export_lib.export(workdir, bundle)
  paths = sample_lib.sample(bundle, str(tmp_path / "samples"), num_samples=2,
                            length=32, seed=1, top_p=0.9)
  assert len(paths) == 2
  for path in paths:
    assert os.path.exists(path)
    note_seq.midi_file_to_note_sequence(path)  # Parses as MIDI.
  # Without --length: what the smoke model's max_len (512) leaves after EOS,
  # not the usual 1024; too long a --length is one line naming the most.
  assert len(sample_lib.sample(bundle, str(tmp_path / "default"),
                               num_samples=1, seed=1)) == 1
  with pytest.raises(errors.UserError, match=r"--length=600: .*max_len=512 .*"
                     r"allowed: --length up to 511"):
    sample_lib.sample(bundle, str(tmp_path / "long"), num_samples=1, length=600)
  assert not os.path.exists(tmp_path / "long")


def test_lengths_past_max_len_fail_before_compile_naming_the_key():
  from musegen_jax import tasks
  from musegen_jax import train
  from musegen_jax.data import representations
  with pytest.raises(ValueError, match=r"config.data.seq_len=600 .*max_len=512"):
    train.check_config(load_config("transformer", data__seq_len=600))
  with pytest.raises(ValueError, match=r"config.sample.length=600 .*max_len=512"):
    train.check_config(load_config("transformer", sample__length=600))
  config = load_config("transformer")
  task = tasks.create_task(config, representations.get_representation("performance"))
  with pytest.raises(ValueError, match="needs 513 positions; the model has max_len=512"):
    task.sample(None, jax.random.PRNGKey(0), np.ones((1, 3), np.int32), length=510)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["absolute", "relative"])
def test_einsum_and_fused_attention_train_the_same(attention):
  tokens = _tokens(batch=2, length=9)
  grads = {}
  for impl in ("einsum", "fused"):
    model = transformer.TransformerLanguageModel(
        vocab_size=VOCAB, num_layers=2, d_model=D_MODEL, num_heads=HEADS,
        mlp_dim=32, max_len=MAX_LEN, attention=attention, attention_impl=impl)
    params = model.init(jax.random.PRNGKey(0), tokens)["params"]
    grads[impl] = jax.grad(lambda p: jnp.sum(
        model.apply({"params": p}, tokens)[0] ** 2))(params)
  for a, b in zip(jax.tree.leaves(grads["einsum"]), jax.tree.leaves(grads["fused"])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
