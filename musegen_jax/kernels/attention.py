"""Causal self-attention over head-major [batch, heads, length, head_dim].

- `causal_attention`: blocked over queries, so the masked-out upper triangle
  is mostly never computed, with a hand-written backward pass that keeps
  only the probabilities; the fast path on CPU.
- `causal_attention_reference`: the whole [length, length] square, masked,
  differentiated by autodiff, for the equality tests.
- `fused_attention`: `jax.nn.dot_product_attention`, whose fused kernels are
  the fast path on GPU and TPU.
- `resolve_attention_impl` and `self_attention`: the chooser. The config's
  `model.attention_impl` ("auto", "fused", "einsum") and the target
  platform (`backend.platform()`) pick one of the two fast paths.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from musegen_jax import backend
from musegen_jax.kernels.matmul import swap_last_axes

Array = jax.Array

ATTENTION_IMPLS = ("auto", "fused", "einsum")


def resolve_attention_impl(impl: str) -> str:
  """Maps "auto" to "einsum" (`causal_attention`, whose hand-written
  backward pass is the faster one there) on CPU and to "fused" (the
  platform's fused kernels) on GPU and TPU.

  Args:
    impl: "auto", "fused" or "einsum".

  Returns:
    "fused" or "einsum".
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r}; allowed: {ATTENTION_IMPLS}")
  if impl == "auto":
    return "einsum" if backend.on_cpu() else "fused"
  return impl


def query_blocks(length: int) -> int:
  """Query blocks of `causal_attention`: up to 8, each of >= 64 queries."""
  for blocks in (8, 4, 2):
    if length % blocks == 0 and length // blocks >= 64:
      return blocks
  return 1


def window_mask(query_pos: Array, key_pos: Array, window: int) -> Array:
  """[queries, keys] bool: key <= query, and (window > 0) query - key < window."""
  mask = key_pos[None, :] <= query_pos[:, None]
  if window:
    mask &= key_pos[None, :] > query_pos[:, None] - window
  return mask


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def causal_attention(q: Array, k: Array, v: Array, bias: Array | None,
                     scale: float, window: int = 0) -> Array:
  """Causal softmax attention over head-major [batch, heads, length, dim].

  softmax(q k^T * scale + bias, masked to keys <= query) v, computed in
  query blocks (`query_blocks`): block i attends only to the keys up to
  its last query, so the masked-out upper triangle is mostly never
  computed (4 blocks: 10/16 of the full square's work). The backward pass
  keeps only the probabilities: with y the output and dy its gradient, the
  logits' gradient is p * (dy v^T - rowsum(dy * y)) (the row sum of dp * p
  equals that of dy * y, so no reduction over the probabilities is
  needed). `bias` [batch, heads, length, length] (relative logits) or None.
  `window` > 0: each query sees only its last `window` keys (itself
  included). On CPU this is faster than a whole-square formulation
  (`causal_attention_reference`). q, k and v may be bfloat16: every matmul
  sums in float32, the key and value gradients accumulate in float32, and
  the output and gradients come back in the inputs' dtypes (the bias's
  gradient in the bias's).
  """
  return _attention_fwd(q, k, v, bias, scale, window)[0]


def _attention_fwd(q, k, v, bias, scale, window):
  length = q.shape[2]
  size = length // query_blocks(length)
  outputs, probs = [], []
  for start in range(0, length, size):
    keys = start + size  # This block's queries see keys [0, keys).
    logits = jnp.einsum("bhte,bhse->bhts", q[:, :, start:keys], k[:, :, :keys],
                        preferred_element_type=jnp.float32) * scale
    if bias is not None:
      logits = logits + bias[:, :, start:keys, :keys].astype(jnp.float32)
    mask = window_mask(jnp.arange(start, keys), jnp.arange(keys), window)
    p = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
    outputs.append(jnp.einsum("bhts,bhse->bhte", p.astype(v.dtype),
                              v[:, :, :keys],
                              preferred_element_type=jnp.float32))
    probs.append(p)
  y = jnp.concatenate(outputs, 2).astype(q.dtype)
  # A scalar marker (None is an empty pytree) says whether bias was given.
  return y, (q, k, v, tuple(probs), y,
             None if bias is None else jnp.zeros((), bias.dtype))


