"""Layers the model families share."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def logical(init, *names: str | None):
  """`init` whose parameter carries Flax logical axis names (one per dimension)."""
  return nn.with_logical_partitioning(init, names)


def dense(features: int, in_name: str, out_name: str, dtype: Any, name: str,
          kernel_init=nn.linear.default_kernel_init) -> nn.Dense:
  """nn.Dense whose kernel (in_name, out_name) and bias (out_name,) are named."""
  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=logical(kernel_init, in_name, out_name),
                  bias_init=logical(nn.initializers.zeros_init(), out_name))


def token_embedding(vocab_size: int, features: int) -> nn.Embed:
  """The token embedding ("embed"), its table named ("vocab", "embed")."""
  return nn.Embed(vocab_size, features, name="embed",
                  embedding_init=logical(nn.linear.default_embed_init,
                                         "vocab", "embed"))


def _mix32(x: Array) -> Array:
  """A bijection of uint32 words that spreads every input bit over every
  output bit (the 32-bit finalizer of MurmurHash3)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def hash_bits(key: Array, shape: tuple[int, ...]) -> Array:
  """uint32 random words of `shape`: a keyed hash of each element's index.

  Two words drawn from `key` (threefry) key a hash of the flat index: mix
  (index * golden ratio XOR word 0), then mix (that XOR word 1). For one
  key the map from index to word is a bijection, so no two elements of an
  array (< 2^32 of them) share a word. Each word costs a handful of
  vectorized integer operations, a fifth of a threefry word on CPU: on the
  Transformer benchmark, dropout's random bits went from ~13 to ~2 ms a
  step. Element-wise on the global index, so it shards like the
  partitionable threefry. Statistical tests: tests/test_lstm.py.
  """
  words = jax.random.bits(key, (2,), jnp.uint32)
  size = math.prod(shape)
  if size > 2**32:
    raise ValueError(f"hash_bits draws at most 2^32 words, not {size}")
  index = jax.lax.iota(jnp.uint32, size).reshape(shape)
  return _mix32(_mix32(index * jnp.uint32(0x9E3779B9) ^ words[0]) ^ words[1])


class Dropout(nn.Module):
  """Inverted dropout: keep an element when its random word >= rate * 2^32.

  The words come from `hash_bits` (a keyed hash of each element's index)
  rather than one threefry draw per element, and are compared as integers
  without making floats of them: the same distribution as `nn.Dropout`
  (drop probability `rate` rounded to a multiple of 2^-32) at a fraction of
  the cost on CPU.
  """

  rate: float

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    threshold = min(round(self.rate * 2.0**32), 2**32 - 1)
    keep = hash_bits(self.make_rng("dropout"), x.shape) >= jnp.uint32(threshold)
    return jnp.where(keep, x * (1.0 / (1.0 - self.rate)), 0.0).astype(x.dtype)


def swap_last_axes(a: Array) -> Array:
  """`a` with its last two axes swapped, as a row-major copy XLA keeps.

  XLA:CPU folds a plain transpose into the dot that reads it. The dot then
  has a transposed operand, and XLA:CPU runs such a dot outside its fast
  matmul library (YNNPACK): batched ones through Eigen (2x slower at the
  Transformer's attention shapes), and bfloat16 ones in float32 after
  converting both operands (4-7x slower than the bfloat16 dot on a CPU
  with AMX). A transpose through a third, unit axis is not folded, so the
  dot that reads it is a plain row-major one. On other backends this is a
  plain transpose, which their matmul kernels take without a copy.
  """
  if jax.default_backend() != "cpu":
    return jnp.swapaxes(a, -1, -2)
  *lead, rows, cols = a.shape
  return jnp.swapaxes(a[..., None], -3, -2).reshape(*lead, cols, rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: Array, w: Array, dtype: Any) -> Array:
  """x [..., in] @ w [in, out] with operands in `dtype`, summed in float32.

  The result has x's dtype. The backward pass runs its two matmuls in
  `dtype` too, each with row-major operands (`swap_last_axes`), so that all
  three are the form a CPU's bfloat16 matrix units take. Gradients come
  back in x's and w's dtypes.
  """
  return _matmul_fwd(x, w, dtype)[0]


def _matmul_fwd(x, w, dtype):
  x_low = x.astype(dtype)
  w_low = w.astype(dtype)
  y = jnp.dot(x_low, w_low, preferred_element_type=jnp.float32)
  return y.astype(x.dtype), (x_low, w)


def _matmul_bwd(dtype, res, g):
  x_low, w = res  # g has x's dtype.
  g_low = g.astype(dtype)
  dx = jnp.dot(g_low, swap_last_axes(w.astype(dtype)),
               preferred_element_type=jnp.float32)
  rows = x_low.reshape(-1, x_low.shape[-1])
  dw = jnp.dot(swap_last_axes(rows), g_low.reshape(-1, g_low.shape[-1]),
               preferred_element_type=jnp.float32)
  return dx.astype(g.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)
