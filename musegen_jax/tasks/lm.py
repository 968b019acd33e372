"""Next-token language modelling over event tokens (performance, chord_token).

Batches are {"tokens": [batch, seq_len + 1] int32}; inputs are tokens[:, :-1],
targets tokens[:, 1:], and padding targets carry zero weight. A model is any
linen module called as `model(tokens, train=..., carry=...) -> (logits,
carry)`, where `carry` is what lets sampling continue one token at a time
(the LSTM's recurrent state, the Transformer's key/value cache).

With `config.condition.enabled` the model is style-conditioned: the
dataset's styles (`config.styles`, filled from its labels when the run
starts) get one token each after the representation's vocabulary, plus a
"no style" token; every window starts with its piece's style token, which
training replaces by "no style" with probability `config.condition.dropout`,
so one model is also unconditional. Sampling starts from a style token (or
"no style"), and with a guidance scale w != 1 mixes the logits of the
conditioned and the unconditioned pass, l_u + w (l_c - l_u), in the same
compiled loop (classifier-free guidance). Style tokens are never sampled.

A model with `predicts_last_only` (the bidirectional GRU over a window)
returns logits for the token after its inputs only, and only that target
(tokens[:, -1]) is scored. Its training windows may start before a piece
(left-padded), and evaluation slides a window to every token, so every token
of a split is scored exactly once either way.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import config_dict

from musegen_jax import errors
from musegen_jax import models
from musegen_jax.data import labels
from musegen_jax.data import pipeline
from musegen_jax.tasks import base
from musegen_jax.tasks import checks
from musegen_jax.tasks import samples

Array = jax.Array

# Keys added after bundles were exported (see tasks.fill_defaults).
CONFIG_DEFAULTS = {"styles": (), "condition.enabled": False,
                   "condition.dropout": 0.1}


def check_config(config: config_dict.ConfigDict) -> None:
  """Rejects out-of-range values of the language model's keys."""
  checks.check_model_name(config, models.MODELS)
  checks.check_optimizer_ranges(config)
  checks.check_ranges(
      positive={"data.seq_len": config.data.seq_len,
                "sample.num_samples": config.sample.num_samples,
                "sample.length": config.sample.length,
                "sample.temperature": config.sample.temperature},
      non_negative={"sample.top_k": config.sample.top_k},
      fractions={"model.dropout_rate": config.model.dropout_rate,
                 "condition.dropout": config.condition.dropout})
  if config.condition.enabled and config.model.name == "bigru":
    raise ValueError("config.condition.enabled=True: the bigru window model is "
                     "not conditioned; use lstm, gru or transformer")
  if not 0 < config.sample.top_p <= 1:
    raise ValueError(f"config.sample.top_p={config.sample.top_p} must be in (0, 1]")
  window = config.model.get("window")
  if window is not None and window != config.data.seq_len:
    raise ValueError(f"config.model.window={window} must equal config.data.seq_len="
                     f"{config.data.seq_len} (the tokens a training example "
                     "feeds the model)")
  max_len = config.model.get("max_len")
  if max_len is not None:
    # Training windows hold seq_len inputs; sampling primes with one token
    # and then writes sample.length more into the model's cache.
    for key, needed in (("data.seq_len", config.data.seq_len),
                        ("sample.length", config.sample.length + 1)):
      if needed > max_len:
        raise ValueError(
            f"config.{key}={config.get(key.split('.')[0])[key.split('.')[1]]} "
            f"needs {needed} positions, more than config.model.max_len="
            f"{max_len}; raise model.max_len or lower {key}.")


def configure_from_data(config: config_dict.ConfigDict, data_dir: str) -> None:
  """A conditioned model takes its styles from the dataset's labels."""
  if config.condition.enabled:
    labels.fill_styles(config, data_dir)


