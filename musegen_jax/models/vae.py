"""Sequence VAE (MusicVAE-like): bidirectional GRU encoder, LSTM decoder.

    tokens -> embedding -> BiGRUEncoder -> final states of both directions
           -> Dense -> (mu, logvar) of a diagonal Gaussian over `latent_dim`
    (conditioned: the final states += the style's encoder embedding)
    z = mu + noise * exp(logvar / 2)
    (conditioned: z += the style's decoder embedding)
    z -> Dense + tanh -> initial (h, c) of every decoder LSTM layer
    [start, tokens[:-1]] -> embedding, z appended to every step -> stacked
           LSTM -> vocabulary logits of tokens

The embedding table is shared by the encoder and the decoder. The decoder is
causal (an LSTM fed the tokens shifted right), so it runs step by step from
its carry, which is what the sampling loop of `tasks/vae.py` does. Every
parameter carries logical axis names ("latent" for the latent dimension).

With `num_styles` > 0 the model is a conditional VAE (Sohn et al., 2015):
q(z | tokens, style) and p(tokens | z, style). The encoder adds a learned
embedding of the style to its final states, the decoder one to z; each
table has a row per style and a last row for "no style". Adding an
embedding is a concatenation whose weights are tied to the input's, so
every shape but the two new tables' stays that of the unconditioned VAE,
and both tables start at zero: the model starts as the unconditioned one,
and a bundle of that model warm-starts it. What the label says, the latent
need not carry (the KL term makes it drop it), which is what decoding a
piece's latent with another style (transfer) relies on.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from musegen_jax.models import gru
from musegen_jax.models import layers
from musegen_jax.models import lstm
from musegen_jax.models.layers import Dropout

Array = jax.Array
# One (h, c) per decoder layer, each [batch, decoder_hidden_size].
Carry = tuple[tuple[Array, Array], ...]




class SequenceVAE(nn.Module):
  """Variational autoencoder of fixed-length token sequences.

  Attributes:
    vocab_size: token vocabulary (inputs and outputs).
    embed_dim: token embedding width (shared by encoder and decoder).
    encoder_hidden_size, encoder_num_layers: the bidirectional GRU (per
      direction).
    decoder_hidden_size, decoder_num_layers: the LSTM decoder.
    latent_dim: size of z.
    dropout_rate: between recurrent layers (encoder and decoder).
    word_dropout: in training, the probability that a decoder input token's
      embedding is zeroed (z is kept), so the decoder leans on z.
    pad_id: padding token; sequences are padded at the end only, and the
      encoder reads each up to its last non-pad token.
    start_id: the decoder's first input.
    num_styles: > 0: the encoder and decoder are conditioned on one of this
      many styles (or on none: row `num_styles` of the embeddings).
    dtype: activations and states (parameters stay float32).
    matmul_dtype: None, or the dtype every matmul (encoder, latent heads,
      decoder, output head; forward and backward) takes its operands in,
      summed in float32 (`kernels.matmul.matmul`).
  """

  vocab_size: int
  embed_dim: int
  encoder_hidden_size: int
  encoder_num_layers: int
  decoder_hidden_size: int
  decoder_num_layers: int
  latent_dim: int
  dropout_rate: float = 0.0
  word_dropout: float = 0.0
  pad_id: int = 0
  start_id: int = 1
  num_styles: int = 0
  dtype: Any = jnp.float32
  remat: bool = False
  matmul_dtype: Any = None

  def setup(self):
    md = self.matmul_dtype
    self.embed = layers.token_embedding(self.vocab_size, self.embed_dim)
    self.encoder = gru.BiGRUEncoder(self.encoder_hidden_size,
                                    self.encoder_num_layers,
                                    dropout_rate=self.dropout_rate,
                                    dtype=self.dtype, remat=self.remat,
                                    matmul_dtype=md, name="encoder")
    self.to_mu = layers.dense(self.latent_dim, "hidden", "latent", self.dtype,
                              "mu", matmul_dtype=md)
    # Zero-initialized: the posterior starts as N(mu, 1), close to the prior.
    self.to_logvar = layers.dense(self.latent_dim, "hidden", "latent", self.dtype,
                                  "logvar", kernel_init=nn.initializers.zeros_init(),
                                  matmul_dtype=md)
    self.to_state = layers.dense(
        2 * self.decoder_num_layers * self.decoder_hidden_size,
        "latent", "hidden", self.dtype, "initial_state", matmul_dtype=md)
    layer_cls = nn.remat(lstm.LSTMLayer) if self.remat else lstm.LSTMLayer
    self.decoder = [layer_cls(self.decoder_hidden_size, self.dtype,
                              input_name="embed" if i == 0 else "hidden",
                              matmul_dtype=md, name=f"decoder_{i}")
                    for i in range(self.decoder_num_layers)]
    self.dropout = Dropout(self.dropout_rate)
    self.head = layers.dense(self.vocab_size, "hidden", "vocab", self.dtype,
                             "head", matmul_dtype=md)
    if self.num_styles:
      zeros = nn.initializers.zeros_init()
      self.encoder_style_embedding = self.param(
          "encoder_style_embedding", layers.logical(zeros, "style", "hidden"),
          (self.num_styles + 1, 2 * self.encoder_hidden_size), jnp.float32)
      self.style_embedding = self.param(
          "style_embedding", layers.logical(zeros, "style", "latent"),
          (self.num_styles + 1, self.latent_dim), jnp.float32)

  def _styled(self, x: Array, style: Array | None, table: Array) -> Array:
    """x [batch, features] plus the rows of `table` that `style` picks:
    [batch] int ids (`num_styles`: no style) or [batch, num_styles + 1]
    weights that mix them (a transfer part of the way); None: no style."""
    if style is None:
      style = jnp.full(x.shape[:1], self.num_styles, jnp.int32)
    if jnp.issubdtype(style.dtype, jnp.integer):
      style = jax.nn.one_hot(style, self.num_styles + 1, dtype=jnp.float32)
    return (x.astype(jnp.float32) + style.astype(jnp.float32) @ table).astype(x.dtype)

  def condition(self, z: Array, style: Array | None) -> Array:
    """The latent the decoder reads: z plus the style's embedding (`style`
    as `_styled` takes it; an unconditioned model returns z)."""
    if not self.num_styles:
      return z
    return self._styled(z, style, self.style_embedding)

  def encode(self, tokens: Array, *, train: bool = False,
             style: Array | None = None) -> tuple[Array, Array]:
    """The approximate posterior q(z | tokens[, style]).

    Args:
      tokens: [batch, time] int ids, padded at the end with `pad_id`.
      train: enables dropout (needs a "dropout" rng).
      style: a conditioned model's style (as `_styled` takes it).

    Returns:
      (mu, logvar), each [batch, latent_dim] float32.
    """
    lengths = jnp.sum(tokens != self.pad_id, axis=1)
    x = self.embed(tokens.T).astype(self.dtype)  # Time-major.
    _, final = self.encoder(x, train=train, lengths=lengths)
    if self.num_styles:
      final = self._styled(final, style, self.encoder_style_embedding)
    return (self.to_mu(final).astype(jnp.float32),
            self.to_logvar(final).astype(jnp.float32))

  def initial_carry(self, z: Array) -> Carry:
    """The decoder's initial (h, c) per layer: tanh(Dense(z)), split."""
    state = jnp.tanh(self.to_state(z.astype(self.dtype)))
    parts = jnp.split(state, 2 * self.decoder_num_layers, axis=-1)
    return tuple((parts[2 * i], parts[2 * i + 1])
                 for i in range(self.decoder_num_layers))

  def decode(self, z: Array, tokens: Array, carry: Carry | None = None, *,
             train: bool = False) -> tuple[Array, Carry]:
    """Decoder logits for inputs `tokens` given z.

    Args:
      z: [batch, latent_dim] latents.
      tokens: [batch, time] decoder inputs (the targets shifted right, the
        first being `start_id`); one token at a time when sampling.
      carry: the state after the previous inputs, or None to start from z.
      train: enables dropout and word dropout (need a "dropout" rng).

    Returns:
      (logits [batch, time, vocab] float32, the carry after the last input).
    """
    if carry is None:
      carry = self.initial_carry(z)
    x = self.embed(tokens.T).astype(self.dtype)  # [time, batch, embed]
    if train and self.word_dropout > 0:
      threshold = min(round(self.word_dropout * 2.0**32), 2**32 - 1)
      bits = jax.random.bits(self.make_rng("dropout"), tokens.T.shape, jnp.uint32)
      x = jnp.where((bits >= jnp.uint32(threshold))[..., None], x, 0.0)
    z_steps = jnp.broadcast_to(z.astype(self.dtype)[None],
                               (x.shape[0],) + z.shape)
    x = jnp.concatenate([x, z_steps], -1)
    new_carry = []
    for i, layer in enumerate(self.decoder):
      if i > 0:
        x = self.dropout(x, deterministic=not train)
      x, layer_carry = layer(x, carry[i])
      new_carry.append(layer_carry)
    logits = self.head(x)
    return jnp.swapaxes(logits, 0, 1).astype(jnp.float32), tuple(new_carry)

  def shift_right(self, tokens: Array) -> Array:
    """Decoder inputs of targets `tokens`: [start, tokens[:, :-1]]."""
    start = jnp.full(tokens.shape[:1] + (1,), self.start_id, tokens.dtype)
    return jnp.concatenate([start, tokens[:, :-1]], 1)

  def __call__(self, tokens: Array, *, train: bool = False,
               noise: Array | None = None,
               style: Array | None = None) -> tuple[Array, Array, Array]:
    """Encodes `tokens`, draws z and reconstructs them with teacher forcing.

    Args:
      tokens: [batch, time] int ids, padded at the end.
      train: enables dropout (needs a "dropout" rng).
      noise: [batch, latent_dim] standard normal draws for the
        reparameterization z = mu + noise * sigma; None uses z = mu.
      style: a conditioned model's style (as `_styled` takes it), which the
        encoder and the decoder read.

    Returns:
      (logits [batch, time, vocab] of `tokens`, mu, logvar).
    """
    mu, logvar = self.encode(tokens, train=train, style=style)
    z = mu if noise is None else mu + noise * jnp.exp(0.5 * logvar)
    logits, _ = self.decode(self.condition(z, style), self.shift_right(tokens),
                            train=train)
    return logits, mu, logvar


def kl_divergence(mu: Array, logvar: Array) -> Array:
  """KL(N(mu, exp(logvar)) || N(0, 1)) summed over the last axis, in nats.

  0.5 * sum(exp(logvar) + mu^2 - 1 - logvar): exactly 0 at mu = 0,
  logvar = 0.
  """
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar, axis=-1)
