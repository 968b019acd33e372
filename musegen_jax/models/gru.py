"""GRU models: a causal stacked GRU language model and a bidirectional GRU.

- `GRULanguageModel`: embedding -> stacked unidirectional GRU -> logits at
  every position; carries its hidden states, so it samples token by token
  like the LSTM (`tasks/lm.py`, `tasks/pianoroll.py`).
- `BiGRUWindowModel`: the well-known next-token design over a window of
  tokens: embedding -> stacked bidirectional GRU -> the last layer's final
  states of both directions -> dense with LeakyReLU -> logits of the token
  after the window. Its carry is the window itself, so sampling slides the
  window inside the same compiled loop as every other token model.
- `BiGRUEncoder`: the stacked bidirectional GRU, returning every step's
  outputs and the final states; the VAE's encoder.

Gates follow PyTorch's `torch.nn.GRU` (order r, z, n; the reset gate scales
the recurrent part of n, bias included):

    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
    z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h

As for the LSTM, the input projection of all steps is one matmul outside the
time loop, and the recurrence is `kernels.recurrence.gru_recurrence` (a
hand-written backward pass). The two directions of a bidirectional layer
run in one loop (a direction axis: each step is one batched matmul).

With `matmul_dtype` (bfloat16) every matmul of a layer takes its operands in
that dtype and sums in float32: the input projection (through
`kernels.matmul.project`), the recurrent matmul of each step, and all
matmuls of the hand-written backward pass. The gates, states and parameters
stay in `dtype`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from musegen_jax.kernels.matmul import project
from musegen_jax.kernels.recurrence import gru_recurrence
from musegen_jax.models import layers
from musegen_jax.models.layers import Dropout

Array = jax.Array


def reverse_within_lengths(x: Array, lengths: Array | None) -> Array:
  """Reverses time-major `x` [time, batch, ...] within each sequence's length.

  Positions at or past a sequence's length stay where they are, so a
  backward-direction GRU reads a padded sequence's last real step first.
  With `lengths` None every sequence is whole and this is x[::-1].
  """
  if lengths is None:
    return x[::-1]
  time = x.shape[0]
  t = jnp.arange(time)[:, None]
  index = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=0)


class GRULayer(nn.Module):
  """One GRU layer (both directions when `bidirectional`), time-major.

  Parameters carry logical axis names: w_ih (directions, input_name,
  "gates"), b_ih and b_hh (directions, "gates"), w_hh (directions, "hidden",
  "gates"); the leading directions axis (1 or 2) is never sharded.
  """

  hidden_size: int
  bidirectional: bool = False
  dtype: Any = jnp.float32
  input_name: str = "hidden"
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, h0: Array | None = None, *,
               lengths: Array | None = None) -> tuple[Array, Array]:
    """Runs the layer.

    Args:
      x: [time, batch, features] inputs.
      h0: [directions, batch, hidden] initial states, or None for zeros.
      lengths: optional [batch] int lengths of padded sequences (the
        backward direction then starts at each sequence's last real step).

    Returns:
      (outputs [time, batch, directions * hidden], final states
       [directions, batch, hidden]). A backward direction's outputs are put
      back in input order; its final state is the one after reading the
      sequence's first step. With `lengths`, outputs past a sequence's
      length are not meaningful, and so are both final states (they have
      read the padding): take the forward direction's `outputs[length - 1]`
      and the backward direction's `outputs[0]` instead (`BiGRUEncoder`).
    """
    dirs = 2 if self.bidirectional else 1
    hidden = self.hidden_size
    gates = lambda init, *names: layers.logical(init, None, *names)
    w_ih = self.param("w_ih", gates(nn.initializers.lecun_normal(
        in_axis=-2, out_axis=-1, batch_axis=(0,)), self.input_name, "gates"),
                      (dirs, x.shape[-1], 3 * hidden))
    b_ih = self.param("b_ih", gates(nn.initializers.zeros_init(), "gates"),
                      (dirs, 3 * hidden))
    w_hh = self.param("w_hh", gates(nn.initializers.orthogonal(column_axis=-1),
                                    "hidden", "gates"),
                      (dirs, hidden, 3 * hidden))
    b_hh = self.param("b_hh", gates(nn.initializers.zeros_init(), "gates"),
                      (dirs, 3 * hidden))
    if h0 is None:
      h0 = jnp.zeros((dirs, x.shape[1], hidden), self.dtype)
    cast = lambda a: a.astype(self.dtype)
    # Projecting each step commutes with reversing time: one row-major
    # matmul projects for both directions, then the backward direction's
    # projections are reversed.
    kernel = jnp.concatenate([w_ih[d] for d in range(dirs)], -1)
    proj = project(x, kernel, self.dtype, self.matmul_dtype) + cast(
        b_ih).reshape(-1)
    parts = jnp.split(proj, dirs, -1)
    if dirs == 2:
      parts[1] = reverse_within_lengths(parts[1], lengths)
    xproj = jnp.stack(parts, 1)
    hs, h_t = gru_recurrence(xproj, cast(w_hh), cast(b_hh), cast(h0),
                             self.matmul_dtype)
    if dirs == 1:
      return hs[:, 0], h_t
    outputs = jnp.concatenate([hs[:, 0], reverse_within_lengths(hs[:, 1], lengths)],
                              -1)
    return outputs, h_t


class GRULanguageModel(nn.Module):
  """Embedding -> stacked causal GRU, dropout between layers -> logits.

  Called like the LSTM language model: on [batch, time] int tokens or
  [batch, time, features] multi-hot frames (read directly by the first
  layer), with a carry of one [1, batch, hidden] state per layer.
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
               carry: tuple[Array, ...] | None = None
               ) -> tuple[Array, tuple[Array, ...]]:
    multihot = tokens.ndim == 3
    if multihot:
      x = jnp.swapaxes(tokens, 0, 1).astype(self.dtype)
    else:
      x = layers.token_embedding(self.vocab_size, self.embed_dim)(tokens.T)
    layer_cls = nn.remat(GRULayer) if self.remat else GRULayer
    new_carry = []
    for layer in range(self.num_layers):
      if layer > 0:
        x = Dropout(self.dropout_rate)(x, deterministic=not train)
      x, h_t = layer_cls(self.hidden_size, dtype=self.dtype,
                         input_name="embed" if layer == 0 else "hidden",
                         matmul_dtype=self.matmul_dtype, name=f"gru_{layer}")(
                             x, None if carry is None else carry[layer])
      new_carry.append(h_t)
    logits = layers.dense(self.vocab_size, "hidden", "vocab", self.dtype, "head",
                          matmul_dtype=self.matmul_dtype)(x)
    return jnp.swapaxes(logits, 0, 1).astype(jnp.float32), tuple(new_carry)


