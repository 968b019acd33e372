"""Hash dropout: inverted dropout whose random words are a keyed hash of each
element's index.

- `hash_bits`: uint32 words, two threefry words keying a hash of the flat
  index: a handful of vectorized integer operations per element, against a
  threefry draw per element for `jax.random.bits`.
- `dropout`: keeps an element when its word >= rate * 2^32, comparing the
  words as integers without making floats of them.
- `hash_bits_reference`, `dropout_reference`: the same functions in NumPy
  (uint32 arithmetic wraps there as in XLA), for the equality tests.

There is one implementation on every platform, so no chooser: the models'
`layers.Dropout` calls `dropout` directly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_GOLDEN = 0x9E3779B9
_MIX = (0x85EBCA6B, 0xC2B2AE35)


def _mix32(x: Array) -> Array:
  """A bijection of uint32 words that spreads every input bit over every
  output bit (the 32-bit finalizer of MurmurHash3)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(_MIX[0])
  x = x ^ (x >> 13)
  x = x * jnp.uint32(_MIX[1])
  return x ^ (x >> 16)


def hash_bits(key: Array, shape: tuple[int, ...]) -> Array:
  """uint32 random words of `shape`: a keyed hash of each element's index.

  Two words drawn from `key` (threefry) key a hash of the flat index: mix
  (index * golden ratio XOR word 0), then mix (that XOR word 1). For one
  key the map from index to word is a bijection, so no two elements of an
  array (< 2^32 of them) share a word. Each word costs a handful of
  vectorized integer operations, a fraction of a threefry word on CPU.
  Element-wise on the global index, so it shards like the partitionable
  threefry.
  """
  words = jax.random.bits(key, (2,), jnp.uint32)
  size = math.prod(shape)
  if size > 2**32:
    raise ValueError(f"hash_bits draws at most 2^32 words, not {size}")
  index = jax.lax.iota(jnp.uint32, size).reshape(shape)
  return _mix32(_mix32(index * jnp.uint32(_GOLDEN) ^ words[0]) ^ words[1])


def keep_threshold(rate: float) -> int:
  """The smallest word `dropout` keeps: rate * 2^32, rounded, below 2^32."""
  return min(round(rate * 2.0**32), 2**32 - 1)


def dropout(x: Array, rate: float, key: Array) -> Array:
  """Inverted dropout of `x` at `rate` (0 < rate < 1) with words from
  `hash_bits(key, x.shape)`: the same distribution as `nn.Dropout` (drop
  probability `rate` rounded to a multiple of 2^-32)."""
  keep = hash_bits(key, x.shape) >= jnp.uint32(keep_threshold(rate))
  return jnp.where(keep, x * (1.0 / (1.0 - rate)), 0.0).astype(x.dtype)


def _mix32_reference(x: np.ndarray) -> np.ndarray:
  x = x ^ (x >> np.uint32(16))
  x = x * np.uint32(_MIX[0])
  x = x ^ (x >> np.uint32(13))
  x = x * np.uint32(_MIX[1])
  return x ^ (x >> np.uint32(16))


def hash_bits_reference(key: Array, shape: tuple[int, ...]) -> np.ndarray:
  """`hash_bits` in NumPy: the same two threefry words, the same hash."""
  words = np.asarray(jax.random.bits(key, (2,), jnp.uint32))
  index = np.arange(math.prod(shape), dtype=np.uint32).reshape(shape)
  with np.errstate(over="ignore"):
    return _mix32_reference(
        _mix32_reference(index * np.uint32(_GOLDEN) ^ words[0]) ^ words[1])


def dropout_reference(x, rate: float, key: Array) -> np.ndarray:
  """`dropout` in NumPy, from `hash_bits_reference`'s words."""
  x = np.asarray(x)
  keep = hash_bits_reference(key, x.shape) >= np.uint32(keep_threshold(rate))
  return np.where(keep, x * (1.0 / (1.0 - rate)), 0.0).astype(x.dtype)
