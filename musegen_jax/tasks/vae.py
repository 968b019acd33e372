"""Sequence VAE over fixed windows of event tokens (`models/vae.py`).

Batches are the language model's {"tokens": [batch, seq_len + 1] int32}
windows of [EOS, tokens..., EOS] pieces; the VAE's sequence is a window's
last `seq_len` tokens. Dropping the first means a piece's leading EOS is
never part of a sequence, so EOS only ever ends one (after it, padding) and
can be the decoder's start token, as it is the language model's. Evaluation
windows overlap by one token, so their last `seq_len` tokens tile each
piece's tokens exactly once.

Loss per sequence (MusicVAE):

    recon(x) + beta(step) * max(KL(q(z|x) || N(0, I)) - free_bits, 0)

with recon the cross-entropy summed over the sequence's non-pad tokens and
KL summed over the latent dimensions, in nats. The train loss is its mean
over the sequences of the global batch (all-padding rows count for nothing),
so gradient accumulation and device count do not change the update.
beta(step) rises linearly from 0 to `vae.beta` over `vae.beta_warmup_steps`.

Evaluation reports the negative ELBO (recon + KL, no free bits, beta 1; nats
per sequence, which picks the best checkpoint), its two terms, the
reconstruction per token and the token accuracy. Each sequence's z is one
draw from the posterior with a fixed key, so two evaluations of the same
parameters agree.

Samples decode z drawn from the prior, or the spherical interpolation
between two latents: two prior draws, or the posterior means of two pieces
(`write_samples(endpoints=...)`). Every point of an interpolation decodes
with the same sampling noise, so neighbouring points differ only through z.

Style transfer by attribute vectors (MusicVAE): on a labelled dataset
(`config.styles`, filled from its labels when the run starts) the export
stores each style's mean posterior latent over the train split's windows
(`bundle_extras`). A piece's first window is encoded, moved by `strength`
times the target style's mean minus its own style's (given, or the nearest
mean), and decoded (`transfer_latents`, `write_transfer`).

Style conditioning (`config.condition.enabled`, a conditional VAE): the
encoder and the decoder also read the piece's style (`models/vae.py`),
which training replaces by "no style" with probability
`config.condition.dropout`, so one model is also unconditional. Windows
then hold the style id where the unconditioned task keeps a token it drops
(`pipeline`'s style-first windows, without the pieces' leading EOS, like
the unconditioned sequences). Prior samples take `style` and
classifier-free `guidance` (the decoder's logits mixed between the styled
and the unstyled pass, l_u + w (l_c - l_u), in one compiled loop). Transfer
moves a piece's latent by the attribute vectors as above (the latents and
the style means encoded with no style) and also decodes it with the target
style, `strength` of the way from the source's.

Samples of a style start from its region of the latent space when the
bundle stores it (`style_prior_latents`): z drawn from a Gaussian with the
mean and per-dimension spread of the style's train windows' posteriors,
not from N(0, I). This is how a plain VAE samples a style; a conditioned
decoder reads the label besides (`style_prior=False` keeps N(0, I)).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import note_seq
import numpy as np
import optax
from ml_collections import config_dict

from musegen_jax import models
from musegen_jax import parallel
from musegen_jax import errors
from musegen_jax.data import labels
from musegen_jax.data import pipeline
from musegen_jax.data import representations
from musegen_jax.data import shards
from musegen_jax.models import vae as vae_model
from musegen_jax.tasks import base
from musegen_jax.tasks import checks
from musegen_jax.tasks import samples
from musegen_jax.tasks import state as state_lib
from musegen_jax.tasks.lm import filter_logits

Array = jax.Array
# The latent noise of evaluation (see the module docstring).
EVAL_NOISE_SEED = 0


# Keys added after bundles were exported (see tasks.fill_defaults).
CONFIG_DEFAULTS = {"styles": (), "condition.enabled": False,
                   "condition.dropout": 0.1}
# Train windows per piece that the style latents average (the first ones).
STYLE_WINDOWS_PER_PIECE = 8
STYLE_LATENTS = "style_latents"


def check_config(config: config_dict.ConfigDict) -> None:
  """Rejects out-of-range values of the VAE's keys."""
  if config.model.name != "vae":
    raise ValueError(f"config.model.name={config.model.name!r}; the vae task "
                     "trains model 'vae' (musegen_jax/models/vae.py)")
  rep = representations.REPRESENTATIONS.get(config.data.representation)
  if rep is None or not issubclass(rep, representations.TokenRepresentation):
    names = sorted(name for name, cls in representations.REPRESENTATIONS.items()
                   if issubclass(cls, representations.TokenRepresentation))
    raise ValueError(f"config.data.representation={config.data.representation!r}; "
                     f"the vae task reads tokens: {names}")
  m = config.model
  checks.check_optimizer_ranges(config)
  positive = {"data.seq_len": config.data.seq_len,
              "model.embed_dim": m.embed_dim,
              "model.encoder_hidden_size": m.encoder_hidden_size,
              "model.encoder_num_layers": m.encoder_num_layers,
              "model.decoder_hidden_size": m.decoder_hidden_size,
              "model.decoder_num_layers": m.decoder_num_layers,
              "model.latent_dim": m.latent_dim,
              "sample.num_samples": config.sample.num_samples,
              "sample.length": config.sample.length,
              "sample.temperature": config.sample.temperature}
  non_negative = {"sample.top_k": config.sample.top_k,
                  "vae.beta": config.vae.beta,
                  "vae.beta_warmup_steps": config.vae.beta_warmup_steps,
                  "vae.free_bits": config.vae.free_bits}
  checks.check_ranges(positive=positive, non_negative=non_negative,
                      fractions={"model.dropout_rate": m.dropout_rate,
                                 "model.word_dropout": m.word_dropout,
                                 "condition.dropout": config.condition.dropout})
  if not 0 < config.sample.top_p <= 1:
    raise ValueError(f"config.sample.top_p={config.sample.top_p} must be in (0, 1]")
  models.get_dtype(m.dtype)
  models.matmul_dtype_name(m)


