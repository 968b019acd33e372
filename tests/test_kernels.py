"""The hand-written kernels (`musegen_jax.kernels`) against their references:
outputs and gradients of the low-precision matmul, the LSTM and GRU
recurrences, the blocked causal attention, the block convolutions and the
hash dropout, and the choosers' picks by config value and platform."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from musegen_jax import backend
from musegen_jax.kernels import attention
from musegen_jax.kernels import conv
from musegen_jax.kernels import dropout
from musegen_jax.kernels import matmul
from musegen_jax.kernels import recurrence

from gru_reference import H, gru_weights, reference_gru

BF16 = jnp.bfloat16
# Tiny shapes: compile time dominates (not for the tests that read the
# optimized HLO or compare bfloat16 with float32 sums).
fewer_optimizations = pytest.mark.usefixtures("fewer_optimizations")


def _rounded(a) -> np.ndarray:
  """`a` rounded to bfloat16, as float64."""
  return np.asarray(jnp.asarray(a).astype(BF16).astype(jnp.float32), np.float64)


def _close_in_norm(low, full, tolerance):
  """Every leaf of `low` within `tolerance` of `full` in relative L2 norm."""
  for a, b in zip(jax.tree.leaves(low), jax.tree.leaves(full)):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    assert np.linalg.norm(a - b) <= tolerance * np.linalg.norm(b), (
        np.linalg.norm(a - b) / np.linalg.norm(b))


# The low-precision matmul (kernels/matmul.py).


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 6)])
def test_swap_last_axes_is_a_transpose_of_the_last_two_axes(shape):
  a = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  swapped = jax.jit(matmul.swap_last_axes)(a)
  np.testing.assert_array_equal(swapped, jnp.swapaxes(a, -1, -2))
  with backend.compiling_for("tpu"):  # The plain transpose there.
    swapped = matmul.swap_last_axes(a)
  np.testing.assert_array_equal(swapped, jnp.swapaxes(a, -1, -2))


def test_matmul_multiplies_bfloat16_operands_and_sums_in_float32():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 64)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(64, 24)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(3, 5, 24)), jnp.float32)  # Output gradient.

  y, vjp = jax.vjp(jax.jit(lambda x, w: matmul.matmul(x, w, BF16)), x, w)
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
  y16, vjp16 = jax.vjp(lambda x, w: matmul.matmul(x, w, BF16), x.astype(BF16), w)
  dx16, dw16 = vjp16(g.astype(BF16))
  assert (y16.dtype, dx16.dtype, dw16.dtype) == (BF16, BF16, jnp.float32)
  np.testing.assert_allclose(np.asarray(y16, np.float64), xr @ wr, rtol=1e-2,
                             atol=1e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, BF16])
def test_matmul_and_its_gradients_equal_the_reference(dtype):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(4, 6, 32)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
  cot = jnp.asarray(rng.normal(size=(4, 6, 16)), jnp.float32)
  fast, vjp = jax.vjp(lambda x, w: matmul.matmul(x, w, dtype), x, w)
  ref, ref_vjp = jax.vjp(lambda x, w: matmul.matmul_reference(x, w, dtype), x, w)
  np.testing.assert_array_equal(fast, ref)  # The same forward function.
  # The reference's backward matmuls round their float32 sums to `dtype`.
  tolerance = 1e-5 if dtype == jnp.float32 else 1e-2
  for a, b in zip(vjp(cot), ref_vjp(cot)):
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=tolerance,
                               atol=tolerance * float(jnp.max(jnp.abs(b))))


def test_project_picks_the_matmul_by_matmul_dtype():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  np.testing.assert_array_equal(matmul.project(x, w, jnp.float32, None),
                                jnp.dot(x, w))
  np.testing.assert_array_equal(matmul.project(x, w, jnp.float32, BF16),
                                matmul.matmul(x, w, BF16))


# The recurrences (kernels/recurrence.py).


def _random(shapes, seed):
  keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
  return [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes)]


def _weighted_sum(fn, cotangents):
  """A scalar whose gradient pulls `cotangents` back through `fn`'s outputs."""
  return lambda *args: sum(jnp.sum(out * cot) for out, cot in
                           zip(fn(*args), cotangents))


