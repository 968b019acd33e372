"""WaveGAN generator and discriminator (Donahue, McAuley and Puckette, 2019).

Raw-audio GAN built from 1-D convolutions of kernel 25 and stride 4: the
generator upsamples a latent vector 4x per transposed convolution, the
discriminator downsamples 4x per strided convolution, with "phase shuffle"
(a random shift of each feature map by a few samples) between its layers.

The convolutions are `kernels.conv.conv1d` and `conv_transpose1d`, which
pick their implementation from `conv_impl` and the target platform
(`kernels.conv.resolve_conv_impl`): "lax" (`lax.conv_general_dilated`) on
GPU and TPU, "matmul" (block correlations, one GEMM each) on CPU, where
XLA's convolutions are slow for some of these shapes.

Parameters follow the original TensorFlow code's defaults: glorot-uniform
kernels and zero biases for every convolution and dense layer (TF's
`tf.layers` defaults), and TF's batch-norm epsilon of 1e-3.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from musegen_jax.kernels.conv import conv1d, conv_transpose1d
from musegen_jax.models import layers

Array = jax.Array

# slice_len -> (stride of each transposed conv after the dense projection).
# The initial feature map always has 16 positions: 16 * prod(strides) ==
# slice_len. Longer slices start with 32 * dim channels and add one layer.
SLICE_STRIDES = {16384: (4, 4, 4, 4, 4),
                 32768: (4, 4, 4, 4, 4, 2),
                 65536: (4, 4, 4, 4, 4, 4)}


def phase_shuffle(x: Array, rng: Array, n: int) -> Array:
  """Shifts each example by its own random offset in [-n, n].

  Output position t of an example shifted by s holds input position t - s;
  positions that fall outside the input are filled by reflection (as
  `jnp.pad(mode="reflect")`), never with zeros or wrapped samples.

  Args:
    x: [batch, length, channels], length > n.
    rng: PRNG key for the shifts.
    n: largest shift.

  Returns:
    [batch, length, channels], the same shape.
  """
  if n == 0:
    return x
  batch, length, _ = x.shape
  if length <= n:
    raise ValueError(f"phase_shuffle needs length > n; got length={length}, n={n}")
  shifts = jax.random.randint(rng, (batch, 1, 1), -n, n + 1)
  padded = jnp.pad(x, ((0, 0), (n, n), (0, 0)), mode="reflect")
  # A select among the 2n + 1 shifted views: fuses into one elementwise loop
  # (forward and backward), unlike a per-example gather and its scatter.
  out = jnp.zeros_like(x)
  for s in range(-n, n + 1):
    view = lax.slice_in_dim(padded, n - s, n - s + length, axis=1)
    out = jnp.where(shifts == s, view, out)
  return out


def _logical(init, *names: str | None):
  """`init` whose parameter carries Flax logical axis names (one per dimension)."""
  return nn.with_logical_partitioning(init, names)


class Conv1D(nn.Module):
  """Strided 'SAME' 1-D convolution with bias (`kernels.conv.conv1d`, or
  `conv_transpose1d` with `transpose`).

  Logical axis names: kernel ("kernel", "conv_in", "conv_out"), bias
  ("conv_out",).
  """

  features: int
  kernel_size: int
  stride: int
  transpose: bool = False
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[batch, length, in] -> [batch, length / stride (or * stride), features]."""
    kernel = self.param("kernel", _logical(nn.initializers.glorot_uniform(),
                                           "kernel", "conv_in", "conv_out"),
                        (self.kernel_size, x.shape[-1], self.features))
    bias = self.param("bias", _logical(nn.initializers.zeros_init(), "conv_out"),
                      (self.features,))
    op = conv_transpose1d if self.transpose else conv1d
    y = op(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
           self.conv_impl)
    return y + bias.astype(self.dtype)


def check_slice_len(slice_len: int) -> tuple[int, ...]:
  if slice_len not in SLICE_STRIDES:
    raise ValueError(f"slice_len={slice_len}; allowed: {sorted(SLICE_STRIDES)}")
  return SLICE_STRIDES[slice_len]


def _batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  # TF's tf.layers.batch_normalization defaults: momentum 0.99, epsilon 1e-3.
  return nn.BatchNorm(use_running_average=not train, momentum=0.99,
                      epsilon=1e-3, dtype=dtype, name=name)


