"""Recurrences with hand-written backward passes: the LSTM and the GRU.

Each layer's input projection of all time steps is one large matmul outside
the time loop; only the recurrent matmul runs inside it. The backward pass
is written by hand, as fused RNN kernels do: the forward loop saves the gate
derivatives it already has at hand, the reverse loop carries only the
recurrent gradient, and the input gradient and the weight gradients are
large matmuls over every time step afterwards.

- `lstm_recurrence`, `lstm_layer`: the LSTM (gate order i, f, g, o). One
  tanh evaluates all four gates (sigmoid(x) = (1 + tanh(x / 2)) / 2); the
  forward loop writes its residuals over the input projections and the
  backward loop its gradients over the residuals, in place, so fewer fresh
  pages are faulted in per step.
- `gru_recurrence`, `gru_cell`: the GRU of `torch.nn.GRU` (gate order r, z,
  n), one or more directions in one loop (a direction axis: each step is
  one batched matmul).
- `lstm_recurrence_reference`, `lstm_layer_reference`,
  `gru_recurrence_reference`: plain `lax.scan` loops of the same cells,
  differentiated by autodiff, for the equality tests.

With `matmul_dtype` (bfloat16) every matmul takes its operands in that
dtype and sums in float32, forward and backward, with row-major operands
(`kernels.matmul.swap_last_axes`); the gates and states stay in the inputs'
dtype. There is one implementation on every platform, so no chooser: the
models call these functions directly.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from musegen_jax.kernels import matmul

Array = jax.Array


def _lstm_gate_scale(hidden: int, dtype) -> Array:
  """0.5 for the sigmoid gates (i, f, o), 1 for the tanh gate (g).

  sigmoid(x) = (1 + tanh(x / 2)) / 2, so one tanh over all four gates
  evaluates every nonlinearity of a step in a single pass.
  """
  half = jnp.full((hidden,), 0.5, dtype)
  return jnp.concatenate([half, half, jnp.ones((hidden,), dtype), half])


def _lstm_gates(pre: Array, scale: Array) -> tuple[Array, Array, Array, Array]:
  """Gate activations (i, f, g, o) from pre-activations [batch, 4 * hidden]."""
  hidden = pre.shape[-1] // 4
  a = jnp.tanh(pre * scale)
  i = 0.5 * a[:, :hidden] + 0.5
  f = 0.5 * a[:, hidden:2 * hidden] + 0.5
  g = a[:, 2 * hidden:3 * hidden]
  o = 0.5 * a[:, 3 * hidden:] + 0.5
  return i, f, g, o


def _lstm_scan_forward(xproj, bias, w_hh, h0, c0, *, save: bool, matmul_dtype=None):
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
  scale = _lstm_gate_scale(h0.shape[-1], xproj.dtype)
  w_low = matmul.operand(w_hh, matmul_dtype)

  def cell(h, c, x_t):
    i, f, g, o = _lstm_gates(
        x_t + bias + matmul.dot(h, w_low, matmul_dtype, x_t.dtype), scale)
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


def _lstm_scan_backward(w_hh, m, p, f, d_hs, d_ht, d_ct, matmul_dtype=None):
  """The reverse loop; returns (d_pre [time, batch, 4 * hidden], dh0, dc0).

  d_pre is written over m in the loop-carried buffer.
  """
  w_t = matmul.operand(matmul.swap_last_axes(w_hh), matmul_dtype)

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
      # the whole buffer every step to keep it.
      d_pre = jax.lax.dynamic_index_in_dim(buf, t, keepdims=False)
    dh_prev = matmul.dot(d_pre, w_t, matmul_dtype, dh.dtype)
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
  (h_t, c_t), hs = _lstm_scan_forward(xproj, 0.0, w_hh, h0, c0, save=False,
                                 matmul_dtype=matmul_dtype)
  return hs, h_t, c_t


def _lstm_recurrence_fwd(xproj, w_hh, h0, c0, matmul_dtype):
  (h_t, c_t), (hs, m, p, f) = _lstm_scan_forward(xproj, 0.0, w_hh, h0, c0, save=True,
                                            matmul_dtype=matmul_dtype)
  return (hs, h_t, c_t), (w_hh, h0, hs, m, p, f)


def _lstm_recurrence_bwd(matmul_dtype, res, grads):
  w_hh, h0, hs, m, p, f = res
  d_pre, dh0, dc0 = _lstm_scan_backward(w_hh, m, p, f, *grads,
                                   matmul_dtype=matmul_dtype)
  hidden = h0.shape[-1]
  h_prev = jnp.concatenate([h0[None], hs[:-1]], 0).reshape(-1, hidden)
  d_w = matmul.outer_sum(
      h_prev, d_pre.reshape(-1, 4 * hidden).astype(h_prev.dtype),
      matmul_dtype).astype(w_hh.dtype)
  return (d_pre.astype(m.dtype), d_w, dh0.astype(h0.dtype),
          dc0.astype(h0.dtype))


lstm_recurrence.defvjp(_lstm_recurrence_fwd, _lstm_recurrence_bwd)


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
  (h_t, c_t), hs = _lstm_scan_forward(matmul.dot(x, w_ih, matmul_dtype, x.dtype),
                                 bias, w_hh, h0, c0, save=False,
                                 matmul_dtype=matmul_dtype)
  return hs, h_t, c_t


def _lstm_layer_fwd(x, w_ih, bias, w_hh, h0, c0, matmul_dtype):
  (h_t, c_t), (hs, m, p, f) = _lstm_scan_forward(
      matmul.dot(x, w_ih, matmul_dtype, x.dtype), bias, w_hh, h0, c0, save=True,
      matmul_dtype=matmul_dtype)
  return (hs, h_t, c_t), (x, w_ih, w_hh, h0, hs, m, p, f)


def _lstm_layer_bwd(matmul_dtype, res, grads):
  x, w_ih, w_hh, h0, hs, m, p, f = res
  d_pre, dh0, dc0 = _lstm_scan_backward(w_hh, m, p, f, *grads,
                                   matmul_dtype=matmul_dtype)
  hidden = h0.shape[-1]
  d_pre2 = d_pre.reshape(-1, 4 * hidden)
  h_prev = jnp.concatenate([h0[None], hs[:-1]], 0).reshape(-1, hidden)
  # XLA:CPU folds w_ih.T into the dot; a bfloat16 dot needs the copy.
  w_t = w_ih.T if matmul_dtype is None else matmul.swap_last_axes(
      w_ih.astype(matmul_dtype))
  d_x = matmul.dot(d_pre, w_t, matmul_dtype, x.dtype)
  d_w_ih = matmul.outer_sum(x.reshape(-1, x.shape[-1]), d_pre2,
                            matmul_dtype).astype(w_ih.dtype)
  d_w_hh = matmul.outer_sum(h_prev, d_pre2, matmul_dtype).astype(w_hh.dtype)
  d_bias = jnp.sum(d_pre2, 0, dtype=w_ih.dtype)
  return (d_x, d_w_ih, d_bias, d_w_hh, dh0.astype(h0.dtype),
          dc0.astype(h0.dtype))


lstm_layer.defvjp(_lstm_layer_fwd, _lstm_layer_bwd)


def lstm_recurrence_reference(xproj: Array, w_hh: Array, h0: Array, c0: Array,
                              matmul_dtype: Any = None):
  """`lstm_recurrence` as a plain LSTM loop over `lax.scan`, differentiated
  by autodiff."""

  def step(carry, x_t):
    h, c = carry
    i, f, g, o = jnp.split(
        x_t + matmul.dot(h, w_hh, matmul_dtype, x_t.dtype), 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = (jax.nn.sigmoid(o) * jnp.tanh(c)).astype(h.dtype)
    return (h, c), h

  (h_t, c_t), hs = jax.lax.scan(step, (h0, c0), xproj)
  return hs, h_t, c_t


def lstm_layer_reference(x: Array, w_ih: Array, bias: Array, w_hh: Array,
                         h0: Array, c0: Array, matmul_dtype: Any = None):
  """`lstm_layer` as the input projection, then `lstm_recurrence_reference`."""
  return lstm_recurrence_reference(
      matmul.dot(x, w_ih, matmul_dtype, x.dtype) + bias, w_hh, h0, c0,
      matmul_dtype)


def gru_cell(x_t: Array, h: Array, w_hh: Array, b_hh: Array,
          matmul_dtype: Any = None):
  """One GRU step of every direction: returns (h_new, r, z, n, hn).

  x_t [directions, batch, 3 * hidden], h [directions, batch, hidden], w_hh
  already in matmul_dtype (when set); hn = h W_hn + b_hn.
  """
  hidden = h.shape[-1]
  hp = matmul.dot(h, w_hh, matmul_dtype, x_t.dtype,
                  "dbh,dhg->dbg") + b_hh[:, None]
  # sigmoid(a) = (1 + tanh(a / 2)) / 2: one tanh for both sigmoid gates.
  rz = 0.5 * jnp.tanh(0.5 * (x_t[..., :2 * hidden] + hp[..., :2 * hidden])) + 0.5
  r, z = rz[..., :hidden], rz[..., hidden:]
  hn = hp[..., 2 * hidden:]
  n = jnp.tanh(x_t[..., 2 * hidden:] + r * hn)
  h_new = (n + z * (h - n)).astype(h.dtype)
  return h_new, r, z, n, hn


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def gru_recurrence(xproj: Array, w_hh: Array, b_hh: Array, h0: Array,
                   matmul_dtype: Any = None) -> tuple[Array, Array]:
  """GRU recurrence of one or more directions over time-major projections.

  The directions (independent GRUs with their own weights, e.g. the forward
  and the already-reversed backward direction) run in one loop, each step
  one batched matmul.

  Args:
    xproj: [time, directions, batch, 3 * hidden] input projections with
      their bias (x W_ih + b_ih), gate order r, z, n.
    w_hh: [directions, hidden, 3 * hidden] recurrent weights; b_hh:
      [directions, 3 * hidden].
    h0: [directions, batch, hidden] initial states.
    matmul_dtype: None (matmuls in the inputs' dtype) or the dtype of the
      matmuls' operands, summed in float32 (forward and backward).

  Returns:
    (hs [time, directions, batch, hidden], h_T [directions, batch, hidden]).
  """
  w_low = matmul.operand(w_hh, matmul_dtype)

  def step(h, x_t):
    h_new = gru_cell(x_t, h, w_low, b_hh, matmul_dtype)[0]
    return h_new, h_new

  h_t, hs = jax.lax.scan(step, h0, xproj)
  return hs, h_t


def _gru_recurrence_fwd(xproj, w_hh, b_hh, h0, matmul_dtype):
  w_low = matmul.operand(w_hh, matmul_dtype)

  def step(h, x_t):
    h_new, r, z, n, hn = gru_cell(x_t, h, w_low, b_hh, matmul_dtype)
    return h_new, (h_new, r, z, n, hn)

  h_t, (hs, r, z, n, hn) = jax.lax.scan(step, h0, xproj)
  return (hs, h_t), (w_hh, h0, hs, r, z, n, hn)


def _gru_weight_grad(a: Array, b: Array, matmul_dtype: Any) -> Array:
  """sum over time and batch of a^T b: a [time, dirs, batch, m], b [time,
  dirs, batch, n] -> [dirs, m, n].

  With matmul_dtype, one row-major matmul per direction (a's rows swapped
  into a copy first), operands in matmul_dtype, summed in float32.
  """
  if matmul_dtype is None:
    return jnp.einsum("tdbh,tdbg->dhg", a, b, preferred_element_type=a.dtype)
  return jnp.stack([
      matmul.outer_sum(a[:, d].reshape(-1, a.shape[-1]),
                       b[:, d].reshape(-1, b.shape[-1]), matmul_dtype)
      for d in range(a.shape[1])]).astype(a.dtype)


def _gru_recurrence_bwd(matmul_dtype, res, grads):
  """d h' gives dn = dh (1 - z), dz = dh (h - n), and dh z directly to h;

  through n = tanh(a_n + r hn): d a_n = dn (1 - n^2), dr = d a_n hn,
  d hn = d a_n r; the sigmoid gates' pre-activations get dr r (1 - r) and
  dz z (1 - z). The input projection's gradient is [d a_r, d a_z, d a_n],
  the recurrent pre-activation's [d a_r, d a_z, d a_n r], and
  dh_prev = dh z + d_hp W_hh^T. The loop emits only the former; the latter
  and the weight gradients are computed over all steps at once afterwards
  (fewer, larger operations, which CPUs run faster than many small ones).
  """
  w_hh, h0, hs, r, z, n, hn = res
  d_hs, d_ht = grads
  hidden = h0.shape[-1]
  w_t = matmul.operand(matmul.swap_last_axes(w_hh), matmul_dtype)
  h_prev = jnp.concatenate([h0[None], hs[:-1]], 0)

  def step(dh_next, inputs):
    dh_out, h_p, r_t, z_t, n_t, hn_t = inputs
    dh = dh_out + dh_next
    d_an = dh * (1.0 - z_t) * (1.0 - n_t * n_t)
    d_ar = d_an * hn_t * r_t * (1.0 - r_t)
    d_az = dh * (h_p - n_t) * z_t * (1.0 - z_t)
    d_hp = jnp.concatenate([d_ar, d_az, d_an * r_t], -1)
    dh_prev = dh * z_t + matmul.dot(d_hp, w_t, matmul_dtype, dh.dtype,
                                    "dbg,dgh->dbh")
    return dh_prev, jnp.concatenate([d_ar, d_az, d_an], -1)

  dh0, d_x = jax.lax.scan(
      step, d_ht.astype(hs.dtype), (d_hs.astype(hs.dtype), h_prev, r, z, n, hn),
      reverse=True)
  d_hp = jnp.concatenate([d_x[..., :2 * hidden], d_x[..., 2 * hidden:] * r], -1)
  d_w = _gru_weight_grad(h_prev, d_hp, matmul_dtype).astype(w_hh.dtype)
  d_b = jnp.sum(d_hp, (0, 2), dtype=w_hh.dtype)
  return d_x, d_w, d_b, dh0.astype(h0.dtype)


gru_recurrence.defvjp(_gru_recurrence_fwd, _gru_recurrence_bwd)


def gru_recurrence_reference(xproj: Array, w_hh: Array, b_hh: Array, h0: Array,
                             matmul_dtype: Any = None) -> tuple[Array, Array]:
  """`gru_recurrence` as a plain loop of `gru_cell` over `lax.scan`,
  differentiated by autodiff."""
  w_low = matmul.operand(w_hh, matmul_dtype)

  def step(h, x_t):
    h = gru_cell(x_t, h, w_low, b_hh, matmul_dtype)[0]
    return h, h

  h_t, hs = jax.lax.scan(step, h0, xproj)
  return hs, h_t