@fewer_optimizations
def test_lstm_recurrence_matches_reference_and_autodiff():
  t, b, h = 6, 3, 5
  xproj, w_hh, h0, c0 = _random([(t, b, 4 * h), (h, 4 * h), (b, h), (b, h)], 1)
  w_hh = 0.5 * w_hh
  args = (xproj, w_hh, h0, c0)
  for ours, ref in zip(recurrence.lstm_recurrence(*args),
                       recurrence.lstm_recurrence_reference(*args)):
    np.testing.assert_allclose(ours, ref, atol=1e-6)
  cots = _random([(t, b, h), (b, h), (b, h)], 2)
  argnums = tuple(range(4))
  grads = jax.grad(_weighted_sum(recurrence.lstm_recurrence, cots),
                   argnums)(*args)
  ref_grads = jax.grad(_weighted_sum(recurrence.lstm_recurrence_reference, cots),
                       argnums)(*args)
  for ours, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)


@fewer_optimizations
def test_lstm_layer_matches_reference_and_autodiff():
  t, b, f, h = 6, 3, 4, 5
  args = _random([(t, b, f), (f, 4 * h), (4 * h,), (h, 4 * h), (b, h), (b, h)], 3)
  args[3] = 0.5 * args[3]
  for ours, ref in zip(recurrence.lstm_layer(*args),
                       recurrence.lstm_layer_reference(*args)):
    np.testing.assert_allclose(ours, ref, atol=1e-6)
  cots = _random([(t, b, h), (b, h), (b, h)], 4)
  argnums = tuple(range(6))
  grads = jax.grad(_weighted_sum(recurrence.lstm_layer, cots), argnums)(*args)
  ref_grads = jax.grad(_weighted_sum(recurrence.lstm_layer_reference, cots),
                       argnums)(*args)
  for ours, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)


@fewer_optimizations
def test_gru_recurrence_and_its_gradients_equal_the_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 3, 4))
  w = gru_weights(rng, 4)
  h0 = rng.normal(size=(3, H))
  w_ih, b_ih, w_hh, b_hh = [np.asarray(w[k][0], np.float64)
                            for k in ("w_ih", "b_ih", "w_hh", "b_hh")]
  # One direction: a direction axis of 1 after time.
  hs, h_t = recurrence.gru_recurrence(
      jnp.asarray(x @ w_ih + b_ih, jnp.float32)[:, None],
      *(jnp.asarray(a, jnp.float32)[None] for a in (w_hh, b_hh, h0)))
  ref_hs, ref_ht = reference_gru(x, w_ih, b_ih, w_hh, b_hh, h0)
  np.testing.assert_allclose(hs[:, 0], ref_hs, atol=1e-5)
  np.testing.assert_allclose(h_t[0], ref_ht, atol=1e-5)

  # The hand-written backward pass equals autodiff of a plain scan, here for
  # two directions with their own weights.
  w2 = gru_weights(rng, 4, directions=2)
  weights = jnp.asarray(rng.normal(size=(7, 2, 3, H)), jnp.float32)

  def loss(fn):
    def f(*args):
      hs, h_t = fn(*args)
      return jnp.sum(hs * weights) + jnp.sum(jnp.sin(h_t))
    return f

  xproj = np.einsum("tbf,dfg->tdbg", x, w2["w_ih"]) + w2["b_ih"][:, None]
  args = tuple(jnp.asarray(a, jnp.float32)
               for a in (xproj, w2["w_hh"], w2["b_hh"], rng.normal(size=(2, 3, H))))
  for a, b in zip(recurrence.gru_recurrence(*args),
                  recurrence.gru_recurrence_reference(*args)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  ours = jax.grad(loss(recurrence.gru_recurrence), argnums=(0, 1, 2, 3))(*args)
  theirs = jax.grad(loss(recurrence.gru_recurrence_reference),
                    argnums=(0, 1, 2, 3))(*args)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _recurrence_case(name, rng, reference=False):
  """(function of float32 arrays and a matmul dtype, its float32 arguments)."""
  time, batch, hidden, features = 9, 3, 8, 5
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape) * 0.5, jnp.float32)
  suffix = "_reference" if reference else ""
  if name == "lstm_layer":
    args = (normal(time, batch, features), normal(features, 4 * hidden),
            normal(4 * hidden), normal(hidden, 4 * hidden), normal(batch, hidden),
            normal(batch, hidden))
  elif name == "lstm_recurrence":
    args = (normal(time, batch, 4 * hidden), normal(hidden, 4 * hidden),
            normal(batch, hidden), normal(batch, hidden))
  else:
    args = (normal(time, 2, batch, 3 * hidden), normal(2, hidden, 3 * hidden),
            normal(2, 3 * hidden), normal(2, batch, hidden))  # Two directions.
  fn = getattr(recurrence, name + suffix)
  return lambda dtype, *a: fn(*a, dtype), args