class WaveGANGenerator(nn.Module):
  """Latent vector -> waveform in [-1, 1].

  Dense to [16, 16 * dim] (32 * dim for slices over 16384), then transposed
  convolutions halving the channels and upsampling 4x (the last one of a
  32768 slice 2x), ReLU between them, tanh at the end. With
  `use_batchnorm`, batch norm before every ReLU.
  """

  slice_len: int = 16384
  latent_dim: int = 100
  dim: int = 64
  kernel_size: int = 25
  num_channels: int = 1
  use_batchnorm: bool = False
  conv_impl: str = "auto"
  dtype: Any = jnp.float32
  # > 0: class-conditional, z plus a learned embedding of the clip's style.
  num_styles: int = 0

  @nn.compact
  def __call__(self, z: Array, train: bool = False, style: Array | None = None) -> Array:
    """Generates waveforms.

    Args:
      z: [batch, latent_dim] latent vectors.
      train: batch norm uses (and updates) batch statistics.
      style: [batch] style ids (a conditioned generator's, `num_styles`).

    Returns:
      [batch, slice_len, num_channels] float32 in [-1, 1].
    """
    strides = check_slice_len(self.slice_len)
    dim_mul = 16 if self.slice_len == 16384 else 32
    z = layers.styled_latent(self.num_styles, z, style)
    x = nn.Dense(16 * dim_mul * self.dim, dtype=self.dtype,
                 kernel_init=_logical(nn.initializers.glorot_uniform(),
                                      "latent", "mlp"),
                 bias_init=_logical(nn.initializers.zeros_init(), "mlp"),
                 name="z_project")(z.astype(self.dtype))
    x = x.reshape(z.shape[0], 16, dim_mul * self.dim)
    for i, stride in enumerate(strides):
      if self.use_batchnorm:
        x = _batch_norm(train, self.dtype, f"bn_{i}")(x)
      x = nn.relu(x)
      last = i == len(strides) - 1
      features = self.num_channels if last else self.dim * max(dim_mul >> (i + 1), 1)
      x = Conv1D(features, self.kernel_size, stride, transpose=True,
                 conv_impl=self.conv_impl, dtype=self.dtype,
                 name=f"upconv_{i}")(x)
    return jnp.tanh(x).astype(jnp.float32)


class WaveGANDiscriminator(nn.Module):
  """Waveform -> one real/fake logit per example.

  Strided convolutions doubling the channels from `dim` (to 16 * dim, or
  32 * dim for slices over 16384) and downsampling 4x (the last one of a
  32768 slice 2x), LeakyReLU(0.2) after each, phase shuffle after all but the
  last (in training), then a dense layer on the flattened features. With
  `use_batchnorm`, batch norm after every convolution but the first, as in
  the original.
  """

  slice_len: int = 16384
  dim: int = 64
  kernel_size: int = 25
  phase_shuffle: int = 2
  use_batchnorm: bool = False
  conv_impl: str = "auto"
  dtype: Any = jnp.float32
  # > 0: a projection discriminator (`layers.style_projection` of the last
  # features, pooled over time, added to the logit).
  num_styles: int = 0

  @nn.compact
  def __call__(self, x: Array, train: bool = False, style: Array | None = None) -> Array:
    """Scores waveforms.

    Args:
      x: [batch, slice_len, channels] waveforms.
      train: apply phase shuffle (needs the "phase_shuffle" rng) and use
        batch statistics in batch norm.
      style: [batch] style ids (a projection discriminator's, `num_styles`).

    Returns:
      [batch] float32 logits.
    """
    strides = check_slice_len(self.slice_len)
    if x.shape[1] != self.slice_len:
      raise ValueError(f"input length {x.shape[1]} != slice_len={self.slice_len}")
    x = x.astype(self.dtype)
    for i, stride in enumerate(strides):
      x = Conv1D(self.dim << i, self.kernel_size, stride,
                 conv_impl=self.conv_impl, dtype=self.dtype,
                 name=f"downconv_{i}")(x)
      if self.use_batchnorm and i > 0:
        x = _batch_norm(train, self.dtype, f"bn_{i}")(x)
      x = nn.leaky_relu(x, 0.2)
      if train and self.phase_shuffle > 0 and i < len(strides) - 1:
        x = phase_shuffle(x, self.make_rng("phase_shuffle"), self.phase_shuffle)
    features = x
    x = x.reshape(x.shape[0], -1)
    logits = nn.Dense(1, dtype=self.dtype,
                      kernel_init=_logical(nn.initializers.glorot_uniform(),
                                           "mlp", None),
                      bias_init=_logical(nn.initializers.zeros_init(), None),
                      name="output")(x)
    logits = logits[:, 0].astype(jnp.float32)
    if self.num_styles:
      logits += layers.style_projection(self.num_styles, features, style,
                                        "style_projection")[:, 0]
    return logits
