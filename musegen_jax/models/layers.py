"""Layers the model families share."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class Dropout(nn.Module):
  """Inverted dropout whose mask compares raw random bits to a threshold.

  Same distribution as `nn.Dropout` (drop probability `rate`, up to 2^-32)
  without turning each random word into a float first, which on CPU costs
  more than generating it.
  """

  rate: float

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    threshold = min(round(self.rate * 2.0**32), 2**32 - 1)
    bits = jax.random.bits(self.make_rng("dropout"), x.shape, jnp.uint32)
    keep = bits >= jnp.uint32(threshold)
    return jnp.where(keep, x * (1.0 / (1.0 - self.rate)), 0.0).astype(x.dtype)
