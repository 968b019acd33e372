"""Layers the model families share."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def style_rows(num_styles: int, features: int, style: Array, name: str,
               axis: str | None = None) -> Array:
  """The rows [batch, features] that `style` ([batch] int ids) picks from a
  learned [num_styles, features] table, zero at the start (so a conditioned
  network starts as the unconditioned one). Call inside a compact method."""
  table = nn.Embed(num_styles, features, name=name,
                   embedding_init=logical(nn.initializers.zeros_init(), "style", axis))
  return table(style)


def style_projection(num_styles: int, features: Array, style: Array | None,
                     name: str) -> Array:
  """A projection discriminator's class term (Miyato & Koyama, 2018):
  <embedding of style, features> per example, [batch, 1]; `features`
  [batch, ..., channels] are averaged over the middle axes first. Zero
  without `num_styles`. Call inside a compact method."""
  if not num_styles:
    return jnp.zeros((features.shape[0], 1), jnp.float32)
  if style is None:
    raise ValueError("a style-conditioned discriminator needs the clips' styles")
  pooled = features.reshape(features.shape[0], -1, features.shape[-1]).mean(axis=1)
  rows = style_rows(num_styles, features.shape[-1], style, name)
  return jnp.sum(rows.astype(jnp.float32) * pooled.astype(jnp.float32), -1, keepdims=True)


def styled_latent(num_styles: int, z: Array, style: Array | None) -> Array:
  """A class-conditional generator's input: z plus its style's learned
  embedding ("style_embedding", zero at the start); z itself without
  `num_styles`. Call inside a compact method."""
  if not num_styles:
    return z
  if style is None:
    raise ValueError("a style-conditioned generator needs the styles to generate")
  return z + style_rows(num_styles, z.shape[-1], style, "style_embedding",
                        "latent").astype(z.dtype)