RECURRENCES = ["lstm_layer", "lstm_recurrence", "gru_recurrence"]


@pytest.mark.parametrize("name", RECURRENCES)
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


@fewer_optimizations
@pytest.mark.parametrize("name", RECURRENCES)
def test_recurrences_with_bfloat16_matmuls_follow_the_reference(name):
  """With bfloat16 matmuls, the hand-written backward passes against autodiff
  of the plain loops with the same bfloat16 matmuls."""
  fn, args = _recurrence_case(name, np.random.default_rng(0))
  ref, _ = _recurrence_case(name, np.random.default_rng(0), reference=True)
  weights = [np.random.default_rng(1).normal(size=o.shape).astype(np.float32)
             for o in jax.eval_shape(lambda *a: fn(None, *a), *args)]

  def grad(f):
    def loss(*a):
      outs = f(BF16, *a)
      return sum(jnp.sum(jnp.sin(o) * w) for o, w in zip(outs, weights)), outs
    return jax.value_and_grad(loss, argnums=tuple(range(len(args))),
                              has_aux=True)(*args)

  (_, outs), grads = grad(fn)
  (_, ref_outs), ref_grads = grad(ref)
  _close_in_norm(outs, ref_outs, 1e-2)
  _close_in_norm(grads, ref_grads, 3e-2)


def test_lstm_backward_loop_updates_its_buffer_in_place_with_bfloat16_matmuls():
  """The reverse loop writes each step's gradient over the saved gate
  derivatives [time, batch, 4 * hidden]. With bfloat16 matmuls, a second
  read of that buffer after the write made XLA copy all of it every step:
  no such copy is compiled."""
  fn, args = _recurrence_case("lstm_layer", np.random.default_rng(0))
  buffer_shape = "f32[9,3,32]"  # time, batch, 4 * hidden
  for dtype in (None, BF16):
    hlo = jax.jit(jax.grad(lambda *a: jnp.sum(fn(dtype, *a)[0]),
                           argnums=(0, 1, 3))).lower(*args).compile().as_text()
    copies = [line for line in hlo.splitlines()
              if f"= {buffer_shape}" in line and " copy(" in line]
    assert not copies, (dtype, copies)


# The causal attention (kernels/attention.py).


def _library_attention(q, k, v, bias, scale, window):
  t = lambda a: jnp.swapaxes(a, 1, 2)
  y = jax.nn.dot_product_attention(
      t(q), t(k), t(v), bias=bias, scale=scale, is_causal=True,
      local_window_size=(window - 1, 0) if window else None)
  return t(y)


@fewer_optimizations
@pytest.mark.parametrize("length,blocks,window", [
    (7, 1, 0), (128, 2, 0), (256, 4, 0), (7, 1, 3), (256, 4, 70)])
