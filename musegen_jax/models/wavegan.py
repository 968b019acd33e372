"""WaveGAN generator and discriminator (Donahue, McAuley and Puckette, 2019).

Raw-audio GAN built from 1-D convolutions of kernel 25 and stride 4: the
generator upsamples a latent vector 4x per transposed convolution, the
discriminator downsamples 4x per strided convolution, with "phase shuffle"
(a random shift of each feature map by a few samples) between its layers.

The convolutions go through `conv1d` and `conv_transpose1d`, which pick the
backend in one place (`resolve_conv_impl`):
- "lax": `lax.conv_general_dilated`, the fast path on GPU and TPU;
- "matmul": the signal viewed as blocks of `stride` samples, then one GEMM
  per convolution (see `_block_corr`). XLA's CPU convolution is pathological
  for some of these shapes (transposed convolutions and the weight gradients
  of short, many-channel layers: 10-40x slower, see PERF_NOTES.md), and
  worse still under the gradient penalty's second derivatives. "auto" picks
  "matmul" on CPU and "lax" elsewhere.
Both compute the same function (tests compare them, and their first and
second derivatives, with `lax.conv_general_dilated`). On the 2-core CPU a
whole WGAN-GP step at d = 32 (5 critic updates, batch 16, 16384 samples)
takes about 3.8 s with "matmul" (8 s to compile), eager PyTorch 4.2 s, and
25-45 s with "lax" for the discriminator's long layers alone.

Parameters follow the original TensorFlow code's defaults: glorot-uniform
kernels and zero biases for every convolution and dense layer (TF's
`tf.layers` defaults), and TF's batch-norm epsilon of 1e-3.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from musegen_jax import backend

Array = jax.Array

CONV_IMPLS = ("auto", "lax", "matmul")
# slice_len -> (stride of each transposed conv after the dense projection).
# The initial feature map always has 16 positions: 16 * prod(strides) ==
# slice_len. Longer slices start with 32 * dim channels and add one layer.
SLICE_STRIDES = {16384: (4, 4, 4, 4, 4),
                 32768: (4, 4, 4, 4, 4, 2),
                 65536: (4, 4, 4, 4, 4, 4)}
_DIMENSION_NUMBERS = ("NWC", "WIO", "NWC")


def resolve_conv_impl(impl: str) -> str:
  """Maps "auto" to "matmul" on the CPU backend and to "lax" otherwise.

  Args:
    impl: "auto", "lax" or "matmul".

  Returns:
    "lax" or "matmul".
  """
  if impl == "auto":
    return "matmul" if backend.on_cpu() else "lax"
  if impl in ("lax", "matmul"):
    return impl
  raise ValueError(f"conv_impl={impl!r}; allowed: {list(CONV_IMPLS)}")


def same_padding(length: int, kernel_size: int, stride: int) -> tuple[int, int]:
  """(before, after) padding of a 'SAME' strided convolution, as XLA pads."""
  out_len = -(-length // stride)
  total = max((out_len - 1) * stride + kernel_size - length, 0)
  return total // 2, total - total // 2


# Both convolutions reduce to a stride-1 "block" correlation: view the signal
# as blocks of `stride` consecutive positions (a reshape), so that a kernel of
# K taps and stride s becomes ceil(K / s) taps over blocks. A block
# correlation is one GEMM, either with the input blocks copied into patches
# (im2col) or with every input block multiplied by every tap first and the
# products summed with shifts afterwards (col2im); `_use_im2col` picks by a
# rough cost model (at the benchmark shape the step time hardly depends on
# its constant). Zero padding stays virtual in col2im, so no FLOPs go to
# zero blocks there.

# Copying one element costs about as much time as this many FLOPs (a 2-core
# CPU: ~250 GFLOP/s of GEMM, a few G elements/s of copies).
_COPY_COST_FLOPS = 64


def _use_im2col(m: int, n: int, taps: int, ci: int, co: int) -> bool:
  """Cheaper to copy patches (n * taps * ci) than products (m * taps * co)?"""
  im2col = n * taps * ci * (co + _COPY_COST_FLOPS)
  col2im = m * taps * co * (ci + _COPY_COST_FLOPS)
  return im2col <= col2im


def _pad_blocks(x: Array, lo: int, hi: int) -> Array:
  """Zero-pads (or, for negative amounts, crops) axis 1."""
  return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (lo, hi, 0), (0, 0, 0)))


def _shifted_concat(x: Array, starts: list[int], n: int) -> Array:
  """[B, M, C] -> [B, n, len(starts) * C]: the slices x[s:s + n], side by side."""
  if len(starts) == 1:
    return lax.slice_in_dim(x, starts[0], starts[0] + n, axis=1)
  return jnp.concatenate(
      [lax.slice_in_dim(x, s, s + n, axis=1) for s in starts], axis=2)


def _block_corr_impl(x, w, pad_lo, n):
  """(y, patches or None); see `_block_corr`."""
  batch, m, ci = x.shape
  taps, _, co = w.shape
  if _use_im2col(m, n, taps, ci, co):
    p = _shifted_concat(_pad_blocks(x, pad_lo, n + taps - 1 - m - pad_lo),
                        list(range(taps)), n)
    y = jnp.dot(p.reshape(batch * n, taps * ci), w.reshape(taps * ci, co))
    return y.reshape(batch, n, co), p
  # Output o gets z[o + q - pad_lo, q]: each tap's products, shifted.
  z = jnp.dot(x.reshape(batch * m, ci),
              jnp.moveaxis(w, 0, 1).reshape(ci, taps * co))
  z = z.reshape(batch, m, taps, co)
  y = sum(_pad_blocks(z[:, :, q], pad_lo - q, n - m - pad_lo + q)
          for q in range(taps))
  return y, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _block_corr(x: Array, w: Array, pad_lo: int, n: int) -> Array:
  """Stride-1 correlation over blocks with virtual zero padding.

  y[:, o] = sum_q x[:, o + q - pad_lo] @ w[q] for o in [0, n), where x is
  zero outside its M blocks.

  Args:
    x: [B, M, Ci] blocks.
    w: [taps, Ci, Co].
    pad_lo: zero blocks before x (negative: x is cropped).
    n: output blocks.

  Returns:
    [B, n, Co].

  The input gradient is again a block correlation (of the output gradient
  with the flipped, channel-transposed kernel), so gradients of any order,
  such as the gradient penalty's, take this path too.
  """
  return _block_corr_impl(x, w, pad_lo, n)[0]


def _block_corr_fwd(x, w, pad_lo, n):
  y, p = _block_corr_impl(x, w, pad_lo, n)
  return y, (x, w, p)


def _block_corr_bwd(pad_lo, n, res, g):
  x, w, p = res
  batch, m, ci = x.shape
  taps, _, co = w.shape
  # dx[i] = sum_q g[i + pad_lo - q] @ w[q]^T.
  dx = _block_corr(g, jnp.swapaxes(jnp.flip(w, 0), 1, 2), taps - 1 - pad_lo, m)
  tn = (((0,), (0,)), ((), ()))  # Contract the (batch * position) rows.
  if p is not None:  # dw[q] = sum_o x[o + q - pad_lo]^T g[o]: patches^T @ g.
    dw = lax.dot_general(p.reshape(batch * n, taps * ci),
                         g.reshape(batch * n, co), tn).reshape(taps, ci, co)
  else:  # The same sum as x^T @ [g[i + pad_lo - q] for each q].
    g_pad = _pad_blocks(g, taps - 1 - pad_lo, m + pad_lo - n)
    r = _shifted_concat(g_pad, [taps - 1 - q for q in range(taps)], m)
    dw = lax.dot_general(x.reshape(batch * m, ci), r.reshape(batch * m, taps * co),
                         tn)
    dw = jnp.moveaxis(dw.reshape(ci, taps, co), 1, 0)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_block_corr.defvjp(_block_corr_fwd, _block_corr_bwd)


def conv1d(x: Array, kernel: Array, stride: int, impl: str = "auto") -> Array:
  """Strided 1-D convolution with 'SAME' padding (no bias).

  The same function as `lax.conv_general_dilated(x, kernel, (stride,),
  'SAME', dimension_numbers=('NWC', 'WIO', 'NWC'))`.

  Args:
    x: [batch, length, in_channels].
    kernel: [kernel_size, in_channels, out_channels].
    stride: the output keeps every `stride`-th position.
    impl: "auto", "lax" or "matmul" (see `resolve_conv_impl`).

  Returns:
    [batch, ceil(length / stride), out_channels].
  """
  impl = resolve_conv_impl(impl)
  if impl == "lax":
    return lax.conv_general_dilated(x, kernel, (stride,), "SAME",
                                    dimension_numbers=_DIMENSION_NUMBERS)
  batch, length, cin = x.shape
  k, _, cout = kernel.shape
  out_len = -(-length // stride)
  taps = -(-k // stride)
  pad_lo, _ = same_padding(length, k, stride)
  # Output o, tap j = q * stride + r reads input o * stride + j - pad_lo.
  # With the input shifted right by rem = pad_lo % stride positions, that is
  # offset r of input block o + q - pad_lo // stride; the whole blocks of
  # padding stay virtual.
  pad_blocks, rem = divmod(pad_lo, stride)
  blocks = -(-(length + rem) // stride)
  x = lax.pad(x, jnp.zeros((), x.dtype),
              ((0, 0, 0), (rem, blocks * stride - length - rem, 0), (0, 0, 0)))
  kernel = jnp.pad(kernel, ((0, taps * stride - k), (0, 0), (0, 0)))
  return _block_corr(x.reshape(batch, blocks, stride * cin),
                     kernel.reshape(taps, stride * cin, cout), pad_blocks,
                     out_len)


def conv_transpose1d(x: Array, kernel: Array, stride: int,
                     impl: str = "auto") -> Array:
  """Transposed 1-D convolution: the adjoint of a 'SAME' strided `conv1d`.

  The linear map x -> y such that <y, v> = <x, conv1d(v, kernel^T, stride)>
  for every v of shape [batch, length * stride, out_channels], where kernel^T
  is `kernel` with its channel axes swapped ([K, out_channels,
  in_channels]). This is TF's `conv1d_transpose` with 'SAME' padding, and
  what autodiff computes as the input gradient of that convolution.

  Args:
    x: [batch, length, in_channels].
    kernel: [kernel_size, in_channels, out_channels].
    stride: upsampling factor.
    impl: "auto", "lax" or "matmul" (see `resolve_conv_impl`).

  Returns:
    [batch, length * stride, out_channels].
  """
  impl = resolve_conv_impl(impl)
  batch, length, cin = x.shape
  k, _, cout = kernel.shape
  pad_lo, _ = same_padding(length * stride, k, stride)
  if impl == "lax":
    # The input gradient of the strided convolution, spelled out: dilate the
    # input by `stride`, pad, and correlate with the flipped kernel.
    return lax.conv_general_dilated(
        x, jnp.flip(kernel, 0), (1,),
        [(k - 1 - pad_lo, stride - 1 + pad_lo)], lhs_dilation=(stride,),
        dimension_numbers=_DIMENSION_NUMBERS)
  # Input i, tap j = q * stride + r adds x[i] @ kernel[j] to output
  # i * stride + j - pad_lo: output block i + q, offset r, shifted by pad_lo.
  # Over blocks that is a full correlation with the tap groups reversed;
  # only the output blocks that overlap the cropped output are computed.
  taps = -(-k // stride)
  first = pad_lo // stride
  last = (pad_lo + length * stride - 1) // stride
  kernel = jnp.pad(kernel, ((0, taps * stride - k), (0, 0), (0, 0)))
  w = kernel.reshape(taps, stride, cin, cout)[::-1]
  w = jnp.moveaxis(w, 2, 1).reshape(taps, cin, stride * cout)
  y = _block_corr(x, w, taps - 1 - first, last - first + 1)
  y = y.reshape(batch, (last - first + 1) * stride, cout)
  return lax.slice_in_dim(y, pad_lo - first * stride,
                          pad_lo - first * stride + length * stride, axis=1)


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
  """Strided 'SAME' 1-D convolution with bias (see `conv1d`).

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


