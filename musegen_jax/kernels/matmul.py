"""Low-precision matmuls: operands in a narrow dtype (bfloat16), sums in float32.

- `matmul`: x @ w with a hand-written backward pass whose two matmuls also
  take their operands in the narrow dtype, each with row-major operands
  (`swap_last_axes`), the form a CPU's bfloat16 matrix units take.
- `matmul_reference`: the same forward function, differentiated by autodiff.
- `project`: the chooser. `model.matmul_dtype` None gives a plain dot in the
  activations' dtype, a dtype gives `matmul`.
- `swap_last_axes`, `operand`, `dot`, `outer_sum`: the pieces the
  recurrences' and the attention's own backward passes build their matmuls
  from. `swap_last_axes` is the one that depends on the target platform
  (`backend.platform()`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from musegen_jax import backend

Array = jax.Array


def swap_last_axes(a: Array) -> Array:
  """`a` with its last two axes swapped, as a row-major copy XLA keeps.

  XLA:CPU folds a plain transpose into the dot that reads it. The dot then
  has a transposed operand, and XLA:CPU runs such a dot outside its fast
  matmul library (YNNPACK): batched ones through Eigen (slower at the
  Transformer's attention shapes), and bfloat16 ones in float32 after
  converting both operands (several times slower than the bfloat16 dot on a
  CPU with AMX). A transpose through a third, unit axis is not folded, so
  the dot that reads it is a plain row-major one. On other platforms this
  is a plain transpose, which their matmul kernels take without a copy.
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


def matmul_reference(x: Array, w: Array, dtype: Any) -> Array:
  """`matmul`'s forward function, differentiated by autodiff (whose backward
  matmuls round their results to `dtype` before the casts back)."""
  y = jnp.dot(x.astype(dtype), w.astype(dtype),
              preferred_element_type=jnp.float32)
  return y.astype(x.dtype)


def project(x: Array, kernel: Array, dtype: Any, matmul_dtype: Any) -> Array:
  """x [..., in] @ kernel [in, out] in `dtype`; through `matmul` (operands
  in matmul_dtype, summed in float32) when matmul_dtype is set."""
  if matmul_dtype is None:
    return jnp.dot(x.astype(dtype), kernel.astype(dtype))
  return matmul(x.astype(dtype), kernel, matmul_dtype)


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