class LanguageModelTask(base.SingleNetworkTask):
  """Loss, evaluation and sampling of an autoregressive token model.

  The model, optimizer, state and guarded update are `SingleNetworkTask`'s;
  token data is encoded on the fly, so the prepared shards serve as they are
  (`prepare_data`).
  """

  valid_metric = "loss"
  progress_keys = ("loss",)

  def __init__(self, config: config_dict.ConfigDict, representation: Any):
    self.pad_id = int(representation.pad_id)
    self.eos_id = int(representation.eos_id)
    # The representation's tokens; a conditioned model's style tokens follow.
    self.num_content = int(representation.vocab_size)
    self.styles = [str(s) for s in config.styles] if config.condition.enabled else []
    if config.condition.enabled and not self.styles:
      raise errors.UserError(
          "config.condition.enabled=True needs styles: train on a labelled "
          "config.data.dir (prepare --labels=... or --input=music21:...).")
    self.style_first_id = self.num_content
    self.null_style_id = self.num_content + len(self.styles)
    self.vocab_size = self.num_content + (len(self.styles) + 1 if self.styles else 0)
    model: nn.Module = models.create_model(config.model, self.vocab_size,
                                           pad_id=self.pad_id)
    super().__init__(config, representation, model)
    self.last_only = bool(getattr(self.model, "predicts_last_only", False))

  def create_train_dataset(self, data_dir: str):
    """The grain training dataset of this process: {"tokens": [b, seq_len + 1]}."""
    config = self.config
    return pipeline.create_train_dataset(
        data_dir, self.representation, seq_len=config.data.seq_len,
        global_batch_size=config.batch_size, seed=config.seed,
        num_workers=config.data.num_workers,
        prefetch_buffer_size=config.data.prefetch_buffer_size,
        on_bad_record=config.data.bad_records, left_pad=self.last_only,
        styles=tuple(self.styles), style_first_id=self.style_first_id)

  def eval_data(self, data_dir: str, split: str = "valid") -> np.ndarray:
    """The fixed windows of `split` that `eval_batches` serves."""
    config = self.config
    return pipeline.eval_windows(
        data_dir, self.representation, seq_len=config.data.seq_len, split=split,
        max_windows=(None if config.num_eval_batches < 0
                     else config.num_eval_batches * config.batch_size),
        sliding=self.last_only, styles=tuple(self.styles),
        style_first_id=self.style_first_id)

  def eval_batches(self, windows: np.ndarray):
    """This process's share of the global eval batches over `windows`."""
    return pipeline.eval_batches(windows, self.config.batch_size, self.pad_id)

  def init_inputs(self) -> Array:
    """One window of input tokens."""
    return jnp.zeros((1, self.config.data.seq_len), jnp.int32)

  def batch_spec(self, split: str = "train") -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of one global batch of `split` (train or eval)."""
    del split  # Train and eval windows have the same shape.
    return {"tokens": jax.ShapeDtypeStruct(
        (self.config.batch_size, self.config.data.seq_len + 1), jnp.int32)}

  def _targets(self, tokens: Array) -> Array:
    return tokens[:, -1:] if self.last_only else tokens[:, 1:]

  def _logits(self, params, tokens: Array, rng: Array | None,
              train: bool) -> Array:
    logits, _ = self.model.apply(
        {"params": params}, tokens[:, :-1], train=train,
        rngs=None if rng is None else {"dropout": rng})
    return logits

  def _metric_sums(self, losses: Array, predicted: Array, tokens: Array
                   ) -> dict[str, Array]:
    targets = self._targets(tokens)
    weights = (targets != self.pad_id).astype(jnp.float32)
    correct = (predicted == targets).astype(jnp.float32)
    return {"loss_sum": jnp.sum(losses * weights),
            "correct_sum": jnp.sum(correct * weights),
            "weight_sum": jnp.sum(weights)}

  def _sums(self, params, tokens: Array, rng: Array | None, train: bool):
    """Loss, correct and weight sums of windows [batch, seq_len + 1]: the
    token-weighted cross-entropy the update averages (padding weighs 0).
    A conditioned model's style token becomes "no style" with probability
    `condition.dropout` in training."""
    if self.styles and train and self.config.condition.dropout > 0:
      rng, drop_key = jax.random.split(rng)
      drop = jax.random.bernoulli(drop_key, self.config.condition.dropout,
                                  tokens.shape[:1])
      tokens = tokens.at[:, 0].set(jnp.where(drop, self.null_style_id, tokens[:, 0]))
    logits = self._logits(params, tokens, rng, train)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, self._targets(tokens))
    return self._metric_sums(losses, jnp.argmax(logits, -1), tokens)

  def train_inputs(self, batch: dict[str, Array]) -> Array:
    """The update reads the windows, {"tokens": [batch, seq_len + 1]}."""
    return batch["tokens"]

  def train_metrics(self, sums: dict[str, Array]) -> dict[str, Array]:
    """Token accuracy of the batch."""
    return {"accuracy": sums["correct_sum"] / jnp.maximum(sums["weight_sum"], 1.0)}

  def eval_step(self, params: Any, batch: dict[str, Array]) -> dict[str, Array]:
    """Metric sums over a batch; `summarize` turns their totals into means."""
    return self.log_prob_sums(self.eval_log_probs(params, batch), batch)

  def eval_log_probs(self, params: Any, batch: dict[str, Array]) -> Array:
    """Log-probabilities of each next token, [batch, targets, vocab].

    What an ensemble averages (as probabilities; `evaluate --export=A,B`),
    then scores with `log_prob_sums`. Targets: every position after the
    first, or the last alone (`predicts_last_only`).
    """
    logits = self._logits(params, batch["tokens"], None, train=False)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

  def log_prob_sums(self, log_probs: Array, batch: dict[str, Array]
                    ) -> dict[str, Array]:
    """`eval_step`'s sums from `eval_log_probs` (or an ensemble's average)."""
    tokens = batch["tokens"]
    losses = -jnp.take_along_axis(log_probs, self._targets(tokens)[..., None],
                                  axis=-1)[..., 0]
    return self._metric_sums(losses, jnp.argmax(log_probs, -1), tokens)

  @staticmethod
  def summarize(sums: dict[str, float], eval_data: Any = None) -> dict[str, float]:
    """Mean loss, accuracy and perplexity from the totals of `eval_step`."""
    del eval_data  # The sums hold everything.
    n = max(float(sums["weight_sum"]), 1.0)
    loss = float(sums["loss_sum"]) / n
    return {"loss": loss, "accuracy": float(sums["correct_sum"]) / n,
            "perplexity": float(np.exp(min(loss, 50.0)))}

  def style_token(self, style: str | None) -> int:
    """The token that starts a sample of `style` (None: "no style").

    Raises:
      errors.UserError: the model is not conditioned, or does not know
        `style` (the message lists the styles it knows).
    """
    if style is None:
      return self.null_style_id
    return self.style_first_id + checks.style_index(self.styles, style)

  def sample(self, params: Any, rng: Array, primer: Array, *, length: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             guidance: float = 1.0) -> Array:
    """Continues `primer` by `length` tokens, carrying the model state.

    Args:
      params: model parameters.
      rng: sampling key.
      primer: [batch, primer_len] int32, primer_len >= 1 (e.g. one EOS token
        to start from nothing; a conditioned model's primers start with a
        style token, `style_token`).
      length: number of tokens to generate.
      temperature, top_k, top_p: sampling filters (top_k=0, top_p=1: off).
      guidance: a conditioned model's classifier-free guidance scale: 1
        samples the conditioned model, 0 the unconditioned one, > 1 pushes
        away from the unconditioned pass.

    Returns:
      [batch, length] int32; after a sample's EOS, PAD.
    """
    max_len = getattr(self.model, "max_len", None)
    if max_len is not None and primer.shape[1] + length > max_len:
      raise ValueError(
          f"A primer of {primer.shape[1]} tokens plus length={length} needs "
          f"{primer.shape[1] + length} positions; the model has max_len="
          f"{max_len}.")
    if self.styles and float(guidance) != 1.0:
      # The unconditioned twin of each primer: "no style" first.
      primer = jnp.asarray(primer)
      primer = jnp.concatenate(
          [primer, primer.at[:, 0].set(self.null_style_id)], axis=0)
    elif float(guidance) != 1.0:
      raise errors.UserError(f"--guidance={guidance}: guidance needs a "
                             "style-conditioned model.")
    return sample_tokens(self.model, params, rng, primer, length=length,
                         temperature=float(temperature), top_k=int(top_k),
                         top_p=float(top_p), eos_id=self.eos_id,
                         pad_id=self.pad_id,
                         guidance=float(guidance) if self.styles else 1.0,
                         num_content=self.num_content if self.styles else 0)

  def sample_program(self, num_samples: int):
    """The sampling loop of `config.sample` as `(fn, inputs)`:
    `fn(params, rng, *inputs)`, inputs abstract (ahead-of-time compiles)."""
    s = self.config.sample
    fn = lambda params, rng, primer: self.sample(
        params, rng, primer, length=s.length, temperature=s.temperature,
        top_k=s.top_k, top_p=s.top_p)
    primer_len = 2 if self.styles else 1  # [style,] EOS
    return fn, (jax.ShapeDtypeStruct((num_samples, primer_len), jnp.int32),)

  def write_step_samples(self, params: Any, rng: Array, directory: str | None,
                         title: str) -> list[dict[str, str]]:
    """The training loop's periodic samples, as `config.sample` describes.

    Returns one {"midi": path, "image": png path} per sample (none when
    `directory` is None).
    """
    return samples.write_token_step_samples(self, params, rng, directory, title)

  def write_samples(self, params: Any, rng: Array, directory: str | None, *,
                    num_samples: int, length: int, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0,
                    primer: np.ndarray | None = None, title: str = "",
                    style: str | None = None, guidance: float = 1.0) -> list[str]:
    """Samples, decodes and writes `sample_NNN.mid` + `.png` into `directory`.

    Args:
      params, rng: model parameters and sampling key.
      directory: created if missing; None samples without writing (the
        non-chief processes of a multi-host run).
      num_samples, length, temperature, top_k, top_p: see `sample`.
      primer: optional [primer_len] tokens (starting with EOS) to continue;
        it is kept at the start of each written sample.
      title: prefix of each PNG's title.
      style, guidance: a conditioned model's style (None: "no style") and
        guidance scale (see `sample`).

    Returns:
      The MIDI paths.
    """
    tokens, prime = self.sample_pieces(
        params, rng, num_samples=num_samples, length=length,
        temperature=temperature, top_k=top_k, top_p=top_p, primer=primer,
        style=style, guidance=guidance)
    if directory is None:
      return []
    sequences = (self.representation.decode_sample(np.concatenate([prime[i], row]))
                 for i, row in enumerate(tokens))
    return samples.write_midi_samples(
        sequences, directory, (f"{title}sample {i}" for i in range(len(tokens))))


  def sample_room(self, primer: np.ndarray | None = None) -> int | None:
    """The most tokens a sample can add after `primer` (None: EOS alone)
    and a conditioned model's style token, as `sample_pieces` lays them
    out; None for a model without a fixed-size cache (`max_len`)."""
    max_len = getattr(self.model, "max_len", None)
    if max_len is None:
      return None
    return max_len - (1 if primer is None else len(primer)) - (1 if self.styles else 0)

  def sample_pieces(self, params: Any, rng: Array, *, num_samples: int,
                    length: int, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, primer: np.ndarray | None = None,
                    style: str | None = None, guidance: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(sampled tokens [num_samples, length], the primer's own tokens
    [num_samples, primer_len - 1]: without its EOS and style token), ready
    for `representation.decode(concatenate([primer, tokens]))`."""
    if style is not None or self.styles:
      start = [self.style_token(style)]
    else:
      start = []
    if primer is None:
      primer = np.asarray([self.eos_id], np.int32)
    primer = np.concatenate([np.asarray(start, np.int32), np.asarray(primer, np.int32)])
    prime = np.tile(primer[None], (num_samples, 1))
    tokens = np.asarray(jax.device_get(self.sample(
        params, rng, prime, length=length, temperature=temperature,
        top_k=top_k, top_p=top_p, guidance=guidance)))
    return tokens, prime[:, len(start) + 1:]


