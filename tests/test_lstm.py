"""Tests of the LSTM language model: shapes, variables, gradients, carried state."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musegen_jax import flops as flops_lib
from musegen_jax.kernels import recurrence
from musegen_jax.models import lstm

VOCAB, EMBED, HIDDEN, LAYERS = 11, 6, 8, 2


def _model(dropout_rate=0.0):
  return lstm.LSTMLanguageModel(vocab_size=VOCAB, embed_dim=EMBED,
                                hidden_size=HIDDEN, num_layers=LAYERS,
                                dropout_rate=dropout_rate)


def _tokens(batch=3, length=7, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, VOCAB)

# Tiny shapes: compile time dominates.
pytestmark = pytest.mark.usefixtures("fewer_optimizations")


@pytest.fixture(scope="module")
def params():
  # Unboxed: the parameters' logical axis names are not what these tests check.
  return nn.unbox(_model().init(jax.random.PRNGKey(0), _tokens())["params"])


def test_output_shapes(params):
  tokens = _tokens(batch=3, length=7)
  logits, carry = _model().apply({"params": params}, tokens)
  assert logits.shape == (3, 7, VOCAB)
  assert logits.dtype == jnp.float32
  assert len(carry) == LAYERS
  for h, c in carry:
    assert h.shape == c.shape == (3, HIDDEN)


def test_variable_structure(params):
  shapes = jax.tree.map(jnp.shape, params)
  expected = {"embed": {"embedding": (VOCAB, EMBED)},
              "head": {"kernel": (HIDDEN, VOCAB), "bias": (VOCAB,)}}
  for layer in range(LAYERS):
    expected[f"lstm_{layer}"] = {
        "w_ih": (EMBED if layer == 0 else HIDDEN, 4 * HIDDEN),
        "bias": (4 * HIDDEN,),
        "w_hh": (HIDDEN, 4 * HIDDEN)}
  assert shapes == expected
  # Forget-gate bias 1, the other gates 0 (gate order i, f, g, o).
  np.testing.assert_array_equal(
      params["lstm_0"]["bias"],
      np.repeat(np.array([0.0, 1.0, 0.0, 0.0], np.float32), HIDDEN))


@pytest.mark.parametrize("length", [
    5,  # 10 tokens < VOCAB: embeddings looked up, then projected.
    9,  # 18 tokens > VOCAB: the first layer projects the table, then gathers.
])
def test_model_gradients_match_plain_autodiff(params, length):
  """The whole model against the same math written with the reference layer."""
  tokens = _tokens(batch=2, length=length, seed=1)

  def loss(p):
    logits, _ = _model().apply({"params": p}, tokens)
    return jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(tokens, VOCAB))

  def reference_loss(p):
    x = p["embed"]["embedding"][tokens.T]
    zeros = jnp.zeros((tokens.shape[0], HIDDEN))
    for layer in range(LAYERS):
      q = p[f"lstm_{layer}"]
      x, _, _ = recurrence.lstm_layer_reference(x, q["w_ih"], q["bias"],
                                                q["w_hh"], zeros, zeros)
    logits = jnp.swapaxes(x @ p["head"]["kernel"] + p["head"]["bias"], 0, 1)
    return jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(tokens, VOCAB))

  np.testing.assert_allclose(loss(params), reference_loss(params), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               jax.grad(loss)(params), jax.grad(reference_loss)(params))


def test_carrying_state_token_by_token_equals_full_sequence(params):
  model = _model()
  tokens = _tokens(batch=2, length=9, seed=2)
  full_logits, full_carry = model.apply({"params": params}, tokens)
  carry = model.initial_carry(2)
  apply = jax.jit(lambda p, x, carry: model.apply({"params": p}, x, carry=carry))
  step_logits = []
  for t in range(tokens.shape[1]):
    logits, carry = apply(params, tokens[:, t:t + 1], carry)
    step_logits.append(logits)
  np.testing.assert_allclose(jnp.concatenate(step_logits, 1), full_logits,
                             atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               carry, full_carry)
  # A prefix, then the rest from its carry.
  _, prefix_carry = model.apply({"params": params}, tokens[:, :4])
  rest_logits, _ = model.apply({"params": params}, tokens[:, 4:],
                               carry=prefix_carry)
  np.testing.assert_allclose(rest_logits, full_logits[:, 4:], atol=1e-5)


def test_dropout_only_in_training(params):
  model = _model(dropout_rate=0.5)
  tokens = _tokens()
  rngs = {"dropout": jax.random.PRNGKey(3)}
  eval_logits, _ = model.apply({"params": params}, tokens)
  np.testing.assert_allclose(eval_logits, _model().apply({"params": params}, tokens)[0])
  train_logits, _ = model.apply({"params": params}, tokens, train=True, rngs=rngs)
  assert not np.allclose(train_logits, eval_logits)
  again, _ = model.apply({"params": params}, tokens, train=True, rngs=rngs)
  np.testing.assert_array_equal(train_logits, again)


def test_lstm_train_flops():
  flops = flops_lib.lstm_train_flops(vocab_size=390, embed_dim=256, hidden_size=512,
                                  num_layers=3, batch_size=32, seq_len=128)
  tokens, gates = 32 * 128, 2048
  forward = 2 * tokens * ((256 + 512) * gates + 2 * (512 + 512) * gates + 512 * 390)
  assert flops == 3 * forward == 146_641_256_448