def configure_from_data(config: config_dict.ConfigDict, data_dir: str) -> None:
  """On a labelled dataset, its styles (the style latents of exports; a
  conditioned model's styles, which need one)."""
  labels.fill_styles(config, data_dir, required=bool(config.condition.enabled))


def create_model(model_config: config_dict.ConfigDict, vocab_size: int, *,
                 pad_id: int, start_id: int, num_styles: int = 0
                 ) -> vae_model.SequenceVAE:
  """The `SequenceVAE` of `config.model` (conditioned with `num_styles` > 0)."""
  m = model_config
  return vae_model.SequenceVAE(
      vocab_size=vocab_size, embed_dim=m.embed_dim,
      encoder_hidden_size=m.encoder_hidden_size,
      encoder_num_layers=m.encoder_num_layers,
      decoder_hidden_size=m.decoder_hidden_size,
      decoder_num_layers=m.decoder_num_layers, latent_dim=m.latent_dim,
      dropout_rate=m.dropout_rate, word_dropout=m.word_dropout, pad_id=pad_id,
      start_id=start_id, num_styles=num_styles,
      dtype=models.get_dtype(m.dtype), remat=m.remat,
      matmul_dtype=models.matmul_dtype(m))


def beta_schedule(step: Array | int, beta: float, warmup_steps: int) -> Array:
  """The KL weight at `step`: linear from 0 to `beta` over `warmup_steps`."""
  if warmup_steps <= 0:
    return jnp.asarray(beta, jnp.float32)
  ramp = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
  return beta * ramp


def free_bits_kl(kl: Array, free_bits: float) -> Array:
  """The KL each sequence pays: nothing up to `free_bits` nats, the excess beyond."""
  return jnp.maximum(kl - free_bits, 0.0)


