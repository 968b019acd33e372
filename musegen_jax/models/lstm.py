"""Stacked LSTM language model.

Each layer computes its input-to-hidden projection for all time steps at once
(one large matmul); only the recurrent matmul runs inside the time loop. The
recurrence has a hand-written backward pass, as fused RNN kernels do: the
reverse scan carries only the recurrent gradient, and the recurrent weight
gradient is one matmul over all time steps afterwards.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
# Per-layer recurrent state: (h, c), each [batch, hidden].
Carry = tuple[Array, Array]


def _gates(pre: Array) -> tuple[Array, Array, Array, Array]:
  i, f, g, o = jnp.split(pre, 4, axis=-1)
  return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def _forward(xproj: Array, w_hh: Array, h0: Array, c0: Array):
  """Runs the recurrence; returns outputs, final carry and backward residuals."""

  def step(carry, x_t):
    h, c = carry
    i, f, g, o = _gates(x_t + (h @ w_hh).astype(x_t.dtype))
    c_new = f * c + i * g
    tanh_c = jnp.tanh(c_new)
    h_new = (o * tanh_c).astype(h.dtype)
    return (h_new, c_new), (h_new, c_new, jnp.concatenate([i, f, g, o], -1))

  (h_t, c_t), (hs, cs, acts) = jax.lax.scan(step, (h0, c0), xproj)
  return hs, h_t, c_t, (cs, acts)


@jax.custom_vjp
def lstm_recurrence(xproj: Array, w_hh: Array, h0: Array, c0: Array):
  """LSTM recurrence over time-major pre-activations.

  Args:
    xproj: [time, batch, 4 * hidden] input projections (bias included), gate
      order i, f, g, o.
    w_hh: [hidden, 4 * hidden] recurrent weights.
    h0: [batch, hidden] initial hidden state.
    c0: [batch, hidden] initial cell state.

  Returns:
    (hs [time, batch, hidden], h_T [batch, hidden], c_T [batch, hidden]).
  """
  hs, h_t, c_t, _ = _forward(xproj, w_hh, h0, c0)
  return hs, h_t, c_t


def _recurrence_fwd(xproj, w_hh, h0, c0):
  hs, h_t, c_t, (cs, acts) = _forward(xproj, w_hh, h0, c0)
  return (hs, h_t, c_t), (w_hh, h0, c0, hs, cs, acts)


def _recurrence_bwd(res, grads):
  w_hh, h0, c0, hs, cs, acts = res
  d_hs, d_ht, d_ct = grads
  c_prev = jnp.concatenate([c0[None], cs[:-1]], 0)
  w_t = w_hh.T

  def step(carry, inputs):
    dh_next, dc_next = carry
    dh_out, c, cp, act = inputs
    i, f, g, o = jnp.split(act, 4, axis=-1)
    dh = dh_out + dh_next
    tanh_c = jnp.tanh(c)
    dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
    d_pre = jnp.concatenate([
        dc * g * i * (1.0 - i),
        dc * cp * f * (1.0 - f),
        dc * i * (1.0 - g * g),
        dh * tanh_c * o * (1.0 - o),
    ], -1)
    dh_prev = (d_pre @ w_t).astype(dh.dtype)
    return (dh_prev, dc * f), d_pre

  (dh0, dc0), d_pre = jax.lax.scan(
      step, (d_ht, d_ct), (d_hs, cs, c_prev, acts), reverse=True)
  h_prev = jnp.concatenate([h0[None], hs[:-1]], 0)
  hidden = h0.shape[-1]
  d_w = jnp.dot(h_prev.reshape(-1, hidden).T,
                d_pre.reshape(-1, 4 * hidden).astype(h_prev.dtype),
                preferred_element_type=w_hh.dtype)
  return d_pre.astype(acts.dtype), d_w, dh0, dc0


lstm_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


class LSTMLayer(nn.Module):
  """One LSTM layer over a batch-major sequence."""

  hidden_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, carry: Carry | None = None) -> tuple[Array, Carry]:
    """Args: x [batch, time, features]; carry (h, c) or None for zeros.

    Returns: ([batch, time, hidden] outputs, final (h, c)).
    """
    batch = x.shape[0]
    # One matmul for the input projection of every time step, produced
    # time-major so the scan reads contiguous slices.
    w_ih = self.param("w_ih", nn.initializers.lecun_normal(),
                      (x.shape[-1], 4 * self.hidden_size))
    bias = self.param("bias", _forget_bias_init, (4 * self.hidden_size,))
    w_hh = self.param("w_hh", nn.initializers.orthogonal(column_axis=-1),
                      (self.hidden_size, 4 * self.hidden_size))
    xproj = jnp.einsum("btf,fg->tbg", x.astype(self.dtype),
                       w_ih.astype(self.dtype)) + bias.astype(self.dtype)
    if carry is None:
      zeros = jnp.zeros((batch, self.hidden_size), self.dtype)
      carry = (zeros, zeros)
    h0, c0 = carry
    hs, h_t, c_t = lstm_recurrence(xproj, w_hh.astype(self.dtype),
                                   h0.astype(self.dtype), c0.astype(self.dtype))
    return jnp.swapaxes(hs, 0, 1), (h_t, c_t)


def _forget_bias_init(rng, shape, dtype=jnp.float32):
  """Zero biases except a forget-gate bias of 1 (gate order i, f, g, o)."""
  del rng
  hidden = shape[0] // 4
  return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)


def train_matmul_flops(*, vocab_size: int, embed_dim: int, hidden_size: int,
                       num_layers: int, batch_size: int, seq_len: int) -> int:
  """Matmul FLOPs of one training step (forward + backward = 3x forward).

  Counts the input projections, the recurrent matmuls and the output head
  (2 FLOPs per multiply-add); element-wise work, the embedding gather and the
  optimizer are left out.
  """
  tokens = batch_size * seq_len
  gates = 4 * hidden_size
  forward = 0
  for layer in range(num_layers):
    features = embed_dim if layer == 0 else hidden_size
    forward += 2 * tokens * (features + hidden_size) * gates
  forward += 2 * tokens * hidden_size * vocab_size
  return 3 * forward


class LSTMLanguageModel(nn.Module):
  """Embedding -> stacked LSTM with dropout -> vocabulary logits."""

  vocab_size: int
  embed_dim: int
  hidden_size: int
  num_layers: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, *, train: bool = False,
               carry: tuple[Carry, ...] | None = None
               ) -> tuple[Array, tuple[Carry, ...]]:
    """Args: tokens [batch, time] int; carry: one (h, c) per layer, or None.

    Returns: (logits [batch, time, vocab] float32, the new carry per layer).
    """
    x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)
    new_carry = []
    for layer in range(self.num_layers):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x, layer_carry = LSTMLayer(self.hidden_size, self.dtype,
                                 name=f"lstm_{layer}")(
                                     x, None if carry is None else carry[layer])
      new_carry.append(layer_carry)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.vocab_size, dtype=self.dtype, name="head")(x)
    return logits.astype(jnp.float32), tuple(new_carry)

  def initial_carry(self, batch_size: int) -> tuple[Carry, ...]:
    zeros = jnp.zeros((batch_size, self.hidden_size), self.dtype)
    return tuple((zeros, zeros) for _ in range(self.num_layers))
