"""Layers the model families share."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from musegen_jax.kernels import dropout as dropout_kernel
from musegen_jax.kernels.matmul import project

Array = jax.Array


def logical(init, *names: str | None):
  """`init` whose parameter carries Flax logical axis names (one per dimension)."""
  return nn.with_logical_partitioning(init, names)


def dense(features: int, in_name: str, out_name: str, dtype: Any, name: str,
          kernel_init=nn.linear.default_kernel_init,
          matmul_dtype: Any = None) -> nn.Module:
  """nn.Dense whose kernel (in_name, out_name) and bias (out_name,) are named.

  With `matmul_dtype` (e.g. bfloat16), a `LowPrecisionDense` instead: the
  same parameters, its matmul through `kernels.matmul.matmul`.
  """
  kernel_init = logical(kernel_init, in_name, out_name)
  bias_init = logical(nn.initializers.zeros_init(), out_name)
  if matmul_dtype is None:
    return nn.Dense(features, dtype=dtype, name=name, kernel_init=kernel_init,
                    bias_init=bias_init)
  return LowPrecisionDense(features, dtype, matmul_dtype, kernel_init,
                           bias_init, name=name)


class LowPrecisionDense(nn.Module):
  """nn.Dense's parameters (float32 "kernel" [in, out] and "bias" [out]);
  x @ kernel runs through `kernels.matmul.project`: operands in
  `matmul_dtype`, summed in float32, the result and the bias in `dtype`."""

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


class Dropout(nn.Module):
  """Inverted dropout through `kernels.dropout.dropout`: an element is kept
  when the keyed hash of its index (`hash_bits`) is >= rate * 2^32. The
  same distribution as `nn.Dropout` (drop probability `rate` rounded to a
  multiple of 2^-32) at a fraction of the cost on CPU.
  """

  rate: float

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    return dropout_kernel.dropout(x, self.rate, self.make_rng("dropout"))