def _check_slice_len(slice_len: int) -> tuple[int, ...]:
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

  @nn.compact
  def __call__(self, z: Array, train: bool = False) -> Array:
    """Generates waveforms.

    Args:
      z: [batch, latent_dim] latent vectors.
      train: batch norm uses (and updates) batch statistics.

    Returns:
      [batch, slice_len, num_channels] float32 in [-1, 1].
    """
    strides = _check_slice_len(self.slice_len)
    dim_mul = 16 if self.slice_len == 16384 else 32
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

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """Scores waveforms.

    Args:
      x: [batch, slice_len, channels] waveforms.
      train: apply phase shuffle (needs the "phase_shuffle" rng) and use
        batch statistics in batch norm.

    Returns:
      [batch] float32 logits.
    """
    strides = _check_slice_len(self.slice_len)
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
    x = x.reshape(x.shape[0], -1)
    logits = nn.Dense(1, dtype=self.dtype,
                      kernel_init=_logical(nn.initializers.glorot_uniform(),
                                           "mlp", None),
                      bias_init=_logical(nn.initializers.zeros_init(), None),
                      name="output")(x)
    return logits[:, 0].astype(jnp.float32)


def _conv_layer_flops(dim: int, slice_len: int, batch: int, kernel_size: int
                      ) -> tuple[list[int], list[int]]:
  """Per-layer forward matmul FLOPs of (generator, discriminator) convs."""
  strides = _check_slice_len(slice_len)
  dim_mul = 16 if slice_len == 16384 else 32
  gen, length, cin = [], 16, dim_mul * dim
  for i, stride in enumerate(strides):
    cout = 1 if i == len(strides) - 1 else dim * max(dim_mul >> (i + 1), 1)
    # Every input position meets every tap: length * K * cin * cout MACs.
    gen.append(2 * batch * length * kernel_size * cin * cout)
    length, cin = length * stride, cout
  disc, length, cin = [], slice_len, 1
  for i, stride in enumerate(strides):
    length, cout = length // stride, dim << i
    # Every output position reads K taps.
    disc.append(2 * batch * length * kernel_size * cin * cout)
    cin = cout
  return gen, disc