class VAETask(base.SingleNetworkTask):
  """ELBO training, evaluation, prior samples and interpolations of the VAE.

  The model, optimizer, state and guarded update are `SingleNetworkTask`'s;
  the update averages the loss over the batch's sequences. Token data is
  encoded on the fly, so the prepared shards serve as they are
  (`prepare_data`).
  """

  valid_metric = "nelbo"
  progress_keys = ("loss", "recon", "kl")
  loss_key = "loss_sum"
  weight_key = "sequence_sum"

  def __init__(self, config: config_dict.ConfigDict, representation: Any):
    self.pad_id = int(representation.pad_id)
    self.eos_id = int(representation.eos_id)
    self.vocab_size = int(representation.vocab_size)
    self.seq_len = int(config.data.seq_len)
    self.latent_dim = int(config.model.latent_dim)
    # A conditioned model's styles (its "no style" id is their count).
    self.styles = [str(s) for s in config.styles] if config.condition.enabled else []
    if config.condition.enabled and not self.styles:
      raise errors.UserError(
          "config.condition.enabled=True needs styles: train on a labelled "
          "config.data.dir (prepare --labels=... or --input=music21:...).")
    super().__init__(config, representation,
                     create_model(config.model, self.vocab_size, pad_id=self.pad_id,
                                  start_id=self.eos_id, num_styles=len(self.styles)))

  def init_inputs(self) -> Array:
    """One sequence of tokens."""
    return jnp.zeros((1, self.seq_len), jnp.int32)

  # --- data ------------------------------------------------------------------

  def create_train_dataset(self, data_dir: str):
    """The grain training dataset of this process: {"tokens": [b, seq_len + 1]}."""
    config = self.config
    return pipeline.create_train_dataset(
        data_dir, self.representation, seq_len=self.seq_len,
        global_batch_size=config.batch_size, seed=config.seed,
        num_workers=config.data.num_workers,
        prefetch_buffer_size=config.data.prefetch_buffer_size,
        on_bad_record=config.data.bad_records, styles=tuple(self.styles),
        leading_eos=False)

  def eval_data(self, data_dir: str, split: str = "valid") -> np.ndarray:
    """The fixed windows of `split` that `eval_batches` serves."""
    config = self.config
    return pipeline.eval_windows(
        data_dir, self.representation, seq_len=self.seq_len, split=split,
        max_windows=(None if config.num_eval_batches < 0
                     else config.num_eval_batches * config.batch_size),
        styles=tuple(self.styles), leading_eos=False)

  def eval_batches(self, windows: np.ndarray):
    """This process's share of the global eval batches over `windows`."""
    return pipeline.eval_batches(windows, self.config.batch_size, self.pad_id)

  def batch_spec(self, split: str = "train") -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of one global batch of `split` (train or eval)."""
    del split  # Train and eval windows have the same shape.
    return {"tokens": jax.ShapeDtypeStruct(
        (self.config.batch_size, self.seq_len + 1), jnp.int32)}

  def sample_program(self, num_samples: int):
    """Prior decoding as `config.sample` describes, as `(fn, inputs)`:
    `fn(params, rng, z)`, z abstract (ahead-of-time compiles)."""
    s = self.config.sample
    fn = lambda params, rng, z: decode_latents(
        self.model, params, rng, z, None, length=int(s.length),
        temperature=float(s.temperature), top_k=int(s.top_k),
        top_p=float(s.top_p), eos_id=self.eos_id, pad_id=self.pad_id,
        shared_noise=False)
    return fn, (jax.ShapeDtypeStruct((num_samples, self.latent_dim), jnp.float32),)

  def encode_pieces(self, pieces: Sequence[Any]) -> np.ndarray:
    """The sequences the VAE reads for whole pieces: their first `seq_len` tokens.

    Args:
      pieces: NoteSequences (encoded as in training, without the leading
        EOS) or token arrays (taken as they are).

    Returns:
      [len(pieces), seq_len] int32, padded at the end.
    """
    return np.stack([self.piece_windows(piece, 1)[0] for piece in pieces])

  def piece_windows(self, piece: Any, max_windows: int) -> np.ndarray:
    """A piece's first `max_windows` consecutive windows of `seq_len` tokens
    (fewer for a shorter piece; the last padded): [n, seq_len] int32. Takes
    what `encode_pieces` takes."""
    if isinstance(piece, note_seq.NoteSequence):
      tokens = pipeline.encode_with_boundary(self.representation, piece)[1:]
    else:
      tokens = np.asarray(piece, np.int32).reshape(-1)
    starts = range(0, max(min(len(tokens), max_windows * self.seq_len), 1), self.seq_len)
    return np.stack([pipeline.pad_to(tokens[s:s + self.seq_len].astype(np.int32),
                                     self.seq_len, self.pad_id) for s in starts])

  def join_windows(self, windows: Sequence[Any]) -> Any:
    """One NoteSequence of decoded windows (NoteSequences) played one after
    another: each starts where the previous one's last note ends. The first
    window's tempo and meter stand for all; one window comes back as it is."""
    if len(windows) == 1:
      return windows[0]
    joined = note_seq.NoteSequence()
    joined.CopyFrom(windows[0])
    offset = max((note.end_time for note in windows[0].notes), default=0.0)
    for window in windows[1:]:
      for note in window.notes:
        copy = joined.notes.add()
        copy.CopyFrom(note)
        copy.start_time += offset
        copy.end_time += offset
      offset += max((note.end_time for note in window.notes), default=0.0)
    joined.total_time = offset
    return joined

  # --- the compiled steps ----------------------------------------------------

  def _sums(self, params: Any, tokens: Array, noise: Array,
            dropout_rng: Array | None, beta: Array, train: bool
            ) -> dict[str, Array]:
    """Sums of the loss terms over windows [batch, seq_len + 1].

    `noise` [batch, latent_dim] are the standard normal draws of the
    reparameterization, one row per window. A conditioned model reads
    each window's style from its first column ("no style" with probability
    `condition.dropout` in training).
    """
    x = tokens[:, 1:]
    style = None
    if self.styles:
      style = tokens[:, 0]
      if train and self.config.condition.dropout > 0:
        dropout_rng, drop_key = jax.random.split(dropout_rng)
        drop = jax.random.bernoulli(drop_key, self.config.condition.dropout,
                                    style.shape)
        style = jnp.where(drop, len(self.styles), style)
    weights = (x != self.pad_id).astype(jnp.float32)
    real = (jnp.sum(weights, 1) > 0).astype(jnp.float32)  # Not all padding.
    logits, mu, logvar = self.model.apply(
        {"params": params}, x, train=train, noise=noise, style=style,
        rngs=None if dropout_rng is None else {"dropout": dropout_rng})
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, x)
    recon = jnp.sum(losses * weights, 1)
    kl = vae_model.kl_divergence(mu, logvar)
    loss = recon + beta * free_bits_kl(kl, self.config.vae.free_bits)
    correct = (jnp.argmax(logits, -1) == x).astype(jnp.float32)
    return {"loss_sum": jnp.sum(loss * real),
            "recon_sum": jnp.sum(recon * real),
            "kl_sum": jnp.sum(kl * real),
            "correct_sum": jnp.sum(correct * weights),
            "token_sum": jnp.sum(weights),
            "sequence_sum": jnp.sum(real)}

  def beta(self, step: Array | int) -> Array:
    """The KL weight of the update at `step` (0-based)."""
    return beta_schedule(step, self.config.vae.beta, self.config.vae.beta_warmup_steps)

  def train_step(self, state: state_lib.TrainState, batch: dict[str, Array],
                 rng: Array, reducer: parallel.Reducer = parallel.IDENTITY
                 ) -> tuple[state_lib.TrainState, dict[str, Array]]:
    """One AdamW update on the mean per-sequence loss of the global batch.

    The gradients of each micro-batch's loss sum are added up (and summed
    over devices by `reducer`) and divided by the number of sequences
    (`guarded_update`). The latent noise is drawn for the
    global batch and split like it, so neither accumulation nor the parallel
    mode changes it (nor the update, without dropout); the dropout key is
    `rng` folded with the step, the micro-batch and the device.

    Args:
      state: the train state.
      batch: {"tokens": [batch, seq_len + 1]} (the step's share of the batch).
      rng: the run's step key.
      reducer: sums over the devices (parallel.reduce; identity under jit).
    """
    beta = self.beta(state.step)
    noise_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    tokens = batch["tokens"]
    devices = reducer.num_devices()
    noise = reducer.device_share(jax.random.normal(
        noise_rng, (tokens.shape[0] * devices, self.latent_dim), jnp.float32))

    def sums_fn(params, inputs, key):
      tokens, noise = inputs
      return self._sums(params, tokens, noise, key, beta, train=True)

    state, update = self.guarded_update(state, (tokens, noise), dropout_rng,
                                        sums_fn, reducer)
    sums = update.sums
    sequences = jnp.maximum(sums["sequence_sum"], 1.0)
    tokens = jnp.maximum(sums["token_sum"], 1.0)
    return state, self.step_metrics(update, {
        "recon": sums["recon_sum"] / sequences,
        "recon_per_token": sums["recon_sum"] / tokens,
        "kl": sums["kl_sum"] / sequences,
        "beta": beta,
        "accuracy": sums["correct_sum"] / tokens})

  def eval_step(self, params: Any, batch: dict[str, Array]) -> dict[str, Array]:
    """Sums of the ELBO's terms over a batch (z drawn with a fixed key)."""
    tokens = batch["tokens"]
    noise = jax.random.normal(jax.random.PRNGKey(EVAL_NOISE_SEED),
                              (tokens.shape[0], self.latent_dim), jnp.float32)
    sums = self._sums(params, tokens, noise, None, jnp.float32(1.0), train=False)
    del sums["loss_sum"]  # Has free bits; the ELBO has none.
    return sums

  @staticmethod
  def summarize(sums: dict[str, float], eval_data: Any = None) -> dict[str, float]:
    """Negative ELBO, its terms and accuracy from the totals of `eval_step`."""
    del eval_data  # The sums hold everything.
    sequences = max(float(sums["sequence_sum"]), 1.0)
    tokens = max(float(sums["token_sum"]), 1.0)
    recon, kl = float(sums["recon_sum"]), float(sums["kl_sum"])
    return {"nelbo": (recon + kl) / sequences,
            "recon": recon / sequences,
            "kl": kl / sequences,
            "recon_per_token": recon / tokens,
            "accuracy": float(sums["correct_sum"]) / tokens,
            "sequences": sequences}

  # --- latents and decoding --------------------------------------------------

  def encode(self, params: Any, tokens: np.ndarray, style: Any = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Posterior (mu, logvar) [n, latent_dim] of sequences [n, seq_len]; a
    conditioned model's given `style` (a name, [n] ids; None: no style)."""
    if isinstance(style, str):
      style = np.full((len(tokens),), self.style_token(style), np.int32)
    mu, logvar = _encode(self.model, params, jnp.asarray(tokens, jnp.int32),
                         None if style is None else jnp.asarray(style))
    return np.asarray(mu), np.asarray(logvar)

  def prior_latents(self, rng: Array, n: int) -> np.ndarray:
    """n draws of z from the prior N(0, I)."""
    return np.asarray(jax.random.normal(rng, (n, self.latent_dim), jnp.float32))

  def interpolation_latents(self, params: Any, rng: Array, steps: int,
                            endpoints: Sequence[Any] | None = None) -> np.ndarray:
    """`steps` latents along the great circle between two latents, ends included.

    The ends are the posterior means of the two `endpoints` (NoteSequences
    or token arrays, see `encode_pieces`), or two prior draws from `rng`.
    """
    if endpoints is None:
      ends = self.prior_latents(rng, 2)
    else:
      if len(endpoints) != 2:
        raise ValueError(f"Interpolation needs exactly two endpoints, got "
                         f"{len(endpoints)}.")
      ends, _ = self.encode(params, self.encode_pieces(endpoints))
    return samples.slerp(ends[0], ends[1], steps)

  def generate(self, params: Any, rng: Array, z: np.ndarray, *, length: int,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               shared_noise: bool = False, style: Any = None,
               guidance: float = 1.0) -> np.ndarray:
    """Decodes latents [n, latent_dim] into [n, length] tokens (PAD after EOS).

    With `shared_noise`, every row draws its tokens with the same noise. A
    conditioned decoder reads `style`: a style name, [n] style ids or [n,
    styles + 1] embedding weights (`transfer_styles`); None: no style. With
    `guidance` != 1 each token's logits are l_u + guidance (l_c - l_u), l_u
    those of the same latent with no style.

    Raises:
      errors.UserError: a style or guidance for an unconditioned model, or
        an unknown style name.
    """
    if isinstance(style, str):
      style = np.full((len(z),), self.style_token(style), np.int32)
    if (style is not None or float(guidance) != 1.0) and not self.styles:
      raise errors.UserError("--style/--guidance: this VAE is not style-conditioned "
                             "(trained without config.condition.enabled).")
    return np.asarray(jax.device_get(decode_latents(
        self.model, params, rng, jnp.asarray(z, jnp.float32),
        None if style is None else jnp.asarray(style), length=int(length),
        temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
        eos_id=self.eos_id, pad_id=self.pad_id, shared_noise=shared_noise,
        guidance=float(guidance))))

  def style_token(self, style: str | None) -> int:
    """A conditioned model's id of `style` (None: "no style").

    Raises:
      errors.UserError: the model is not conditioned, or does not know
        `style` (the message lists the styles it knows).
    """
    if style is None:
      return len(self.styles)
    return checks.style_index(self.styles, style, "VAE")

  def sample_pieces(self, params: Any, rng: Array, *, num_samples: int, length: int,
                    temperature: float = 1.0, top_p: float = 1.0,
                    style: str | None = None, guidance: float = 1.0,
                    extras: dict[str, Any] | None = None, style_prior: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`num_samples` draws of `style` (`style_latents_for`; a conditioned
    decoder also reads it): ([n, length] tokens, [n, 0] primers), as the
    language model's `sample_pieces` returns them."""
    latent_rng, decode_rng = jax.random.split(rng)
    z = self.style_latents_for(latent_rng, num_samples, style, extras, style_prior)
    tokens = self.generate(params, decode_rng, z, length=length, temperature=temperature,
                           top_p=top_p, style=style if self.styles else None,
                           guidance=guidance)
    return tokens, np.zeros((num_samples, 0), np.int32)

  # --- samples ----------------------------------------------------------------

  # --- style transfer ---------------------------------------------------------

  def bundle_extras(self, params: Any, data_dir: str) -> dict[str, Any] | None:
    """With styles: {"style_latents": {"styles", "means" [styles][latent],
    "stds" [styles][latent], "windows" per style}}, the mean posterior latent
    of each style's train windows (the first `STYLE_WINDOWS_PER_PIECE` of
    each piece) and the per-dimension spread of their aggregate posterior."""
    styles = [str(s) for s in self.config.styles]
    if not styles:
      return None
    # Per style: sums of the posterior means, of their squares and of the
    # posterior variances.
    sums, squares, variances = (np.zeros((len(styles), self.latent_dim), np.float64)
                                for _ in range(3))
    counts = np.zeros((len(styles),), np.int64)
    rows, ids = [], []

    def flush():
      if rows:
        mu, logvar = self.encode(params, np.stack(rows))
        at = np.asarray(ids)
        np.add.at(sums, at, mu)
        np.add.at(squares, at, np.square(mu.astype(np.float64)))
        np.add.at(variances, at, np.exp(logvar.astype(np.float64)))
        np.add.at(counts, at, 1)
        rows.clear()
        ids.clear()

    for ns in shards.read_note_sequences(shards.split_paths(data_dir, "train")):
      label = labels.get_label(ns)
      if label not in styles:
        continue
      tokens = pipeline.encode_with_boundary(self.representation, ns)[1:]
      for start in range(0, min(len(tokens), STYLE_WINDOWS_PER_PIECE * self.seq_len),
                         self.seq_len):
        rows.append(pipeline.pad_to(tokens[start:start + self.seq_len],
                                    self.seq_len, self.pad_id).astype(np.int32))
        ids.append(styles.index(label))
        if len(rows) == self.config.batch_size:
          flush()
    flush()
    missing = [s for s, n in zip(styles, counts) if not n]
    if missing:
      raise errors.UserError(f"{data_dir}: no train window of style(s) {missing} "
                             "to average for the style latents.")
    n = counts[:, None]
    means = sums / n
    # The spread of the style's aggregate posterior (a mixture of the
    # windows' Gaussians): the variance of their means plus their mean variance.
    stds = np.sqrt(np.maximum(squares / n - np.square(means), 0.0) + variances / n)
    return {STYLE_LATENTS: {"styles": styles, "means": means.tolist(),
                            "stds": stds.tolist(), "windows": counts.tolist()}}

  def style_prior_latents(self, rng: Array, n: int, style: str,
                          extras: dict[str, Any]) -> np.ndarray:
    """n draws of z from `style`'s region of the latent space: a Gaussian
    with the mean and spread of its train windows' posteriors (the bundle's
    style latents; a bundle from before the spreads were stored: unit spread).

    Raises:
      errors.UserError: the bundle has no style latents, or not `style`'s.
    """
    table = (extras or {}).get(STYLE_LATENTS)
    if not table:
      raise errors.UserError(f"--style={style}: this VAE is not style-conditioned "
                             "and its bundle has no style latents (train it on a "
                             "labelled dataset).")
    names = list(table["styles"])
    if style not in names:
      raise errors.UserError(f"--style={style!r}: unknown; this VAE knows "
                             f"{', '.join(names)}.")
    mean = np.asarray(table["means"][names.index(style)], np.float32)
    std = np.asarray(table["stds"][names.index(style)], np.float32) if "stds" in table \
        else np.ones_like(mean)
    return mean + std * self.prior_latents(rng, n)

  def check_sample_style(self, style: str, extras: dict[str, Any] | None, *,
                         guidance: float = 1.0, style_prior: bool = True) -> None:
    """Raises errors.UserError unless samples can take `style` (a conditioned
    decoder's, or else one whose latent region the bundle stores) with
    `guidance` and `style_prior`: what `sample_pieces` would raise."""
    if self.styles:
      self.style_token(style)
    elif float(guidance) != 1.0:
      raise errors.UserError("--style/--guidance: this VAE is not style-conditioned "
                             "(trained without config.condition.enabled).")
    self.style_latents_for(jax.random.PRNGKey(0), 1, style, extras, style_prior)

  def style_latents_for(self, rng: Array, n: int, style: str | None,
                        extras: dict[str, Any] | None, style_prior: bool) -> np.ndarray:
    """The latents of n samples of `style`: from its region of the latent
    space when `style_prior` and the bundle stores it, else from N(0, I)
    (which a plain VAE cannot aim at a style: an error)."""
    table = (extras or {}).get(STYLE_LATENTS)
    if style is not None and not self.styles and not style_prior:
      raise errors.UserError(f"--nostyle_prior: a VAE that is not style-conditioned "
                             f"samples --style={style} only from the style's region "
                             "of its latent space.")
    if style is not None and (not self.styles or (style_prior and table)):
      # A conditioned decoder's bundle without style latents keeps N(0, I).
      return self.style_prior_latents(rng, n, style, extras)
    return self.prior_latents(rng, n)

  def transfer_latents(self, params: Any, pieces: Sequence[Any], to_style: str,
                       extras: dict[str, Any], from_style: str | None = None,
                       strength: float = 1.0) -> tuple[np.ndarray, list[str]]:
    """The latents of `pieces` moved towards `to_style`.

    Each piece's posterior mean (its first window, `encode_pieces`) moves by
    `strength` x (mean latent of `to_style` - mean latent of its own style):
    `from_style`, or else the style whose mean lies nearest (the pieces and
    the means encoded with no style). A conditioned model then also decodes
    them with the target style (`transfer_styles`).

    Args:
      extras: the bundle's extras ("style_latents", from `bundle_extras`).

    Returns:
      ([len(pieces), latent_dim] latents, the source style of each piece).

    Raises:
      errors.UserError: the bundle has no style latents, or a style is not
        one of them (the message lists them).
    """
    table = extras.get(STYLE_LATENTS)
    if not table:
      raise errors.UserError("--transfer needs a VAE trained on a labelled dataset "
                             "(its bundle stores the style latents); this one "
                             "has none.")
    names = list(table["styles"])
    for flag, name in (("to_style", to_style), ("from_style", from_style)):
      if name is not None and name not in names:
        raise errors.UserError(f"--{flag}={name!r}: unknown; this VAE knows "
                               f"{', '.join(names)}.")
    mu, _ = self.encode(params, self.encode_pieces(pieces))
    means = np.asarray(table["means"], np.float32)
    if from_style is None:
      nearest = np.argmin(((mu[:, None] - means[None]) ** 2).sum(-1), axis=1)
      sources = [names[int(i)] for i in nearest]
    else:
      sources = [from_style] * len(mu)
    moves = np.stack([means[names.index(to_style)] - means[names.index(src)]
                      for src in sources])
    return (mu + float(strength) * moves).astype(np.float32), sources

  def transfer_piece(self, params: Any, piece: Any, to_style: str,
                     extras: dict[str, Any], from_style: str | None = None,
                     strength: float = 1.0, windows: int = 1
                     ) -> tuple[np.ndarray, np.ndarray, str]:
    """`transfer_latents` for a piece's first `windows` windows
    (`piece_windows`), all moved from one source style: `from_style`, or
    else the style nearest to most of its windows.

    Returns:
      (the windows' tokens [n, seq_len], their moved latents [n, latent_dim],
      the source style).
    """
    rows = self.piece_windows(piece, windows)
    if from_style is None:
      _, nearest = self.transfer_latents(params, list(rows), to_style, extras,
                                         strength=0.0)
      from_style = max(nearest, key=lambda name: (nearest.count(name),
                                                  -nearest.index(name)))
    z, _ = self.transfer_latents(params, list(rows), to_style, extras, from_style,
                                 strength)
    return rows, z, from_style

  def transfer_styles(self, to_style: str, sources: Sequence[str],
                      strength: float = 1.0) -> np.ndarray | None:
    """A conditioned decoder's style weights for transfers from `sources`
    (style names) to `to_style`: [n, styles + 1], `strength` on the target's
    embedding and the rest on the source's. None for an unconditioned VAE
    (its latents are moved alone, `transfer_latents`)."""
    if not self.styles:
      return None
    weights = np.zeros((len(sources), len(self.styles) + 1), np.float32)
    for i, source in enumerate(sources):
      weights[i, self.style_token(source)] += 1.0 - strength
      weights[i, self.style_token(to_style)] += strength
    return weights

  def write_transfer(self, params: Any, rng: Array, directory: str, *, piece: Any,
                     to_style: str, extras: dict[str, Any],
                     from_style: str | None = None, strength: float = 1.0,
                     num_samples: int = 1, length: int | None = None,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                     guidance: float = 1.0, title: str = "",
                     windows: int = 1) -> tuple[list[str], str]:
    """Writes the source (`source.mid` + `.png`: the `windows` windows the
    VAE read, joined) and `num_samples` transfers (`sample_NNN.mid` +
    `.png`: each window's moved latent decoded, the windows joined,
    `transfer_piece`). Returns (the sample MIDI paths, the source style)."""
    rows, z, source_style = self.transfer_piece(params, piece, to_style, extras,
                                                from_style, strength, windows)
    n = len(rows)
    style = self.transfer_styles(to_style, [source_style] * (n * num_samples), strength)
    # Row i * n + w: sample i's window w.
    tokens = self.generate(params, rng, np.tile(z, (num_samples, 1)),
                           length=length or self.seq_len, temperature=temperature,
                           top_k=top_k, top_p=top_p, style=style, guidance=guidance)
    decoded = [self.representation.decode_sample(row) for row in tokens]
    source = self.join_windows([self.representation.decode(row) for row in rows])
    samples.write_midi_samples([source], directory,
                               [f"{title}source ({source_style})"], stem="source")
    paths = samples.write_midi_samples(
        (self.join_windows(decoded[i * n:(i + 1) * n]) for i in range(num_samples)),
        directory,
        (f"{title}{source_style} -> {to_style}, strength {strength:g}, sample {i}"
         for i in range(num_samples)))
    return paths, source_style

  def write_step_samples(self, params: Any, rng: Array, directory: str | None,
                         title: str) -> list[dict[str, str]]:
    """The training loop's periodic prior samples (MIDI + piano-roll PNG)."""
    return samples.write_token_step_samples(self, params, rng, directory, title)

  def write_samples(self, params: Any, rng: Array, directory: str | None, *,
                    num_samples: int, length: int, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0,
                    endpoints: Sequence[Any] | None = None,
                    interpolate_steps: int = 0, title: str = "",
                    style: str | None = None, guidance: float = 1.0,
                    extras: dict[str, Any] | None = None,
                    style_prior: bool = True) -> list[str]:
    """Decodes latents and writes `sample_NNN.mid` + `.png` into `directory`.

    Args:
      params, rng: model parameters and key (latents and token draws).
      directory: created if missing; None decodes without writing (the
        non-chief processes of a multi-host run).
      num_samples: prior samples (when not interpolating).
      length: tokens decoded per sample (at most; EOS ends one early).
      temperature, top_k, top_p: sampling filters of every token.
      endpoints: two pieces (NoteSequences or token arrays) whose posterior
        means are the interpolation's ends; needs `interpolate_steps` >= 2.
      interpolate_steps: if > 0, instead of prior samples decode this many
        points of the spherical interpolation between the endpoints' latents
        (two prior draws without endpoints), every point with the same
        sampling noise.
      title: prefix of each PNG's title.
      style, guidance: the samples' style (None: none) and a conditioned
        decoder's classifier-free guidance scale (`generate`).
      extras, style_prior: the bundle's extras; with `style_prior` and its
        style latents, prior samples of `style` start from the style's region
        of the latent space (`style_latents_for`).

    Returns:
      The MIDI paths, in order along the interpolation.
    """
    if endpoints is not None and interpolate_steps < 2:
      raise ValueError(f"Interpolating between endpoints needs interpolate_steps "
                       f">= 2 (both ends included), got {interpolate_steps}.")
    latent_rng, decode_rng = jax.random.split(rng)
    if interpolate_steps > 0:
      z = self.interpolation_latents(params, latent_rng, interpolate_steps,
                                     endpoints)
    else:
      z = self.style_latents_for(latent_rng, num_samples, style, extras, style_prior)
    tokens = self.generate(params, decode_rng, z, length=length,
                           temperature=temperature, top_k=top_k, top_p=top_p,
                           shared_noise=interpolate_steps > 0,
                           style=style if self.styles else None, guidance=guidance)
    if directory is None:
      return []
    labels = (f"interpolation {i}/{len(tokens) - 1}" if interpolate_steps
              else f"sample {i}" for i in range(len(tokens)))
    if style is not None:
      title = f"{title}{style}, guidance {guidance:g}, "
    return samples.write_midi_samples(
        (self.representation.decode_sample(row) for row in tokens), directory,
        (f"{title}{label}" for label in labels))


@functools.partial(jax.jit, static_argnums=0)
def _encode(model: vae_model.SequenceVAE, params: Any, tokens: Array,
            style: Array | None = None):
  return model.apply({"params": params}, tokens, style=style, method=model.encode)


@functools.partial(jax.jit, static_argnums=0, static_argnames=(
    "length", "temperature", "top_k", "top_p", "eos_id", "pad_id", "shared_noise",
    "guidance"))
def decode_latents(model: vae_model.SequenceVAE, params: Any, rng: Array, z: Array,
                   style: Array | None = None, *, length: int, temperature: float,
                   top_k: int, top_p: float, eos_id: int, pad_id: int,
                   shared_noise: bool, guidance: float = 1.0) -> Array:
  """One compiled loop: the decoder's carry from z, then `length` tokens.

  Each token is drawn by the Gumbel-max trick from the filtered logits at
  `temperature`; with `shared_noise` the Gumbel noise of a step is the same
  for every row. After a row's EOS it gets PAD. A conditioned decoder reads
  `style` (`SequenceVAE.condition`); with `guidance` != 1 the batch runs
  twice over, its second half with no style, and each step's logits mix the
  halves, l_u + guidance (l_c - l_u), before the one token both halves read.

  Returns:
    [batch, length] int32.
  """
  variables = {"params": params}
  n = z.shape[0]
  decoder_z = model.apply(variables, z, style, method=model.condition)
  guided = guidance != 1.0
  if guided:
    decoder_z = jnp.concatenate(
        [decoder_z, model.apply(variables, z, None, method=model.condition)])
  carry = model.apply(variables, decoder_z, method=model.initial_carry)
  token = jnp.full((decoder_z.shape[0],), model.start_id, jnp.int32)

  def step(state, step_rng):
    token, carry, done = state
    logits, carry = model.apply(variables, decoder_z, token[:, None], carry,
                                method=model.decode)
    logits = logits[:, 0]
    if guided:
      styled, plain = logits[:n], logits[n:]
      logits = plain + guidance * (styled - plain)
    scaled = filter_logits(logits / temperature, top_k, top_p)
    shape = scaled.shape[-1:] if shared_noise else scaled.shape
    gumbel = jax.random.gumbel(step_rng, shape, jnp.float32)
    new = jnp.argmax(scaled + gumbel, -1).astype(jnp.int32)
    new = jnp.where(done, pad_id, new)
    fed = jnp.concatenate([new, new]) if guided else new
    return (fed, carry, done | (new == eos_id)), new

  done = jnp.zeros((n,), bool)
  _, tokens = jax.lax.scan(step, (token, carry, done),
                           jax.random.split(rng, length))
  return tokens.T
