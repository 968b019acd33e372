"""Layers the model families share."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from musegen_jax import backend

Array = jax.Array


def logical(init, *names: str | None):
  """`init` whose parameter carries Flax logical axis names (one per dimension)."""
  return nn.with_logical_partitioning(init, names)


def dense(features: int, in_name: str, out_name: str, dtype: Any, name: str,
          kernel_init=nn.linear.default_kernel_init,
          matmul_dtype: Any = None) -> nn.Module:
  """nn.Dense whose kernel (in_name, out_name) and bias (out_name,) are named.

  With `matmul_dtype` (e.g. bfloat16), a `LowPrecisionDense` instead: the
  same parameters, its matmul through `matmul`.
  """
  kernel_init = logical(kernel_init, in_name, out_name)
  bias_init = logical(nn.initializers.zeros_init(), out_name)
  if matmul_dtype is None:
    return nn.Dense(features, dtype=dtype, name=name, kernel_init=kernel_init,
                    bias_init=bias_init)
  return LowPrecisionDense(features, dtype, matmul_dtype, kernel_init,
                           bias_init, name=name)


def project(x: Array, kernel: Array, dtype: Any, matmul_dtype: Any) -> Array:
  """x [..., in] @ kernel [in, out] in `dtype`; through `matmul` (operands
  in matmul_dtype, summed in float32) when matmul_dtype is set."""
  if matmul_dtype is None:
    return jnp.dot(x.astype(dtype), kernel.astype(dtype))
  return matmul(x.astype(dtype), kernel, matmul_dtype)


class LowPrecisionDense(nn.Module):
  """nn.Dense's parameters (float32 "kernel" [in, out] and "bias" [out]);
  x @ kernel runs through `project`: operands in `matmul_dtype`, summed in
  float32, the result and the bias in `dtype`."""

  features: int
  dtype: Any
  matmul_dtype: Any
  kernel_init: Any
  bias_init: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    return project(x, kernel, self.dtype, self.matmul_dtype) + bias.astype(
        self.dtype)


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
  if not backend.on_cpu():
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
  dw = outer_sum(x_low.reshape(-1, x_low.shape[-1]),
                 g_low.reshape(-1, g_low.shape[-1]), dtype)
  return dx.astype(g.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def operand(a: Array, matmul_dtype: Any) -> Array:
  """`a` as a matmul operand: in matmul_dtype, or as it is when None."""
  return a if matmul_dtype is None else a.astype(matmul_dtype)


def dot(a: Array, b: Array, matmul_dtype: Any, out_dtype: Any,
        subscripts: str | None = None) -> Array:
  """a @ b, or einsum(subscripts, a, b), the result in out_dtype.

  With matmul_dtype, the operands in that dtype and the sums in float32
  (the operands' layout is the caller's: row-major for a fast bfloat16
  dot on CPU, see `swap_last_axes`).
  """
  a, b = operand(a, matmul_dtype), operand(b, matmul_dtype)
  acc = out_dtype if matmul_dtype is None else jnp.float32
  if subscripts is None:
    out = jnp.dot(a, b, preferred_element_type=acc)
  else:
    out = jnp.einsum(subscripts, a, b, preferred_element_type=acc)
  return out.astype(out_dtype)


def outer_sum(a: Array, b: Array, matmul_dtype: Any) -> Array:
  """a^T b for rows a [n, m] and b [n, k]: the [m, k] sum of the rows' outer
  products, the form of every weight gradient.

  With matmul_dtype, a row-major matmul of the operands in that dtype (a
  swapped into a copy first), summed in float32; without, a plain dot in
  the operands' dtype.
  """
  if matmul_dtype is None:
    return jnp.dot(a.T, b)
  return jnp.dot(swap_last_axes(a.astype(matmul_dtype)), b.astype(matmul_dtype),
                 preferred_element_type=jnp.float32)
