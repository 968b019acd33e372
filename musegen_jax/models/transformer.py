"""Decoder-only Transformer language model with an optional relative attention.

Pre-LayerNorm blocks (causal self-attention, then a GELU MLP, each added to
the residual stream), learned, sinusoidal or no absolute positions, and either
plain ("absolute") attention or the relative attention of Music Transformer
(Huang et al. 2018) in its memory-efficient "skewing" form: each head learns
relative embeddings E_r [max_len, head_dim]; the relative logits Q E_r^T are
shifted into place by a pad, reshape and slice (`skew`), so no
[length, length, head_dim] tensor is ever formed. The relative logits enter
`jax.nn.dot_product_attention` as an additive bias, so a GPU still gets its
fused attention kernel.

`attention_window=W` makes the attention local: each position sees itself
and the W - 1 before it (a mask; the blocked CPU attention still computes
each block's whole key prefix, and the sampling cache still holds max_len
positions, so it saves no time or memory): a modelling choice, which
lowers the JSB Transformer's loss per frame.

Sampling state (`carry`) is a fixed-size key/value cache per layer and the
next position, so one-token steps run inside `lax.scan`:

    logits, carry = model.apply(v, primer)                 # full causal pass
    logits, carry = model.apply(v, token[:, None], carry=carry)  # one step

The output projection is untied from the token embedding: with a vocabulary of
a few hundred event tokens the head is a small share of the parameters, and
keeping it separate lets the embedding keep a small init scale while the head
uses a fan-in init. Attention probabilities are not dropped (the fused kernels
take no dropout); dropout acts on the embeddings and on each residual branch.

Parameters carry logical axis names (`nn.with_logical_partitioning`): "vocab",
"embed", "mlp", "heads", "head_dim" (None: never sharded). Without logical
axis rules they are plain metadata; `nn.unbox` strips them.

Limits: a sequence longer than max_len fails with a ValueError naming it, as
does a cached call whose (concrete) position would run past it; inside a
compiled loop the position is traced and can't be checked, so such a step
returns NaN logits instead. Callers that sample should keep primer + length
<= max_len. Only the XLA attention path has been run (CPU); whether a GPU's
fused kernel takes the gradient of the relative-logits bias is untested.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musegen_jax.kernels import attention as attention_kernels
from musegen_jax.kernels.attention import window_mask
from musegen_jax.kernels.matmul import project
from musegen_jax.models.layers import Dropout

Array = jax.Array
# {"layers": ({"k": [batch, heads, max_len, head_dim], "v": same}, ...),
#  "pos": int32 scalar, the position the next token is written at}.
Carry = dict[str, Any]

ATTENTION_KINDS = ("absolute", "relative")
POSITION_ENCODINGS = ("learned", "sinusoidal", "none")


def _init(base, *names):
  return nn.with_logical_partitioning(base, names)


def _fan_in(in_axis, out_axis):
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                          in_axis=in_axis, out_axis=out_axis)


def skew(rel_logits: Array, offset: Array | int = 0) -> Array:
  """Moves relative logits from distance-indexed to key-indexed columns.

  Column m of `rel_logits` holds the logit for relative distance
  m - (keys - 1) (so the last column is distance 0). Row t is the query at
  absolute position offset + t; the result's column j is key position j:

      out[..., t, j] = rel_logits[..., t, j - (offset + t) + keys - 1]

  wherever that index is in range, i.e. for every causal pair j <= offset + t
  (offset + queries <= keys). Other entries are unspecified (mask them). One
  pad, reshape and slice (Huang et al. 2018, section 3.4.1), no gather.

  Args:
    rel_logits: [..., queries, keys].
    offset: position of the first query; an int or a traced int32 scalar.

  Returns:
    [..., queries, keys].
  """
  *lead, queries, keys = rel_logits.shape
  # One zero column in front: row t then starts t flat positions later in a
  # row width of `keys`, which shifts row t by t relative to row 0.
  padded = jnp.pad(rel_logits, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])
  flat = padded.reshape(*lead, queries * (keys + 1))
  if isinstance(offset, int) and offset == 0 and queries == keys:
    out = flat[..., keys:]  # Exactly queries * keys entries remain.
  else:
    flat = jnp.pad(flat, [(0, 0)] * len(lead) + [(0, keys)])
    out = jax.lax.dynamic_slice_in_dim(flat, keys - offset, queries * keys,
                                       axis=-1)
  return out.reshape(*lead, queries, keys)


def sinusoidal_positions(positions: Array, dim: int) -> Array:
  """[..., dim] sin/cos encodings of integer `positions` (Vaswani et al.)."""
  half = dim // 2
  freqs = np.exp(-math.log(10_000.0) * np.arange(half) / max(half - 1, 1))
  angles = positions[..., None].astype(jnp.float32) * freqs.astype(np.float32)
  enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)
  if dim % 2:
    enc = jnp.pad(enc, [(0, 0)] * (enc.ndim - 1) + [(0, 1)])
  return enc


class SelfAttention(nn.Module):
  """Multi-head causal self-attention with a fused QKV projection."""

  num_heads: int
  max_len: int
  attention: str = "absolute"
  dtype: Any = jnp.float32
  attention_impl: str = "auto"
  window: int = 0
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, cache: dict[str, Array] | None = None,
               pos: Array | None = None, cache_len: int | None = None
               ) -> tuple[Array, dict[str, Array]]:
    """Attends over the sequence (cache None) or over the cache.

    Args:
      x: [batch, length, embed] normalized inputs.
      cache: None for a full causal pass from position 0; else {"k", "v"},
        each [batch, heads, max_len, head_dim], holding positions < pos.
      pos: int32 scalar, the position of x[:, 0] (with `cache`).
      cache_len: positions the cache a full pass returns holds (default
        max_len); a cached call attends over all of its cache's positions.

    Returns:
      ([batch, length, embed] outputs, the cache with x's keys and values).
    """
    batch, length, embed = x.shape
    heads = self.num_heads
    head_dim = embed // heads
    qkv_kernel = self.param(
        "qkv_kernel", _init(_fan_in(0, (1, 2, 3)), "embed", None, "heads",
                            "head_dim"), (embed, 3, heads, head_dim))
    qkv_bias = self.param("qkv_bias", _init(nn.initializers.zeros, None,
                                            "heads", "head_dim"),
                          (3, heads, head_dim))
    out_kernel = self.param(
        "out_kernel", _init(_fan_in((0, 1), 2), "heads", "head_dim", "embed"),
        (heads, head_dim, embed))
    out_bias = self.param("out_bias", _init(nn.initializers.zeros, "embed"),
                          (embed,))
    dtype = self.dtype
    # Head-major throughout ([batch, heads, length, head_dim]): the layout
    # the attention matmuls batch over, so nothing is transposed per layer.
    # The cache has it too: with a sequence-major cache each sampling step
    # would copy the whole cache.
    if self.matmul_dtype is None:
      qkv = jnp.einsum("btd,dkhe->kbhte", x, qkv_kernel.astype(dtype))
    else:
      qkv = project(x, qkv_kernel.reshape(embed, -1), dtype, self.matmul_dtype)
      qkv = qkv.reshape(batch, length, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
    qkv = qkv + qkv_bias.astype(dtype)[:, None, :, None]
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = 1.0 / math.sqrt(head_dim)

    if cache is None:
      keys = length
      new_cache = {name: jnp.pad(t, [(0, 0), (0, 0),
                                     (0, (cache_len or self.max_len) - length),
                                     (0, 0)])
                   for name, t in (("k", k), ("v", v))}
      offset = 0
    else:
      new_cache = {name: jax.lax.dynamic_update_slice_in_dim(
          cache[name], t.astype(cache[name].dtype), pos, axis=2)
                   for name, t in (("k", k), ("v", v))}
      keys = cache["k"].shape[2]
      offset = pos

    bias = None
    if self.attention == "relative":
      rel = self.param("rel_embedding",
                       _init(nn.initializers.normal(head_dim**-0.5), "heads",
                             None, "head_dim"),
                       (heads, self.max_len, head_dim))
      # Distances -(keys - 1) .. 0: the last `keys` rows (row max_len - 1 is 0).
      rel = rel[:, self.max_len - keys:].astype(dtype)
      rel_logits = jnp.einsum("bhte,hse->bhts", q * jnp.asarray(scale, dtype),
                              rel)
      bias = skew(rel_logits, offset)

    if cache is None:
      # The attention matmuls take their operands in matmul_dtype (bfloat16
      # products, float32 sums) when it is set.
      low = self.matmul_dtype or dtype
      q_low, k_low, v_low = (t.astype(low) for t in (q, k, v))
      y = attention_kernels.self_attention(q_low, k_low, v_low, bias, scale,
                                           self.window, self.attention_impl)
      y = y.astype(dtype)
    else:
      mask = window_mask(pos + jnp.arange(length), jnp.arange(keys),
                         self.window)
      logits = jnp.einsum("bhte,bhse->bhts", q, new_cache["k"].astype(dtype),
                          preferred_element_type=jnp.float32) * scale
      if bias is not None:
        logits = logits + bias.astype(jnp.float32)
      probs = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
      y = jnp.einsum("bhts,bhse->bhte", probs.astype(dtype),
                     new_cache["v"].astype(dtype))
    if self.matmul_dtype is None:
      out = jnp.einsum("bhte,hed->btd", y, out_kernel.astype(dtype))
    else:
      out = project(y.transpose(0, 2, 1, 3).reshape(batch, length, embed),
                   out_kernel.reshape(embed, embed), dtype, self.matmul_dtype)
    return out + out_bias.astype(dtype), new_cache


class MLP(nn.Module):
  """Dense -> GELU -> Dense."""

  mlp_dim: int
  dtype: Any = jnp.float32
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    embed = x.shape[-1]
    wi = self.param("wi", _init(_fan_in(0, 1), "embed", "mlp"),
                    (embed, self.mlp_dim))
    bi = self.param("bi", _init(nn.initializers.zeros, "mlp"), (self.mlp_dim,))
    wo = self.param("wo", _init(_fan_in(0, 1), "mlp", "embed"),
                    (self.mlp_dim, embed))
    bo = self.param("bo", _init(nn.initializers.zeros, "embed"), (embed,))
    h = jax.nn.gelu(project(x, wi, self.dtype, self.matmul_dtype)
                    + bi.astype(self.dtype))
    return (project(h, wo, self.dtype, self.matmul_dtype)
            + bo.astype(self.dtype))


def _layer_norm(dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(dtype=dtype, name=name,
                      scale_init=_init(nn.initializers.ones, "embed"),
                      bias_init=_init(nn.initializers.zeros, "embed"))


class DecoderBlock(nn.Module):
  """x + attn(LN(x)), then x + mlp(LN(x)), dropout on each branch."""

  num_heads: int
  mlp_dim: int
  max_len: int
  dropout_rate: float = 0.0
  attention: str = "absolute"
  dtype: Any = jnp.float32
  attention_impl: str = "auto"
  attention_window: int = 0
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, cache: dict[str, Array] | None, pos: Array | None,
               train: bool, cache_len: int | None = None
               ) -> tuple[Array, dict[str, Array]]:
    y, cache = SelfAttention(self.num_heads, self.max_len, self.attention,
                             self.dtype, self.attention_impl,
                             self.attention_window, self.matmul_dtype,
                             name="attention")(
                                 _layer_norm(self.dtype, "ln_attention")(x),
                                 cache, pos, cache_len)
    x = x + Dropout(self.dropout_rate)(y, deterministic=not train)
    y = MLP(self.mlp_dim, self.dtype, self.matmul_dtype, name="mlp")(
        _layer_norm(self.dtype, "ln_mlp")(x))
    x = x + Dropout(self.dropout_rate)(y, deterministic=not train)
    return x, cache


class TransformerLanguageModel(nn.Module):
  """Token (+ position) embedding -> pre-LN decoder blocks -> LN -> logits.

  Attributes:
    vocab_size: number of token ids.
    num_layers: decoder blocks.
    d_model: width of the residual stream.
    num_heads: attention heads (d_model must divide evenly).
    mlp_dim: hidden width of each block's MLP.
    max_len: longest sequence (and size of the key/value cache).
    dropout_rate: on the embeddings and on every residual branch.
    attention: "absolute" (plain dot-product) or "relative" (Music
      Transformer relative logits).
    position_encoding: "learned", "sinusoidal" or "none" (only sensible with
      relative attention).
    dtype: compute dtype; parameters stay float32, logits are float32.
    remat: recompute each block's activations in the backward pass
      (less memory, about one more forward pass of compute).
    attention_impl: the full causal pass's attention
      (`kernels.attention.self_attention`): "fused"
      (`jax.nn.dot_product_attention`, a GPU's fused kernel), "einsum"
      (`kernels.attention.causal_attention`, faster on CPU) or "auto"
      (einsum on CPU, fused elsewhere).
    attention_window: > 0: local attention, each position attends to itself
      and the window - 1 positions before it (0: the whole past).
    matmul_dtype: None: plain matmuls in `dtype`. bfloat16: the
      projections, MLP, head and training attention take bfloat16
      operands summed in float32 (`kernels.matmul.matmul`), while
      activations, LayerNorm, softmax and GELU stay in `dtype`; on a CPU
      with AMX, the fast path.
  """

  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  mlp_dim: int
  max_len: int
  dropout_rate: float = 0.0
  attention: str = "relative"
  position_encoding: str = "learned"
  dtype: Any = jnp.float32
  remat: bool = False
  attention_impl: str = "auto"
  attention_window: int = 0
  matmul_dtype: Any = None

  def _check(self, length: int, pos: Array | None, cache_size: int) -> None:
    if self.attention not in ATTENTION_KINDS:
      raise ValueError(f"attention={self.attention!r}; allowed: {ATTENTION_KINDS}")
    if self.position_encoding not in POSITION_ENCODINGS:
      raise ValueError(f"position_encoding={self.position_encoding!r}; "
                       f"allowed: {POSITION_ENCODINGS}")
    if self.attention_window < 0:
      raise ValueError(f"attention_window={self.attention_window} must be >= 0 "
                       "(0: attend to the whole past).")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not a multiple of "
                       f"num_heads={self.num_heads}")
    if length > self.max_len:
      raise ValueError(f"Sequence of {length} tokens is longer than the "
                       f"model's max_len={self.max_len}.")
    if not length <= cache_size <= self.max_len:
      raise ValueError(f"cache_len={cache_size} must be between the sequence "
                       f"length {length} and max_len={self.max_len}.")
    if pos is not None and not isinstance(pos, jax.core.Tracer):
      if int(pos) + length > cache_size:
        raise ValueError(f"Writing {length} tokens at position {int(pos)} runs "
                         f"past the cache of {cache_size} positions (the "
                         f"model's max_len={self.max_len}).")

  @nn.compact
  def __call__(self, tokens: Array, *, train: bool = False,
               carry: Carry | None = None, cache_len: int | None = None
               ) -> tuple[Array, Carry]:
    """Runs the model over `tokens`, from scratch or after `carry`.

    Args:
      tokens: [batch, length] int ids; or multi-hot frames [batch, length,
        features] (float or uint8), projected to d_model by a learned
        `input_kernel` [features, d_model] instead of the token embedding.
      train: enables dropout (needs a "dropout" rng).
      carry: None for a causal pass from position 0; else the carry returned
        by a previous call: `tokens` continue at carry["pos"]. A traced
        position can't be checked while tracing: a step that runs past
        the cache gives NaN logits.
      cache_len: without `carry`, the positions of the returned cache
        (default max_len). Each later cached step attends over the whole
        cache, so a sampler that needs fewer positions than max_len runs
        faster with a cache of just those.

    Returns:
      (logits [batch, length, vocab] float32, the carry after `tokens`).
    """
    batch, length = tokens.shape[:2]
    pos = None if carry is None else carry["pos"]
    if carry is not None:
      cache_len = carry["layers"][0]["k"].shape[2]
    cache_len = cache_len or self.max_len
    self._check(length, pos, cache_len)
    if tokens.ndim == 3:  # Multi-hot frames.
      kernel = self.param("input_kernel", _init(_fan_in(0, 1), "vocab", "embed"),
                          (tokens.shape[-1], self.d_model))
      x = project(tokens, kernel, self.dtype, self.matmul_dtype)
    else:
      embedding = self.param(
          "token_embedding", _init(nn.initializers.normal(0.02), "vocab", "embed"),
          (self.vocab_size, self.d_model))
      x = jnp.take(embedding, tokens, axis=0).astype(self.dtype)
    start = 0 if pos is None else pos
    if self.position_encoding == "learned":
      table = self.param("position_embedding",
                         _init(nn.initializers.normal(0.02), None, "embed"),
                         (self.max_len, self.d_model))
      x = x + jax.lax.dynamic_slice_in_dim(table, start, length).astype(
          self.dtype)
    elif self.position_encoding == "sinusoidal":
      x = x + sinusoidal_positions(start + jnp.arange(length),
                                   self.d_model).astype(self.dtype)
    x = Dropout(self.dropout_rate)(x, deterministic=not train)

    caches = []
    # With remat, each block's activations are recomputed in the backward
    # pass instead of stored (argument 4, `train`, is static).
    block = (nn.remat(DecoderBlock, static_argnums=(4, 5)) if self.remat
             else DecoderBlock)
    for layer in range(self.num_layers):
      x, cache = block(
          self.num_heads, self.mlp_dim, self.max_len, self.dropout_rate,
          self.attention, self.dtype, self.attention_impl,
          self.attention_window, self.matmul_dtype, name=f"block_{layer}")(
              x, None if carry is None else carry["layers"][layer], pos, train,
              cache_len)
      caches.append(cache)
    x = _layer_norm(self.dtype, "ln_final")(x)
    head = self.param("head_kernel", _init(_fan_in(0, 1), "embed", "vocab"),
                      (self.d_model, self.vocab_size))
    head_bias = self.param("head_bias", _init(nn.initializers.zeros, "vocab"),
                           (self.vocab_size,))
    logits = (project(x, head, self.dtype, self.matmul_dtype)
              + head_bias.astype(self.dtype)).astype(jnp.float32)
    end = length + (0 if pos is None else pos)
    if pos is not None:
      # A traced position past the cache: the cache write was clamped, so
      # make the result unusable rather than silently wrong.
      logits = jnp.where(end <= cache_len, logits, jnp.nan)
    return logits, {"layers": tuple(caches),
                    "pos": jnp.asarray(end, jnp.int32)}

  def initial_carry(self, batch_size: int) -> Carry:
    """An empty cache at position 0 (same as no carry, but a fixed pytree)."""
    head_dim = self.d_model // self.num_heads
    shape = (batch_size, self.num_heads, self.max_len, head_dim)
    layer = {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}
    return {"layers": tuple(dict(layer) for _ in range(self.num_layers)),
            "pos": jnp.zeros((), jnp.int32)}
