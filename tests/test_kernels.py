"""The hand-written kernels (`musegen_jax.kernels`) against their references:
outputs and gradients of the low-precision matmul, the LSTM and GRU
recurrences, the blocked causal attention, the block convolutions and the
hash dropout, and the choosers' picks by config value and platform."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musegen_jax import backend
from musegen_jax.kernels import dropout
from musegen_jax.kernels import matmul

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
