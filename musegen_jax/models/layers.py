"""Layers the model families share."""

from __future__ import annotations

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