def test_causal_attention_and_its_gradients_equal_the_library_call(
    length, blocks, window):
  assert attention.query_blocks(length) == blocks
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 3, length, 4)), jnp.float32)
             for _ in range(3))
  bias = jnp.asarray(rng.normal(size=(2, 3, length, length)), jnp.float32)
  scale = 0.5
  weights = jnp.asarray(rng.normal(size=(2, 3, length, 4)), jnp.float32)

  def ours(q, k, v, bias):
    return jnp.sum(attention.causal_attention(q, k, v, bias, scale, window)
                   * weights)

  def library(q, k, v, bias):
    return jnp.sum(_library_attention(q, k, v, bias, scale, window) * weights)

  def reference(q, k, v, bias):
    return jnp.sum(attention.causal_attention_reference(q, k, v, bias, scale,
                                                        window) * weights)

  np.testing.assert_allclose(ours(q, k, v, bias), library(q, k, v, bias), rtol=1e-5)
  np.testing.assert_allclose(ours(q, k, v, bias), reference(q, k, v, bias),
                             rtol=1e-5)
  grads = jax.grad(ours, argnums=(0, 1, 2, 3))(q, k, v, bias)
  for theirs in (library, reference):
    for a, b in zip(grads, jax.grad(theirs, argnums=(0, 1, 2, 3))(q, k, v, bias)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Without a bias too.
  no_bias = jax.grad(lambda q: jnp.sum(attention.causal_attention(
      q, k, v, None, scale, window) * weights))(q)
  np.testing.assert_allclose(
      no_bias, jax.grad(lambda q: library(q, k, v, jnp.zeros_like(bias)))(q),
      rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      no_bias, jax.grad(lambda q: jnp.sum(attention.causal_attention_reference(
          q, k, v, None, scale, window) * weights))(q),
      rtol=1e-4, atol=1e-5)


def test_causal_attention_with_bfloat16_operands_follows_float32():
  rng = np.random.default_rng(1)
  length = 128  # Two query blocks.
  q, k, v = (jnp.asarray(rng.normal(size=(2, 3, length, 8)), jnp.float32)
             for _ in range(3))
  bias = jnp.asarray(rng.normal(size=(2, 3, length, length)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(2, 3, length, 8)), jnp.float32)

  def loss(q, k, v, bias, dtype):
    y = attention.causal_attention(q.astype(dtype), k.astype(dtype),
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


@fewer_optimizations
@pytest.mark.parametrize("window", [0, 3])
def test_self_attention_runs_the_implementation_it_names(window):
  rng = np.random.default_rng(4)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 3, 16, 4)), jnp.float32)
             for _ in range(3))
  bias = jnp.asarray(rng.normal(size=(2, 3, 16, 16)), jnp.float32)
  args = (q, k, v, bias, 0.5, window)
  np.testing.assert_array_equal(attention.self_attention(*args, impl="einsum"),
                                attention.causal_attention(*args))
  np.testing.assert_array_equal(attention.self_attention(*args, impl="fused"),
                                attention.fused_attention(*args))
  np.testing.assert_allclose(attention.fused_attention(*args),
                             _library_attention(*args), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(attention.self_attention(*args, impl="fused"),
                             attention.self_attention(*args, impl="einsum"),
                             rtol=1e-5, atol=1e-5)


def test_resolve_attention_impl():
  assert backend.platform() == "cpu"
  assert attention.resolve_attention_impl("auto") == "einsum"
  for target in ("gpu", "tpu"):
    with backend.compiling_for(target):
      assert attention.resolve_attention_impl("auto") == "fused"
  assert attention.resolve_attention_impl("fused") == "fused"
  assert attention.resolve_attention_impl("einsum") == "einsum"
  with pytest.raises(ValueError, match="'flash'.*auto.*fused.*einsum"):
    attention.resolve_attention_impl("flash")


# The convolutions (kernels/conv.py).

CONV_IMPLS = ("matmul", "lax")
# (kernel_size, stride, length): the WaveGAN kernel at both strides, small
# kernels, a kernel shorter than the stride and a length not divisible by it.
CONV_CASES = [(25, 4, 32), (25, 2, 16), (5, 4, 12), (2, 4, 8), (4, 2, 9)]


def _ref_conv1d(x, kernel, stride):
  return lax.conv_general_dilated(x, kernel, (stride,), "SAME",
                                  dimension_numbers=("NWC", "WIO", "NWC"),
                                  precision=lax.Precision.HIGHEST)


def _ref_conv_transpose1d(x, kernel, stride):
  """The adjoint of the 'SAME' strided conv with kernel [K, Cout, Cin]."""
  batch, length, _ = x.shape
  zeros = jnp.zeros((batch, length * stride, kernel.shape[2]), x.dtype)
  _, vjp = jax.vjp(
      lambda v: _ref_conv1d(v, jnp.swapaxes(kernel, 1, 2), stride), zeros)
  return vjp(x)[0]


def _conv_random(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _assert_close(actual, desired, rtol=1e-4):
  scale = float(jnp.max(jnp.abs(desired)))
  np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale)


@fewer_optimizations
@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("kernel_size,stride,length", CONV_CASES)
@pytest.mark.parametrize("transpose", [False, True])
def test_conv_matches_lax_reference(impl, kernel_size, stride, length, transpose):
  rng = np.random.default_rng(kernel_size * 100 + stride * 10 + length)
  x = _conv_random(rng, 2, length, 3)
  kernel = _conv_random(rng, kernel_size, 3, 5)
  op = conv.conv_transpose1d if transpose else conv.conv1d
  ref = _ref_conv_transpose1d if transpose else _ref_conv1d
  if transpose and length * stride > 64:
    x = x[:, :64 // stride]

  out = op(x, kernel, stride, impl)
  expected = ref(x, kernel, stride)
  want_len = x.shape[1] * stride if transpose else -(-x.shape[1] // stride)
  assert out.shape == expected.shape == (2, want_len, 5)
  _assert_close(out, expected)

  # Gradients w.r.t. input and kernel, through a nonlinearity, under jit.
  def loss(fn):
    return jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(fn(x, k))), (0, 1)))
  grads = loss(lambda x, k: op(x, k, stride, impl))(x, kernel)
  expected_grads = loss(lambda x, k: ref(x, k, stride))(x, kernel)
  for g, e in zip(grads, expected_grads):
    assert g.shape == e.shape
    _assert_close(g, e)