def filter_logits(logits: Array, top_k: int, top_p: float) -> Array:
  """Masks logits outside the top-k tokens and the top-p nucleus."""
  if top_k > 0:
    kth = jnp.sort(logits, axis=-1)[..., -top_k][..., None]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, -1), -1)
    # Keep the smallest set whose mass reaches top_p (always the top token).
    keep = cumulative - jax.nn.softmax(sorted_logits, -1) < top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), -1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


@functools.partial(jax.jit, static_argnums=0, static_argnames=(
    "length", "temperature", "top_k", "top_p", "eos_id", "pad_id", "guidance",
    "num_content"))
def sample_tokens(model: nn.Module, params: Any, rng: Array, primer: Array, *,
                  length: int, temperature: float, top_k: int, top_p: float,
                  eos_id: int, pad_id: int, guidance: float = 1.0,
                  num_content: int = 0) -> Array:
  """One compiled loop: prime the carry, then draw `length` tokens.

  A model with a fixed-size cache (`max_len`: the Transformer) gets one of
  exactly primer + length positions: every step attends over all of it.

  With `guidance` != 1 the primer holds 2B rows: B conditioned, then their B
  unconditioned twins. Both halves run as one batch; each step's logits are
  l_u + guidance (l_c - l_u), and the token drawn from them is fed to both
  halves. `num_content` > 0 masks the tokens from that id on (a conditioned
  model's style tokens). Returns [B, length].
  """
  kwargs = ({"cache_len": primer.shape[1] + length}
            if getattr(model, "max_len", None) else {})
  logits, carry = model.apply({"params": params}, primer, train=False, **kwargs)
  guided = guidance != 1.0
  batch = primer.shape[0] // 2 if guided else primer.shape[0]

  def mix(logits: Array) -> Array:
    if guided:
      cond, uncond = logits[:batch], logits[batch:]
      logits = uncond + guidance * (cond - uncond)
    if num_content:
      ids = jnp.arange(logits.shape[-1])
      logits = jnp.where(ids < num_content, logits, -jnp.inf)
    return logits

  def step(state, step_rng):
    logits, carry, done = state
    scaled = filter_logits(mix(logits) / temperature, top_k, top_p)
    token = jax.random.categorical(step_rng, scaled).astype(jnp.int32)
    token = jnp.where(done, pad_id, token)
    done = done | (token == eos_id)
    fed = jnp.concatenate([token, token]) if guided else token
    logits, carry = model.apply({"params": params}, fed[:, None],
                                train=False, carry=carry)
    return (logits[:, -1], carry, done), token

  done = jnp.zeros((batch,), bool)
  _, tokens = jax.lax.scan(step, (logits[:, -1], carry, done),
                           jax.random.split(rng, length))
  return tokens.T
