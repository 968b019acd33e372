"""Matmuls in bfloat16 with float32 sums (`model.matmul_dtype="bfloat16"`):
the Transformer, the LSTM, the GRUs and the VAE with bfloat16 matmuls
against their float32 selves, and the smoke configs' train -> export ->
sample. The kernels' own bfloat16 tests (the matmul, the recurrences, the
blocked attention) are in tests/test_kernels.py."""

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
from musegen_jax.models import transformer
from musegen_jax.tasks import vae as vae_task

from conftest import load_config

BF16 = jnp.bfloat16


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