@fewer_optimizations
@pytest.mark.parametrize("transpose", [False, True])
def test_conv_impls_are_the_named_functions(transpose):
  rng = np.random.default_rng(5)
  x = _conv_random(rng, 2, 8, 3)
  kernel = _conv_random(rng, 25, 3, 5)
  op, blocks, lax_op = ((conv.conv_transpose1d, conv.conv_transpose1d_blocks,
                         conv.conv_transpose1d_lax) if transpose else
                        (conv.conv1d, conv.conv1d_blocks, conv.conv1d_lax))
  np.testing.assert_array_equal(op(x, kernel, 4, "matmul"), blocks(x, kernel, 4))
  np.testing.assert_array_equal(op(x, kernel, 4, "lax"), lax_op(x, kernel, 4))
  # The lax path is the reference the block path is tested against.
  _assert_close(blocks(x, kernel, 4), lax_op(x, kernel, 4))


@fewer_optimizations
@pytest.mark.parametrize("transpose,kernel_size,stride",
                         [(False, 25, 4), (True, 25, 4), (False, 5, 2)])
def test_conv_second_order_gradients_match(transpose, kernel_size, stride):
  """What a gradient penalty needs: d/d(x, k) of |d out / dx|^2."""
  rng = np.random.default_rng(7)
  length = 8 if transpose else 32
  x = _conv_random(rng, 2, length, 4)
  kernel = _conv_random(rng, kernel_size, 4, 6)
  op = conv.conv_transpose1d if transpose else conv.conv1d
  ref = _ref_conv_transpose1d if transpose else _ref_conv1d

  def penalty(fn):
    input_grad = jax.grad(lambda x, k: jnp.sum(jnp.tanh(fn(x, k))))
    return jax.grad(lambda x, k: jnp.sum(input_grad(x, k) ** 2), (0, 1))
  grads = penalty(lambda x, k: op(x, k, stride, "matmul"))(x, kernel)
  expected = penalty(lambda x, k: ref(x, k, stride))(x, kernel)
  for g, e in zip(grads, expected):
    _assert_close(g, e, rtol=1e-3)