class BiGRUEncoder(nn.Module):
  """Stacked bidirectional GRU over time-major inputs, dropout between layers.

  Returns (outputs [time, batch, 2 * hidden] of the last layer, its final
  states [batch, 2 * hidden]: the forward direction's state after each
  sequence's last real step and the backward direction's after its first).
  """

  hidden_size: int
  num_layers: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False,
               lengths: Array | None = None) -> tuple[Array, Array]:
    layer_cls = nn.remat(GRULayer) if self.remat else GRULayer
    for layer in range(self.num_layers):
      if layer > 0:
        x = Dropout(self.dropout_rate)(x, deterministic=not train)
      x, h_t = layer_cls(self.hidden_size, bidirectional=True, dtype=self.dtype,
                         input_name="embed" if layer == 0 else "hidden",
                         matmul_dtype=self.matmul_dtype,
                         name=f"bigru_{layer}")(x, lengths=lengths)
    if lengths is None:
      return x, jnp.concatenate([h_t[0], h_t[1]], -1)
    # The forward direction's state after each sequence's last real step;
    # the backward direction (reversed within the length) ends at step 0.
    last = jnp.clip(lengths - 1, 0, x.shape[0] - 1)
    forward_final = x[last, jnp.arange(x.shape[1]), :self.hidden_size]
    return x, jnp.concatenate([forward_final, x[0, :, self.hidden_size:]], -1)


class BiGRUWindowModel(nn.Module):
  """Next-token model over a window of `window` tokens (bidirectional GRU).

  Embedding -> `num_layers` bidirectional GRU layers -> the final states of
  both directions -> dense `dense_dim` with LeakyReLU -> vocabulary logits.
  `predicts_last_only`: the language-model task scores only the token after
  the window (`tasks/lm.py`).

  Called on [batch, time] tokens: the window is their last `window` tokens,
  left-padded with `pad_id` when fewer. With a carry (the previous window,
  [batch, window] int32) the tokens are appended to it first. Returns
  (logits [batch, 1, vocab] of the next token, the new window).
  """

  vocab_size: int
  embed_dim: int
  hidden_size: int
  num_layers: int
  window: int
  dense_dim: int = 256
  dropout_rate: float = 0.0
  pad_id: int = 0
  dtype: Any = jnp.float32
  remat: bool = False
  matmul_dtype: Any = None

  predicts_last_only = True

  @nn.compact
  def __call__(self, tokens: Array, *, train: bool = False,
               carry: Array | None = None) -> tuple[Array, Array]:
    if tokens.ndim != 2:
      raise ValueError("BiGRUWindowModel reads [batch, time] int tokens, got "
                       f"shape {tokens.shape}")
    if carry is not None:
      tokens = jnp.concatenate([carry, tokens.astype(carry.dtype)], 1)
    if tokens.shape[1] < self.window:
      tokens = jnp.pad(tokens, ((0, 0), (self.window - tokens.shape[1], 0)),
                       constant_values=self.pad_id)
    window = tokens[:, -self.window:].astype(jnp.int32)
    x = layers.token_embedding(self.vocab_size, self.embed_dim)(window.T)
    _, final = BiGRUEncoder(self.hidden_size, self.num_layers,
                            dropout_rate=self.dropout_rate, dtype=self.dtype,
                            remat=self.remat, matmul_dtype=self.matmul_dtype,
                            name="encoder")(
                                x.astype(self.dtype), train=train)
    final = Dropout(self.dropout_rate)(final, deterministic=not train)
    y = layers.dense(self.dense_dim, "hidden", "mlp", self.dtype, "dense")(final)
    y = nn.leaky_relu(y, 0.01)
    logits = layers.dense(self.vocab_size, "mlp", "vocab", self.dtype, "head")(y)
    return logits[:, None].astype(jnp.float32), window