def train_flops(dim: int, slice_len: int, batch: int, critic_steps: int, *,
                latent_dim: int = 100, kernel_size: int = 25) -> int:
  """Estimated matmul FLOPs of one WGAN-GP step, for MFU reporting.

  Counts convolution and dense MACs as 2 FLOPs (the true arithmetic, not
  padded taps); element-wise work and the optimizer are left out. With Gf
  and Df the forward FLOPs of G and D on `batch` examples, and forward +
  backward counted as 3x forward:
  - each critic step: G forward (no G gradient) + D forward and backward on
    the real and the fake batch (2 x 3 Df) + the gradient penalty on the
    interpolates, counted as one D forward and backward (3 Df) plus one more
    for its double backward (3 Df): Gf + 12 Df;
  - the generator step: G and D forward and backward: 3 Gf + 3 Df.

  Args:
    dim: model width (`dim` of both networks).
    slice_len: samples per example.
    batch: examples per batch.
    critic_steps: discriminator updates per generator update.
    latent_dim: generator input size.
    kernel_size: convolution kernel size.

  Returns:
    FLOPs of `critic_steps` D updates and one G update.
  """
  gen, disc = _conv_layer_flops(dim, slice_len, batch, kernel_size)
  dim_mul = 16 if slice_len == 16384 else 32
  g_fwd = sum(gen) + 2 * batch * latent_dim * 16 * dim_mul * dim
  d_fwd = sum(disc) + 2 * batch * 16 * dim_mul * dim
  return critic_steps * (g_fwd + 12 * d_fwd) + 3 * g_fwd + 3 * d_fwd