@fewer_optimizations
def test_conv_transpose_is_adjoint_of_conv():
  rng = np.random.default_rng(1)
  kernel = _conv_random(rng, 25, 6, 3)  # Transposed conv: 6 -> 3 channels.
  x = _conv_random(rng, 2, 16, 6)
  v = _conv_random(rng, 2, 64, 3)
  lhs = jnp.vdot(conv.conv_transpose1d(x, kernel, 4, "matmul"), v)
  rhs = jnp.vdot(x, conv.conv1d(v, jnp.swapaxes(kernel, 1, 2), 4, "matmul"))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


def test_resolve_conv_impl():
  assert conv.resolve_conv_impl("auto") == (
      "matmul" if jax.default_backend() == "cpu" else "lax")
  with backend.compiling_for("tpu"):
    assert conv.resolve_conv_impl("auto") == "lax"
  assert conv.resolve_conv_impl("lax") == "lax"
  assert conv.resolve_conv_impl("matmul") == "matmul"
  with pytest.raises(ValueError, match="'cudnn'.*auto.*lax.*matmul"):
    conv.resolve_conv_impl("cudnn")
  with pytest.raises(ValueError, match="'fft'"):
    conv.conv1d(jnp.zeros((1, 8, 1)), jnp.zeros((3, 1, 1)), 2, "fft")


# The hash dropout (kernels/dropout.py).


def test_hash_bits():
  key = jax.random.PRNGKey(0)
  words = np.asarray(dropout.hash_bits(key, (256, 256))).ravel().astype(np.int64)
  # A bijection of the index for one key: no word repeats.
  assert len(np.unique(words)) == words.size
  # Every bit is a fair coin, and consecutive words are uncorrelated.
  bits = (words[:, None] >> np.arange(32)) & 1
  np.testing.assert_allclose(bits.mean(0), 0.5, atol=0.01)
  assert abs(np.corrcoef(words[1:], words[:-1])[0, 1]) < 0.01
  # Deterministic per key; another key gives other words.
  np.testing.assert_array_equal(words, np.asarray(dropout.hash_bits(key, (65536,))))
  other = np.asarray(dropout.hash_bits(jax.random.PRNGKey(1), (65536,)))
  assert (other == words).mean() < 1e-3


@pytest.mark.parametrize("shape", [(7,), (3, 33, 5)])
def test_hash_bits_and_dropout_equal_the_reference(shape):
  key = jax.random.PRNGKey(7)
  np.testing.assert_array_equal(dropout.hash_bits(key, shape),
                                dropout.hash_bits_reference(key, shape))
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  for rate in (0.1, 0.5):
    np.testing.assert_array_equal(dropout.dropout(x, rate, key),
                                  dropout.dropout_reference(x, rate, key))


@pytest.mark.parametrize("shape", [(200, 500), (8, 25, 401)])
def test_dropout_rate_and_scale(shape):
  x = jnp.ones(shape)
  y = dropout.dropout(x, 0.1, jax.random.PRNGKey(4))
  kept = np.asarray(y) != 0
  # 100,000+ draws: the kept fraction within 5 standard deviations of 0.9.
  assert abs(kept.mean() - 0.9) < 5 * np.sqrt(0.09 / kept.size)
  np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.9, rtol=1e-6)
  kept = kept.reshape(-1, shape[-1])
  independent = 0.9**2 + 0.1**2  # P(two independent draws agree).
  # Neighbours along either axis, and another key's mask, agree no more
  # often than independent draws do.
  other = dropout.dropout(x, 0.1, jax.random.PRNGKey(5))
  other = (np.asarray(other) != 0).reshape(kept.shape)
  for a, b in ((kept[:, 1:], kept[:, :-1]), (kept[1:], kept[:-1]), (kept, other)):
    assert abs((a == b).mean() - independent) < 0.01
