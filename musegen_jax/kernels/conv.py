"""1-D convolutions with 'SAME' padding: strided ones and their transposes.

- `conv1d_lax`, `conv_transpose1d_lax`: `lax.conv_general_dilated`, the
  fast path on GPU and TPU, and the reference the block path is tested
  against.
- `conv1d_blocks`, `conv_transpose1d_blocks`: the signal viewed as blocks of
  `stride` samples, so that each convolution is one stride-1 correlation
  over blocks, one GEMM (`_block_corr`, with a hand-written backward pass
  that is again a block correlation, so the gradient penalty's second
  derivatives take this path too). The transposed convolution is a
  polyphase one: each output phase (offset within a block) gets its own
  group of taps. XLA's CPU convolution is pathological for some of these
  shapes (transposed convolutions and the weight gradients of short,
  many-channel layers), and worse still under second derivatives.
- `resolve_conv_impl`, `conv1d`, `conv_transpose1d`: the chooser. The
  config's `model.conv_impl` ("auto", "lax", "matmul") and the target
  platform (`backend.platform()`) pick "matmul" (the block path) on CPU and
  "lax" elsewhere.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from musegen_jax import backend

Array = jax.Array

CONV_IMPLS = ("auto", "lax", "matmul")
_DIMENSION_NUMBERS = ("NWC", "WIO", "NWC")


def resolve_conv_impl(impl: str) -> str:
  """Maps "auto" to "matmul" on the CPU platform and to "lax" otherwise.

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

# Copying one element costs about as much time as this many FLOPs on a CPU
# (the ratio of its GEMM throughput to its copy throughput).
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


def conv1d_lax(x: Array, kernel: Array, stride: int) -> Array:
  """`conv1d` through `lax.conv_general_dilated`."""
  return lax.conv_general_dilated(x, kernel, (stride,), "SAME",
                                  dimension_numbers=_DIMENSION_NUMBERS)


def conv1d_blocks(x: Array, kernel: Array, stride: int) -> Array:
  """`conv1d` as one block correlation (`_block_corr`)."""
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
  if resolve_conv_impl(impl) == "lax":
    return conv1d_lax(x, kernel, stride)
  return conv1d_blocks(x, kernel, stride)


def conv_transpose1d_lax(x: Array, kernel: Array, stride: int) -> Array:
  """`conv_transpose1d` through `lax.conv_general_dilated`: the input
  gradient of the strided convolution, spelled out (dilate the input by
  `stride`, pad, and correlate with the flipped kernel)."""
  length = x.shape[1]
  k = kernel.shape[0]
  pad_lo, _ = same_padding(length * stride, k, stride)
  return lax.conv_general_dilated(
      x, jnp.flip(kernel, 0), (1,),
      [(k - 1 - pad_lo, stride - 1 + pad_lo)], lhs_dilation=(stride,),
      dimension_numbers=_DIMENSION_NUMBERS)


def conv_transpose1d_blocks(x: Array, kernel: Array, stride: int) -> Array:
  """`conv_transpose1d` as one block correlation (`_block_corr`)."""
  batch, length, cin = x.shape
  k, _, cout = kernel.shape
  pad_lo, _ = same_padding(length * stride, k, stride)
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
  if resolve_conv_impl(impl) == "lax":
    return conv_transpose1d_lax(x, kernel, stride)
  return conv_transpose1d_blocks(x, kernel, stride)