def _attention_bwd(scale, window, res, dy):
  del window  # The probabilities are zero outside it.
  q, k, v, probs, y, bias_marker = res
  length = q.shape[2]
  size = length // len(probs)
  delta = jnp.sum(dy.astype(jnp.float32) * y.astype(jnp.float32), -1,
                  keepdims=True)
  dq, d_bias = [], []
  # Sums in float32 whatever the operands' dtype (bfloat16: one rounding,
  # at the end).
  dk = jnp.zeros(k.shape, jnp.float32)
  dv = jnp.zeros(v.shape, jnp.float32)
  f32 = {"preferred_element_type": jnp.float32}
  for block, p in enumerate(probs):
    start, keys = block * size, (block + 1) * size
    dy_block = dy[:, :, start:keys]
    # dv and dk contract over the block's queries: p and ds are transposed
    # first (`swap_last_axes`) so both matmuls are row-major.
    dv = dv.at[:, :, :keys].add(jnp.einsum(
        "bhst,bhte->bhse", swap_last_axes(p.astype(dy.dtype)), dy_block, **f32))
    dp = jnp.einsum("bhte,bhse->bhts", dy_block, v[:, :, :keys], **f32)
    d_logits = p * (dp - delta[:, :, start:keys])
    ds = (d_logits * scale).astype(q.dtype)
    dq.append(jnp.einsum("bhts,bhse->bhte", ds, k[:, :, :keys], **f32))
    dk = dk.at[:, :, :keys].add(jnp.einsum(
        "bhst,bhte->bhse", swap_last_axes(ds), q[:, :, start:keys], **f32))
    if bias_marker is not None:
      d_bias.append(jnp.pad(d_logits.astype(bias_marker.dtype),
                            [(0, 0), (0, 0), (0, 0), (0, length - keys)]))
  d_bias = None if bias_marker is None else jnp.concatenate(d_bias, 2)
  return (jnp.concatenate(dq, 2).astype(q.dtype), dk.astype(k.dtype),
          dv.astype(v.dtype), d_bias)


causal_attention.defvjp(_attention_fwd, _attention_bwd)


def causal_attention_reference(q: Array, k: Array, v: Array,
                               bias: Array | None, scale: float,
                               window: int = 0) -> Array:
  """`causal_attention` over the whole [length, length] square: the logits
  summed in float32, masked, softmax, and the output in q's dtype;
  differentiated by autodiff."""
  length = q.shape[2]
  logits = jnp.einsum("bhte,bhse->bhts", q, k,
                      preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  positions = jnp.arange(length)
  mask = window_mask(positions, positions, window)
  p = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
  return jnp.einsum("bhts,bhse->bhte", p.astype(v.dtype), v,
                    preferred_element_type=jnp.float32).astype(q.dtype)


def fused_attention(q: Array, k: Array, v: Array, bias: Array | None,
                    scale: float, window: int = 0) -> Array:
  """`causal_attention` through `jax.nn.dot_product_attention` (a GPU's or
  TPU's fused kernel); the bias is cast to q's dtype."""
  # [batch, length, heads, head_dim] for the library call; XLA fuses these
  # transposes into its operands.
  y = jax.nn.dot_product_attention(
      *(jnp.swapaxes(t, 1, 2) for t in (q, k, v)),
      bias=None if bias is None else bias.astype(q.dtype), scale=scale,
      is_causal=True, local_window_size=(window - 1, 0) if window else None)
  return jnp.swapaxes(y, 1, 2)


def self_attention(q: Array, k: Array, v: Array, bias: Array | None,
                   scale: float, window: int = 0, impl: str = "auto") -> Array:
  """Causal attention of a full pass from position 0, by the implementation
  `resolve_attention_impl(impl)` names: `fused_attention` or
  `causal_attention`.

  Args:
    q, k, v: [batch, heads, length, head_dim], in the matmuls' operand dtype.
    bias: [batch, heads, length, length] additive logits (relative
      attention) or None.
    scale: the logits' factor.
    window: > 0: each query sees only its last `window` keys (itself
      included); 0: the whole past.
    impl: "auto", "fused" or "einsum".

  Returns:
    [batch, heads, length, head_dim] in q's dtype.
  """
  if resolve_attention_impl(impl) == "fused":
    return fused_attention(q, k, v, bias, scale, window)
  return causal_attention(q, k, v, bias, scale, window)
