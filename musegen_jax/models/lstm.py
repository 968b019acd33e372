"""Stacked LSTM language model.

Each layer's recurrence is `kernels.recurrence.lstm_layer` (or
`lstm_recurrence` after a projected-table lookup): the input projection of
all time steps as one large matmul, the recurrent matmul inside the time
loop, and a hand-written backward pass. Activations stay time-major
([time, batch, features]) from the embedding lookup to the head, so no
layer transposes its input or output. Dropout between layers is
`layers.Dropout` (hashed random words compared as integers).

With `matmul_dtype` (bfloat16) every matmul takes its operands in that dtype
and sums in float32 (forward and backward, row-major operands; see
`kernels.matmul`); the gates, states and parameters stay in `dtype`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from musegen_jax.kernels.matmul import project
from musegen_jax.kernels.recurrence import lstm_layer, lstm_recurrence
from musegen_jax.models import layers
from musegen_jax.models.layers import Dropout

Array = jax.Array
# Per-layer recurrent state: (h, c), each [batch, hidden].
Carry = tuple[Array, Array]


class LSTMLayer(nn.Module):
  """One LSTM layer over a time-major sequence.

  Parameters carry logical axis names: w_ih (input_name, "gates"), bias
  ("gates",), w_hh ("hidden", "gates"), where `input_name` is "embed" for
  the first layer and "hidden" above it.
  """

  hidden_size: int
  dtype: Any = jnp.float32
  input_name: str = "hidden"
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, carry: Carry | None = None, *,
               tokens: Array | None = None) -> tuple[Array, Carry]:
    """Runs the layer.

    Args:
      x: [time, batch, features] inputs; or, with `tokens`, an embedding
        table [vocab, features] to look `tokens` up in.
      carry: (h, c), each [batch, hidden], or None for zeros.
      tokens: optional [time, batch] int ids into the table `x`.

    Returns:
      ([time, batch, hidden] outputs, final (h, c)).
    """
    w_ih = self.param("w_ih", layers.logical(nn.initializers.lecun_normal(),
                                             self.input_name, "gates"),
                      (x.shape[-1], 4 * self.hidden_size))
    bias = self.param("bias", layers.logical(_forget_bias_init, "gates"),
                      (4 * self.hidden_size,))
    w_hh = self.param("w_hh", layers.logical(
        nn.initializers.orthogonal(column_axis=-1), "hidden", "gates"),
                      (self.hidden_size, 4 * self.hidden_size))
    batch = x.shape[1] if tokens is None else tokens.shape[1]
    if carry is None:
      zeros = jnp.zeros((batch, self.hidden_size), self.dtype)
      carry = (zeros, zeros)
    h0, c0 = carry
    cast = lambda a: a.astype(self.dtype)
    if tokens is None:
      hs, h_t, c_t = lstm_layer(cast(x), cast(w_ih), cast(bias), cast(w_hh),
                                cast(h0), cast(c0), self.matmul_dtype)
    else:
      # Project the table once, then gather: the same function as projecting
      # every looked-up row, with vocab instead of time * batch rows to
      # multiply (and the gradient a scatter-add into vocab rows).
      table = project(x, w_ih, self.dtype, self.matmul_dtype) + cast(bias)
      hs, h_t, c_t = lstm_recurrence(jnp.take(table, tokens, axis=0),
                                     cast(w_hh), cast(h0), cast(c0),
                                     self.matmul_dtype)
    return hs, (h_t, c_t)


def _forget_bias_init(rng, shape, dtype=jnp.float32):
  """Zero biases except a forget-gate bias of 1 (gate order i, f, g, o)."""
  del rng
  hidden = shape[0] // 4
  return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)


class LSTMLanguageModel(nn.Module):
  """Embedding -> stacked LSTM, dropout between layers -> vocabulary logits.

  Logical axis names: embedding ("vocab", "embed"), head kernel ("hidden",
  "vocab") and bias ("vocab",); the layers' as `LSTMLayer` says.

  The first layer's input projection is applied to the embedding table
  rather than to each looked-up embedding when the batch holds more tokens
  than the vocabulary has rows (training): fewer FLOPs, same function.
  """

  vocab_size: int
  embed_dim: int
  hidden_size: int
  num_layers: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, tokens: Array, *, train: bool = False,
               carry: tuple[Carry, ...] | None = None
               ) -> tuple[Array, tuple[Carry, ...]]:
    """Runs the model.

    Args:
      tokens: [batch, time] int ids; or multi-hot frames [batch, time,
        features] (float or uint8), which the first layer reads as they are
        (its input projection takes the embedding's place: no table).
      train: enables dropout (needs a "dropout" rng).
      carry: one (h, c) per layer, or None.

    Returns:
      (logits [batch, time, vocab] float32, the new carry per layer).
    """
    embed = layers.token_embedding(self.vocab_size, self.embed_dim)
    multihot = tokens.ndim == 3
    # Time-major throughout (transposing int ids is free).
    tokens = jnp.swapaxes(tokens, 0, 1).astype(self.dtype) if multihot else tokens.T
    new_carry = []
    x = None
    # With remat, a layer's activations (its gates over all steps) are
    # recomputed in the backward pass instead of stored.
    layer_cls = nn.remat(LSTMLayer) if self.remat else LSTMLayer
    for layer in range(self.num_layers):
      lstm = layer_cls(self.hidden_size, self.dtype,
                       input_name="embed" if layer == 0 else "hidden",
                       matmul_dtype=self.matmul_dtype, name=f"lstm_{layer}")
      layer_carry = None if carry is None else carry[layer]
      if layer > 0:
        # Dropout between layers, as torch.nn.LSTM(dropout=...) does.
        x, layer_carry = lstm(Dropout(self.dropout_rate)(x, deterministic=not train),
                              layer_carry)
      elif multihot:
        x, layer_carry = lstm(tokens, layer_carry)
      elif tokens.size > self.vocab_size:
        x, layer_carry = lstm(embed.embedding, layer_carry, tokens=tokens)
      else:  # Few tokens (sampling): cheaper to look up, then project.
        x, layer_carry = lstm(embed(tokens), layer_carry)
      new_carry.append(layer_carry)
    logits = layers.dense(self.vocab_size, "hidden", "vocab", self.dtype, "head",
                          matmul_dtype=self.matmul_dtype)(x)
    return jnp.swapaxes(logits, 0, 1).astype(jnp.float32), tuple(new_carry)

  def initial_carry(self, batch_size: int) -> tuple[Carry, ...]:
    zeros = jnp.zeros((batch_size, self.hidden_size), self.dtype)
    return tuple((zeros, zeros) for _ in range(self.num_layers))
