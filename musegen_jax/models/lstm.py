"""Stacked LSTM language model.

Each layer computes its input-to-hidden projection for all time steps at once
(one large matmul); only the recurrent matmul runs inside the time loop. The
layer has a hand-written backward pass, as fused RNN kernels do: the forward
loop saves the gate derivatives it already has at hand, the reverse loop
carries only the recurrent gradient, and the input gradient and all weight
gradients are large matmuls over every time step afterwards.

What made it fast on a 2-core CPU (measurements in BUILD_NOTES.md):
- activations stay time-major ([time, batch, features]) from the embedding
  lookup to the head, so no layer transposes its input or output;
- one tanh evaluates all four gates (sigmoid(x) = (1 + tanh(x / 2)) / 2);
- the forward loop writes its residuals over the input projections and the
  backward loop its gradients over the residuals, in place: fewer fresh
  pages to fault in per step;
- dropout masks compare raw random bits instead of converting them to floats.

With `matmul_dtype` (bfloat16) every matmul takes its operands in that dtype
and sums in float32 (forward and backward, row-major operands; see
`layers.matmul`); the gates, states and parameters stay in `dtype`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from musegen_jax.models import layers
from musegen_jax.models.layers import Dropout

Array = jax.Array
# Per-layer recurrent state: (h, c), each [batch, hidden].
Carry = tuple[Array, Array]


def _gate_scale(hidden: int, dtype) -> Array:
  """0.5 for the sigmoid gates (i, f, o), 1 for the tanh gate (g).

  sigmoid(x) = (1 + tanh(x / 2)) / 2, so one tanh over all four gates
  evaluates every nonlinearity of a step in a single pass.
  """
  half = jnp.full((hidden,), 0.5, dtype)
  return jnp.concatenate([half, half, jnp.ones((hidden,), dtype), half])


def _gates(pre: Array, scale: Array) -> tuple[Array, Array, Array, Array]:
  """Gate activations (i, f, g, o) from pre-activations [batch, 4 * hidden]."""
  hidden = pre.shape[-1] // 4
  a = jnp.tanh(pre * scale)
  i = 0.5 * a[:, :hidden] + 0.5
  f = 0.5 * a[:, hidden:2 * hidden] + 0.5
  g = a[:, 2 * hidden:3 * hidden]
  o = 0.5 * a[:, 3 * hidden:] + 0.5
  return i, f, g, o


def _scan_forward(xproj, bias, w_hh, h0, c0, *, save: bool, matmul_dtype=None):
  """The forward loop; with `save`, also the backward loop's residuals.

  With dc the gradient of a step's new cell state and dh that of its new
  hidden state, the gradient of its pre-activations is [dc, dc, dc, dh] * m,
  where m = [g i(1-i), c_prev f(1-f), i(1-g^2), tanh(c) o(1-o)]; dc itself
  gains dh * p with p = o (1 - tanh(c)^2), and the previous cell's gradient
  is dc * f. Saving m, p and f leaves the backward loop one matmul and a few
  multiply-adds per step. m is written over xproj, step by step, in the
  loop-carried buffer (XLA updates it in place).

  Returns:
    ((h_T, c_T), hs), or with `save` ((h_T, c_T), (hs, m, p, f)).
  """
  scale = _gate_scale(h0.shape[-1], xproj.dtype)
  w_low = layers.operand(w_hh, matmul_dtype)

  def cell(h, c, x_t):
    i, f, g, o = _gates(
        x_t + bias + layers.dot(h, w_low, matmul_dtype, x_t.dtype), scale)
    c_new = f * c + i * g
    tanh_c = jnp.tanh(c_new)
    h_new = (o * tanh_c).astype(h.dtype)
    return i, f, g, o, c_new, tanh_c, h_new

  if not save:
    def step(carry, x_t):
      h, c = carry
      *_, c_new, _, h_new = cell(h, c, x_t)
      return (h_new, c_new), h_new
    return jax.lax.scan(step, (h0, c0), xproj)

  def step_save(carry, t):
    h, c, buf = carry
    x_t = jax.lax.dynamic_index_in_dim(buf, t, keepdims=False)
    i, f, g, o, c_new, tanh_c, h_new = cell(h, c, x_t)
    m = jnp.concatenate([g * i * (1.0 - i), c * f * (1.0 - f),
                         i * (1.0 - g * g), tanh_c * o * (1.0 - o)], -1)
    p = o * (1.0 - tanh_c * tanh_c)
    buf = jax.lax.dynamic_update_index_in_dim(buf, m, t, 0)
    return (h_new, c_new, buf), (h_new, p, f)

  (h_t, c_t, m), (hs, p, f) = jax.lax.scan(
      step_save, (h0, c0, xproj), jnp.arange(xproj.shape[0]))
  return (h_t, c_t), (hs, m, p, f)


def _scan_backward(w_hh, m, p, f, d_hs, d_ht, d_ct, matmul_dtype=None):
  """The reverse loop; returns (d_pre [time, batch, 4 * hidden], dh0, dc0).

  d_pre is written over m in the loop-carried buffer.
  """
  w_t = layers.operand(layers.swap_last_axes(w_hh), matmul_dtype)

  def step(carry, inputs):
    dh_next, dc_next, buf = carry
    t, dh_out, p_t, f_t = inputs
    m_t = jax.lax.dynamic_index_in_dim(buf, t, keepdims=False)
    dh = dh_out + dh_next
    dc = dc_next + dh * p_t
    d_pre = jnp.concatenate([dc, dc, dc, dh], -1) * m_t
    buf = jax.lax.dynamic_update_index_in_dim(buf, d_pre, t, 0)
    if matmul_dtype is not None:
      # Read back after the write. XLA would otherwise fuse the cast to
      # matmul_dtype with a second read of m_t, after the write, and copy
      # the whole buffer every step to keep it (2.3x slower steps).
      d_pre = jax.lax.dynamic_index_in_dim(buf, t, keepdims=False)
    dh_prev = layers.dot(d_pre, w_t, matmul_dtype, dh.dtype)
    return (dh_prev, dc * f_t, buf), None

  (dh0, dc0, d_pre), _ = jax.lax.scan(
      step, (d_ht.astype(m.dtype), d_ct.astype(m.dtype), m),
      (jnp.arange(m.shape[0]), d_hs, p, f), reverse=True)
  return d_pre, dh0, dc0


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def lstm_recurrence(xproj: Array, w_hh: Array, h0: Array, c0: Array,
                    matmul_dtype: Any = None):
  """LSTM recurrence over time-major pre-activations.

  Args:
    xproj: [time, batch, 4 * hidden] input projections (bias included), gate
      order i, f, g, o.
    w_hh: [hidden, 4 * hidden] recurrent weights.
    h0: [batch, hidden] initial hidden state.
    c0: [batch, hidden] initial cell state.
    matmul_dtype: None (matmuls in the inputs' dtype) or the dtype of the
      matmuls' operands, summed in float32 (forward and backward).

  Returns:
    (hs [time, batch, hidden], h_T [batch, hidden], c_T [batch, hidden]).
  """
  (h_t, c_t), hs = _scan_forward(xproj, 0.0, w_hh, h0, c0, save=False,
                                 matmul_dtype=matmul_dtype)
  return hs, h_t, c_t


def _recurrence_fwd(xproj, w_hh, h0, c0, matmul_dtype):
  (h_t, c_t), (hs, m, p, f) = _scan_forward(xproj, 0.0, w_hh, h0, c0, save=True,
                                            matmul_dtype=matmul_dtype)
  return (hs, h_t, c_t), (w_hh, h0, hs, m, p, f)


def _recurrence_bwd(matmul_dtype, res, grads):
  w_hh, h0, hs, m, p, f = res
  d_pre, dh0, dc0 = _scan_backward(w_hh, m, p, f, *grads,
                                   matmul_dtype=matmul_dtype)
  hidden = h0.shape[-1]
  h_prev = jnp.concatenate([h0[None], hs[:-1]], 0).reshape(-1, hidden)
  d_w = layers.outer_sum(
      h_prev, d_pre.reshape(-1, 4 * hidden).astype(h_prev.dtype),
      matmul_dtype).astype(w_hh.dtype)
  return (d_pre.astype(m.dtype), d_w, dh0.astype(h0.dtype),
          dc0.astype(h0.dtype))


lstm_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def lstm_layer(x: Array, w_ih: Array, bias: Array, w_hh: Array, h0: Array,
               c0: Array, matmul_dtype: Any = None):
  """One LSTM layer: the input projection, then `lstm_recurrence`.

  The same function as `lstm_recurrence(x @ w_ih + bias, w_hh, h0, c0)` with
  a backward pass that computes the input and weight gradients as a few
  large matmuls over all time steps (and adds the bias inside the loop).

  Args:
    x: [time, batch, features] inputs.
    w_ih: [features, 4 * hidden]; bias: [4 * hidden]; w_hh: [hidden, 4 * hidden].
    h0, c0: [batch, hidden] initial state.
    matmul_dtype: as for `lstm_recurrence`.

  Returns:
    (hs [time, batch, hidden], h_T, c_T).
  """
  (h_t, c_t), hs = _scan_forward(layers.dot(x, w_ih, matmul_dtype, x.dtype),
                                 bias, w_hh, h0, c0, save=False,
                                 matmul_dtype=matmul_dtype)
  return hs, h_t, c_t


def _layer_fwd(x, w_ih, bias, w_hh, h0, c0, matmul_dtype):
  (h_t, c_t), (hs, m, p, f) = _scan_forward(
      layers.dot(x, w_ih, matmul_dtype, x.dtype), bias, w_hh, h0, c0, save=True,
      matmul_dtype=matmul_dtype)
  return (hs, h_t, c_t), (x, w_ih, w_hh, h0, hs, m, p, f)


def _layer_bwd(matmul_dtype, res, grads):
  x, w_ih, w_hh, h0, hs, m, p, f = res
  d_pre, dh0, dc0 = _scan_backward(w_hh, m, p, f, *grads,
                                   matmul_dtype=matmul_dtype)
  hidden = h0.shape[-1]
  d_pre2 = d_pre.reshape(-1, 4 * hidden)
  h_prev = jnp.concatenate([h0[None], hs[:-1]], 0).reshape(-1, hidden)
  # XLA:CPU folds w_ih.T into the dot; a bfloat16 dot needs the copy.
  w_t = w_ih.T if matmul_dtype is None else layers.swap_last_axes(
      w_ih.astype(matmul_dtype))
  d_x = layers.dot(d_pre, w_t, matmul_dtype, x.dtype)
  d_w_ih = layers.outer_sum(x.reshape(-1, x.shape[-1]), d_pre2,
                            matmul_dtype).astype(w_ih.dtype)
  d_w_hh = layers.outer_sum(h_prev, d_pre2, matmul_dtype).astype(w_hh.dtype)
  d_bias = jnp.sum(d_pre2, 0, dtype=w_ih.dtype)
  return (d_x, d_w_ih, d_bias, d_w_hh, dh0.astype(h0.dtype),
          dc0.astype(h0.dtype))


lstm_layer.defvjp(_layer_fwd, _layer_bwd)



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
      table = layers.project(x, w_ih, self.dtype, self.matmul_dtype) + cast(bias)
      hs, h_t, c_t = lstm_recurrence(jnp.take(table, tokens, axis=0),
                                     cast(w_hh), cast(h0), cast(c0),
                                     self.matmul_dtype)
    return hs, (h_t, c_t)


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
