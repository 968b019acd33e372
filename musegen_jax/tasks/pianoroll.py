"""Polyphonic piano-roll modelling: Bernoulli or serial frames, any corpus.

The polyphonic-music benchmarks (Boulanger-Lewandowski et al. 2012; Bai et
al. 2018) as 88-key frames, with their own train/valid/test split.
`config.data.dir` names the pieces (`data/poly_corpus.py`): "" for the
bundled quarter-note JSB Chorales (`data/jsb_quarter.py`), a benchmark file
as distributed (`.pickle` or `.mat`: JSB, Nottingham, MuseData,
Piano-midi.de), or a corpus from `python -m musegen_jax.prepare`, quantised
to `config.data.steps_per_quarter` frames per quarter note (or, with
`config.data.frames_per_second` > 0, to that fixed rate: performances). The
metric is the negative log-likelihood in nats per frame, averaged over every
frame of every piece of the split.

Pieces of any length. Training reads windows of `config.data.max_frames`
frames (serial: `config.data.max_tokens` tokens): a piece that fits is read
whole, as it always was; a longer one appears once per `max_frames` of its
length in each epoch, each time as a window at a random (seeded) start
(`RandomPieceWindow`). Evaluation scores every frame of every whole piece
once, in fixed-size windows (`eval_windows`) so that memory does not grow
with the longest piece: the LSTM and GRU run a piece's windows in order
and carry their state from one to the next (the full history, exactly);
other models (the Transformer) read each window with the `context` frames
before it and score only the frames after them: exact when the context
covers the model's receptive field (local attention:
num_layers * (attention_window - 1) frames), else half a window of history.
A piece that fits one window is scored in one pass, as before.

`config.data.frame_model` chooses how a frame given the history is modelled:

"bernoulli": the model reads frames 0..t-1 (multi-hot) and predicts frame t
as 88 independent Bernoullis (sigmoid cross-entropy over 88 logits); frame 0
is predicted from an all-zero start frame. Batches are pieces (or windows),
zero-padded: {"frames": [batch, time, 88] uint8, "mask": [batch, time]
uint8} (mask 1 on a piece's frames). The model is any linen module called as
`model(frames, train=..., carry=...) -> (logits, carry)` on float multi-hot
frames, with `vocab_size = 88`.

"serial": a frame is the token list of its active keys in ascending order,
then an end-of-frame token (EOF); a piece is START followed by its frames'
lists. The codec and its vocabulary (`SERIAL_VOCAB_SIZE` = 90: 88 keys, EOF,
START) are `data/representations/serial_frames.py`. START is also the padding
after a piece and the blank that input dropout puts in place of a token; it
is never a target. A training window of a long piece starts at a frame
boundary (its first token is START or an EOF).

The model is any token LM of the zoo reading the tokens causally; its logits
at each position give the next token's distribution, restricted to the
tokens that keep a frame a set: after key k only keys above k or EOF, after
START or EOF any key or EOF (`serial_frames.allowed_next`). The disallowed
logits are -inf before the softmax in training, evaluation and sampling
alike, so the probability of a frame is the product of its tokens' (keys and
EOF) and its NLL, their sum, is directly comparable with the Bernoulli NLL
per frame.
Batches are pieces (or windows) padded: {"tokens": [batch, length] int32};
frames are counted by their EOF targets. Samples are drawn token by token in
one compiled loop and stop after `config.sample.length` frames; a frame's
EOF is forced after `config.sample.max_notes_per_frame` keys.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import config_dict

from musegen_jax import errors
from musegen_jax import models
from musegen_jax.data import jsb_quarter
from musegen_jax.data import pipeline
from musegen_jax.data import poly_corpus
from musegen_jax.data.representations import pianoroll as pianoroll_rep
from musegen_jax.data.representations import serial_frames
from musegen_jax.data.representations.serial_frames import EOF_ID
from musegen_jax.data.representations.serial_frames import PAD_ID
from musegen_jax.data.representations.serial_frames import SERIAL_VOCAB_SIZE
from musegen_jax.data.representations.serial_frames import START_ID
from musegen_jax.tasks import base
from musegen_jax.tasks import checks
from musegen_jax.tasks import samples

Array = jax.Array
NUM_KEYS = jsb_quarter.NUM_KEYS
SAMPLE_QPM = 80.0  # Tempo of written samples, data.steps_per_quarter frames a quarter.
FRAME_MODELS = ("bernoulli", "serial")
# Models whose state carries a piece's whole history from window to window.
RECURRENT_MODELS = ("lstm", "gru")
# Keys added after bundles were exported (`tasks.fill_defaults`).
CONFIG_DEFAULTS = {"data.steps_per_quarter": 1, "data.frames_per_second": 0.0}


def frame_model(config: config_dict.ConfigDict) -> str:
  """`config.data.frame_model`; "bernoulli" for runs and exports made before it."""
  return config.data.get("frame_model", "bernoulli")


def check_config(config: config_dict.ConfigDict) -> None:
  """Rejects out-of-range values of the piano-roll task's keys."""
  checks.check_model_name(config, models.MODELS)
  mode = frame_model(config)
  if mode not in FRAME_MODELS:
    raise ValueError(f"config.data.frame_model={mode!r}; allowed: {list(FRAME_MODELS)}")
  serial = mode == "serial"
  positive = {"data.max_frames": config.data.max_frames,
              "sample.num_samples": config.sample.num_samples,
              "sample.length": config.sample.length,
              "sample.temperature": config.sample.temperature,
              "data.steps_per_quarter": config.data.get("steps_per_quarter", 1)}
  if serial:
    positive["data.max_tokens"] = config.data.max_tokens
  checks.check_optimizer_ranges(config)
  checks.check_ranges(
      positive=positive,
      non_negative={"data.transpose": config.data.get("transpose", 0),
                    "data.frames_per_second": config.data.get("frames_per_second", 0.0)},
      fractions={"input_dropout_rate": config.input_dropout_rate,
                 "model.dropout_rate": config.model.dropout_rate})
  if config.get("distill_teachers", ""):
    if serial:
      raise ValueError("config.distill_teachers needs Bernoulli frames "
                       "(config.data.frame_model='bernoulli').")
    if config.data.get("transpose", 0):
      raise ValueError("config.distill_teachers and config.data.transpose do not "
                       "mix: the teachers' targets are for the pieces as written.")
    if not 0 <= config.distill_weight <= 1:
      raise ValueError(f"config.distill_weight={config.distill_weight!r} must "
                       "be in [0, 1]")
  if serial and not 1 <= config.sample.max_notes_per_frame <= NUM_KEYS:
    raise ValueError(f"config.sample.max_notes_per_frame="
                     f"{config.sample.max_notes_per_frame} must be in [1, {NUM_KEYS}]")
  if config.model.name == "transformer":
    # Positions the model needs: training reads whole pieces; sampling feeds
    # the start, then every drawn frame (serial: every drawn token).
    if serial:
      needs = {"data.max_tokens": config.data.max_tokens,
               "sample.length and sample.max_notes_per_frame": 1 + sample_steps(
                   config.sample.length, config.sample.max_notes_per_frame)}
    else:
      needs = {"data.max_frames": config.data.max_frames,
               "sample.length": 1 + config.sample.length}
    for key, needed in needs.items():
      if config.model.max_len < needed:
        raise ValueError(f"config.model.max_len={config.model.max_len} is shorter "
                         f"than the {needed} positions config.{key} needs.")


def eval_windows(config: config_dict.ConfigDict) -> tuple[int, int]:
  """(window, context) of evaluation, in model input positions.

  A piece is read in windows of `window` positions (Bernoulli:
  `data.max_frames` frames; serial: `data.max_tokens` - 1 tokens), each
  starting `window - context` after the one before; the first window's
  positions are all scored, the others' after their first `context`.

  Recurrent models (LSTM, GRU) carry their state from window to window:
  context 0. A Transformer with local attention sees
  num_layers * (attention_window - 1) positions back (capped at the window
  less one); any other model half a window.
  """
  window = (int(config.data.max_tokens) - 1 if frame_model(config) == "serial"
            else int(config.data.max_frames))
  model = config.model
  if model.name in RECURRENT_MODELS:
    return window, 0
  attention_window = int(model.get("attention_window", 0) or 0)
  if model.name == "transformer" and attention_window > 0:
    return window, min(int(model.num_layers) * (attention_window - 1), window - 1)
  return window, window // 2


def num_windows(length: int, window: int, context: int) -> int:
  """Windows that cover `length` input positions (a power of two, so that
  few padded lengths, and compiled programs, serve a corpus)."""
  stride = window - context
  needed = 1 + max(0, -(-(length - window) // stride))
  return 1 << (needed - 1).bit_length()


def padded_length(windows: int, window: int, context: int) -> int:
  """Input positions that `windows` windows cover."""
  return window + (windows - 1) * (window - context)


def windowed_scores(apply: Any, inputs: Array, score: Any, *, window: int,
                    context: int, recurrent: bool) -> tuple[Any, Any]:
  """Scores every input position once, reading `window` positions at a time.

  Args:
    apply: `apply(inputs, carry) -> (logits, carry)`, the model at eval.
    inputs: [batch, length, ...] the model inputs; `length` is `window` or
      less, or `padded_length(n, window, context)` for some n.
    score: `score(logits, start, size)`: a pytree for the logits of positions
      start .. start + size - 1 (start may be traced).
    window: positions per model call.
    context: positions of each later window that are read but not scored
      (0 with `recurrent`).
    recurrent: carry the state from each window to the next.

  Returns:
    (the first window's score, the later windows' scores stacked on a
    leading axis, or None when there is one window).
  """
  length = inputs.shape[1]
  first = min(window, length)
  logits, carry = apply(inputs[:, :first], None)
  head = score(logits, 0, first)
  stride = window - context
  if length <= window:
    return head, None
  if (length - window) % stride:
    raise ValueError(f"{length} positions are not windows of {window} "
                     f"every {stride}.")

  def step(carry, start):
    part = jax.lax.dynamic_slice_in_dim(inputs, start, window, axis=1)
    logits, new_carry = apply(part, carry if recurrent else None)
    out = score(logits[:, context:], start + context, stride)
    return (new_carry if recurrent else carry), out

  starts = jnp.arange(1, 1 + (length - window) // stride, dtype=jnp.int32) * stride
  _, tail = jax.lax.scan(step, carry if recurrent else None, starts)
  return head, tail


def frame_nll_sums(logits: Array, frames: Array, mask: Array) -> dict[str, Array]:
  """Summed Bernoulli NLL of target frames under per-key logits.

  Args:
    logits: [batch, time, 88] float logits of each key being on.
    frames: [batch, time, 88] targets in {0, 1}, or each key's target
      probability in [0, 1] (distillation: the cross-entropy).
    mask: [batch, time]: 1 on the frames that count.

  Returns:
    {"nll_sum": sum over counted frames and keys of the NLL in nats,
     "frame_sum": number of counted frames}.
  """
  mask = mask.astype(jnp.float32)
  per_key = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                               frames.astype(jnp.float32))
  return {"nll_sum": jnp.sum(jnp.sum(per_key, -1) * mask),
          "frame_sum": jnp.sum(mask)}


def key_log_probs(logits: Array) -> Array:
  """Each key's Bernoulli log-probabilities, [..., 88, 2]: (off, on)."""
  logits = logits.astype(jnp.float32)
  return jnp.stack([jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(logits)],
                   axis=-1)


def frame_log_prob_sums(log_probs: Array, frames: Array, mask: Array
                        ) -> dict[str, Array]:
  """`frame_nll_sums` from `key_log_probs` (or an ensemble's average of them).

  Args:
    log_probs: [batch, time, 88, 2] log-probabilities of each key off, on.
    frames: [batch, time, 88] targets in {0, 1}.
    mask: [batch, time]: 1 on the frames that count.
  """
  mask = mask.astype(jnp.float32)
  per_key = -jnp.take_along_axis(
      log_probs, frames.astype(jnp.int32)[..., None], axis=-1)[..., 0]
  return {"nll_sum": jnp.sum(jnp.sum(per_key, -1) * mask),
          "frame_sum": jnp.sum(mask)}


def teacher_probs(export_dirs: list[str], frames: np.ndarray,
                  chunk: int = 16) -> np.ndarray:
  """The teachers' averaged probability of each key being on, given the
  true previous frames: [pieces, time, 88] float32 (`distill_teachers`).

  Args:
    export_dirs: export bundles of Bernoulli piano-roll models.
    frames: [pieces, time, 88] padded pieces, as `_pad` gives them.
    chunk: pieces per compiled call.
  """
  from musegen_jax import checkpoint  # pylint: disable=import-outside-toplevel

  total = np.zeros(frames.shape, np.float64)
  for export_dir in export_dirs:
    bundle = checkpoint.load_bundle(export_dir)
    if bundle.config.task != "pianoroll" or frame_model(bundle.config) != "bernoulli":
      raise ValueError(f"Teacher {export_dir} is a {bundle.config.task!r} / "
                       f"{frame_model(bundle.config)!r} model; distillation needs "
                       "Bernoulli piano-roll teachers.")
    if bundle.config.data.max_frames < frames.shape[1]:
      raise ValueError(f"Teacher {export_dir} reads {bundle.config.data.max_frames} "
                       f"frames, fewer than the {frames.shape[1]} of the pieces.")
    teacher = PianorollTask(bundle.config, None)
    log_probs = jax.jit(teacher.eval_log_probs)
    for start in range(0, len(frames), chunk):
      part = pipeline.pad_to(frames[start:start + chunk], chunk, 0)
      on = np.exp(np.asarray(log_probs(bundle.params, {"frames": part})[..., 1],
                             np.float64))
      total[start:start + chunk] += on[:len(frames) - start]
  return (total / len(export_dirs)).astype(np.float32)


def shift_right(frames: Array) -> Array:
  """Model inputs: an all-zero start frame, then frames[:, :-1], as float32."""
  frames = frames.astype(jnp.float32)
  return jnp.pad(frames, ((0, 0), (1, 0), (0, 0)))[:, :-1]


def masked_log_probs(logits: Array, prev: Array) -> Array:
  """Log-softmax over the tokens `serial_frames.allowed_next(prev)`; -inf elsewhere.

  Args:
    logits: [..., SERIAL_VOCAB_SIZE] float (`serial_frames`).
    prev: [...] int, the token each row of logits follows.
  """
  logits = jnp.where(serial_frames.allowed_next(prev), logits.astype(jnp.float32),
                     -jnp.inf)
  return jax.nn.log_softmax(logits, axis=-1)


def serial_nll_sums(logits: Array, tokens: Array) -> dict[str, Array]:
  """Summed NLL of serial token sequences under masked next-token logits.

  Args:
    logits: [batch, length - 1, SERIAL_VOCAB_SIZE] the model's logits after
      tokens[:, :-1].
    tokens: [batch, length] int: START, the pieces' tokens, PAD.

  Returns:
    {"nll_sum": the NLL in nats summed over every non-PAD target,
     "frame_sum": the number of frames (EOF targets),
     "token_sum": the number of targets counted}.
  """
  return serial_log_prob_sums(masked_log_probs(logits, tokens[:, :-1]), tokens)


def serial_log_prob_sums(log_probs: Array, tokens: Array) -> dict[str, Array]:
  """`serial_nll_sums` from `masked_log_probs` (or an ensemble's average).

  Args:
    log_probs: [batch, length - 1, SERIAL_VOCAB_SIZE] log-probabilities of
      each next token.
    tokens: [batch, length] int: START, the pieces' tokens, PAD.
  """
  targets = tokens[:, 1:]
  counted = targets != PAD_ID
  # Padding targets read EOF's (always finite) log-probability, then count 0.
  safe = jnp.where(counted, targets, EOF_ID)
  nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  return {"nll_sum": jnp.sum(jnp.where(counted, nll, 0.0)),
          "frame_sum": jnp.sum(targets == EOF_ID).astype(jnp.float32),
          "token_sum": jnp.sum(counted).astype(jnp.float32)}


def sample_steps(length: int, max_notes_per_frame: int) -> int:
  """Tokens the serial sampler draws: enough for `length` frames of the most notes."""
  return length * (max_notes_per_frame + 1)


class _PieceAt(grain.transforms.Map):
  """Index -> that row of each array: one padded piece (picklable for workers)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def map(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in self.arrays.items()}


class RandomPieceWindow(grain.transforms.RandomMap):
  """Entry index -> a window of its piece at a random start, padded.

  A piece of n frames (or tokens) is `ceil(n / length)` entries, so that an
  epoch reads about every frame once. Bernoulli: {"frames": [length, 88],
  "mask": [length]}, the window starting anywhere; serial: {"tokens":
  [length]}, starting at a frame boundary (a START or EOF token), the last
  frames reached by the first boundary past n - length.
  """

  def __init__(self, sequences: list[np.ndarray], length: int, serial: bool):
    self.sequences = sequences
    self.length = int(length)
    self.serial = serial
    self.entries = np.repeat(np.arange(len(sequences)),
                             [-(-len(x) // self.length) for x in sequences])

  def _starts(self, x: np.ndarray) -> np.ndarray:
    last = max(len(x) - self.length, 0)
    if not self.serial or not last:
      return np.arange(last + 1)
    bounds = np.flatnonzero((x == START_ID) | (x == EOF_ID))
    bounds = bounds[bounds < len(x) - 1]  # At least one target after it.
    return bounds[:np.searchsorted(bounds, last, side="right") + 1]

  def random_map(self, index: int, rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    x = self.sequences[int(self.entries[index])]
    starts = self._starts(x)
    start = int(starts[rng.integers(len(starts))])
    part = x[start:start + self.length]
    if self.serial:
      return {"tokens": pipeline.pad_to(part, self.length, PAD_ID)}
    mask = np.zeros((self.length,), np.uint8)
    mask[:len(part)] = 1
    return {"frames": pipeline.pad_to(part, self.length, 0), "mask": mask}


class RandomTranspose(grain.transforms.RandomMap):
  """Shifts a whole training piece by a random number of semitones.

  The shift is drawn uniformly from [-max_semitones, max_semitones], narrowed
  so that every key of the piece stays on the 88-key range. Takes and gives
  {"frames", "mask"} (Bernoulli) or {"tokens"} (serial: keys move, EOF and
  START/padding stay; the ascending order within a frame is kept).
  """

  def __init__(self, max_semitones: int):
    self.max_semitones = int(max_semitones)

  def random_map(self, piece: dict[str, np.ndarray], rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    if "frames" in piece:
      keys = np.flatnonzero(piece["frames"].any(axis=0))
    else:
      tokens = piece["tokens"]
      keys = tokens[tokens < NUM_KEYS]
    if not len(keys):
      return piece
    low = max(-self.max_semitones, -int(keys.min()))
    high = min(self.max_semitones, NUM_KEYS - 1 - int(keys.max()))
    shift = int(rng.integers(low, high + 1))
    if "frames" in piece:
      # No key wraps around: the shift keeps them all on the range.
      return {**piece, "frames": np.roll(piece["frames"], shift, axis=-1)}
    moved = np.where(tokens < NUM_KEYS, tokens + shift, tokens)
    return {**piece, "tokens": moved.astype(tokens.dtype)}


def transposed_batches(ds: grain.MapDataset, config: config_dict.ConfigDict
                       ) -> grain.IterDataset:
  """The end of the piano-roll training pipelines (this task's, the style
  classifier's): each element shifted by up to `config.data.transpose`
  semitones (`RandomTranspose`; 0 or absent: not at all), then this
  process's share of each batch."""
  if config.data.get("transpose", 0):
    ds = ds.random_map(RandomTranspose(config.data.transpose))
  ds = ds[jax.process_index()::jax.process_count()]
  return pipeline.batch_and_prefetch(
      ds, global_batch_size=config.batch_size, num_workers=config.data.num_workers,
      prefetch_buffer_size=config.data.prefetch_buffer_size)


class PianorollTask(base.SingleNetworkTask):
  """Loss, evaluation and sampling of a next-frame model of 88-key frames.

  The model, optimizer, state and guarded update are `SingleNetworkTask`'s;
  the update averages the NLL over the batch's frames. Nothing is prepared
  (`prepare_data`): the pieces are read from `config.data.dir` by
  `data/poly_corpus.py` (the bundled quarter-note chorales by default).
  """

  valid_metric = "nll"
  progress_keys = ("loss",)
  loss_key = "nll_sum"
  weight_key = "frame_sum"

  def __init__(self, config: config_dict.ConfigDict, representation: Any):
    """`representation` is only recorded with exports: the data is built in."""
    self.serial = frame_model(config) == "serial"
    self.max_frames = int(config.data.max_frames)
    self.max_tokens = int(config.data.max_tokens) if self.serial else None
    model: nn.Module = models.create_model(
        config.model, SERIAL_VOCAB_SIZE if self.serial else NUM_KEYS)
    super().__init__(config, representation, model)

  def init_inputs(self) -> Array:
    """One piece: its input tokens (serial) or frames (Bernoulli)."""
    if self.serial:
      return jnp.zeros((1, self.max_tokens - 1), jnp.int32)
    return jnp.zeros((1, self.max_frames, NUM_KEYS), jnp.float32)

  def _rolls(self, split: str) -> list[np.ndarray]:
    """The pieces of `split` from `config.data.dir` as [frames, 88] rolls."""
    data = self.config.data
    return poly_corpus.load_rolls(data.dir, split, int(data.get("steps_per_quarter", 1)),
                                  float(data.get("frames_per_second", 0.0)))

  def _sequences(self, split: str) -> list[np.ndarray]:
    """The pieces of `split` as rolls (Bernoulli) or serial tokens."""
    rolls = self._rolls(split)
    if self.serial:
      return [serial_frames.roll_to_tokens(r) for r in rolls]
    return rolls

  def _pad(self, sequences: list[np.ndarray], length: int) -> dict[str, np.ndarray]:
    """Pieces padded to `length` frames (or tokens): {"frames", "mask"} or {"tokens"}."""
    if self.serial:
      return {"tokens": serial_frames.pad_tokens(sequences, length)}
    frames, mask = jsb_quarter.pad_rolls(sequences, length)
    return {"frames": frames, "mask": mask}

  def create_train_dataset(self, data_dir: str) -> grain.IterDataset:
    """Shuffled training pieces (or windows of them), this process's share of
    each batch.

    When every piece fits a window (`data.max_frames` frames, serial:
    `data.max_tokens` tokens) the pieces are read whole, padded. Otherwise
    each piece appears once per window's length of it in an epoch, each
    time as a window at a random start (`RandomPieceWindow`, seeded by
    `config.seed` and the position in the stream).

    With `config.data.transpose` = k > 0 each piece is shifted by a random
    number of semitones in [-k, k] (`RandomTranspose`); evaluation never is.
    With `config.distill_teachers`, pieces also carry "targets": the frames
    mixed with the teachers' key probabilities (`teacher_probs`), which
    training fits instead of the frames (pieces that fit a window only).

    `data_dir` is not read: the pieces come from `config.data.dir`
    (`data/poly_corpus.py`). The iterator's state (position and shuffle)
    goes into checkpoints.
    """
    del data_dir
    config = self.config
    sequences = self._sequences("train")
    length = self.max_tokens if self.serial else self.max_frames
    fits = all(len(x) <= length for x in sequences)
    teachers = [d for d in config.get("distill_teachers", "").split(",") if d]
    if fits:
      pieces = self._pad(sequences, length)
      if teachers:
        weight = float(config.distill_weight)
        soft = teacher_probs(teachers, pieces["frames"])
        pieces["targets"] = (weight * soft + (1.0 - weight) *
                             pieces["frames"].astype(np.float32))
      ds = (grain.MapDataset.range(len(next(iter(pieces.values()))))
            .seed(config.seed)
            .shuffle()
            .repeat()
            .map(_PieceAt(pieces)))
    else:
      if teachers:
        raise errors.UserError(
            f"config.distill_teachers needs every training piece to fit "
            f"config.data.max_frames={self.max_frames}; {config.data.dir} has "
            f"one of {max(map(len, sequences))} frames.")
      window = RandomPieceWindow(sequences, length, self.serial)
      ds = (grain.MapDataset.range(len(window.entries))
            .seed(config.seed)
            .shuffle()
            .repeat()
            .random_map(window))
    return transposed_batches(ds, config)

  def eval_data(self, data_dir: str, split: str = "valid") -> dict[str, np.ndarray]:
    """Every piece of `split`, whole, in file order: {"frames", "mask"} or
    {"tokens"}, padded to the windows that cover the longest
    (`eval_windows`; one window, `data.max_frames` frames or
    `data.max_tokens` tokens, when every piece fits).

    With `config.num_eval_batches` >= 0 only as many pieces as those batches
    hold (the loop stops there anyway).
    """
    del data_dir
    sequences = self._sequences(split)
    if self.config.num_eval_batches >= 0:
      sequences = sequences[:self.config.num_eval_batches * self.config.batch_size]
    window, context = eval_windows(self.config)
    # Input positions: a roll's frames; serial, the tokens but the last.
    longest = max((len(x) - self.serial for x in sequences), default=1)
    length = padded_length(num_windows(longest, window, context), window, context)
    return self._pad(sequences, length + self.serial)

  def eval_batches(self, eval_data: dict[str, np.ndarray]
                   ) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of fixed-size batches; the last padded with empty pieces.

    When the pieces span several windows, they are batched longest first and
    each batch is cut to the windows that cover its longest piece.
    """
    size = self.config.batch_size
    per_process = size // jax.process_count()
    lo = jax.process_index() * per_process
    # An empty piece: mask 0 (Bernoulli) or nothing but padding (serial).
    pad = PAD_ID if self.serial else 0
    window, context = eval_windows(self.config)
    if self.serial:
      tokens = eval_data["tokens"]
      # Input positions up to the last token of each piece.
      lengths = tokens.shape[1] - np.argmax((tokens != PAD_ID)[:, ::-1], axis=1) - 1
    else:
      lengths = eval_data["mask"].sum(axis=1)
    total = next(iter(eval_data.values())).shape[1] - self.serial
    order = np.arange(len(lengths))
    if total > window:
      order = np.argsort(-lengths, kind="stable")
    for start in range(0, len(order), size):
      rows = order[start:start + size]
      length = total
      if total > window:
        length = padded_length(num_windows(int(lengths[rows].max()), window, context),
                               window, context)
      batch = {k: pipeline.pad_to(v[rows, :length + self.serial], size, pad)
               for k, v in eval_data.items()}
      yield {k: v[lo:lo + per_process] for k, v in batch.items()}

  def batch_spec(self, split: str = "train") -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of one global batch of `split` (train or eval)."""
    size = self.config.batch_size
    if self.serial:
      return {"tokens": jax.ShapeDtypeStruct((size, self.max_tokens), jnp.int32)}
    spec = {"frames": jax.ShapeDtypeStruct((size, self.max_frames, NUM_KEYS), jnp.uint8),
            "mask": jax.ShapeDtypeStruct((size, self.max_frames), jnp.uint8)}
    if split == "train" and self.config.get("distill_teachers", ""):
      spec["targets"] = jax.ShapeDtypeStruct((size, self.max_frames, NUM_KEYS),
                                             jnp.float32)
    return spec

  def sample_program(self, num_samples: int):
    """The sampling loop of `config.sample` as `(fn, inputs)`:
    `fn(params, rng)` (ahead-of-time compiles)."""
    s = self.config.sample
    if self.serial:
      fn = lambda params, rng: sample_serial_tokens(
          self.model, params, rng, num_samples=num_samples, length=int(s.length),
          temperature=float(s.temperature),
          max_notes_per_frame=int(s.max_notes_per_frame))
    else:
      fn = lambda params, rng: sample_frames(
          self.model, params, rng, num_samples=num_samples, length=int(s.length),
          temperature=float(s.temperature))
    return fn, ()

  def _logits(self, params: Any, batch: dict[str, Array], rng: Array | None,
              train: bool) -> Array:
    rate = self.config.input_dropout_rate
    dropout = train and rate > 0
    if dropout:
      rng, input_rng = jax.random.split(rng)
    if self.serial:
      inputs = batch["tokens"][:, :-1]
      if dropout:
        # Word dropout: inputs become the blank START token; the targets and
        # the masks (from the true previous tokens) stay whole.
        drop = jax.random.bernoulli(input_rng, rate, inputs.shape)
        inputs = jnp.where(drop, START_ID, inputs)
    else:
      inputs = shift_right(batch["frames"])
      if dropout:
        # Inverted dropout on the input keys (the targets stay whole).
        keep = jax.random.bernoulli(input_rng, 1.0 - rate, inputs.shape)
        inputs = jnp.where(keep, inputs / (1.0 - rate), 0.0)
    logits, _ = self.model.apply(
        {"params": params}, inputs, train=train,
        rngs=None if rng is None else {"dropout": rng})
    return logits

  def _sums(self, params: Any, batch: dict[str, Array], rng: Array | None,
            train: bool) -> dict[str, Array]:
    """NLL, frame (and serial: token) sums of a batch of whole pieces."""
    logits = self._logits(params, batch, rng, train)
    if self.serial:
      return serial_nll_sums(logits, batch["tokens"])
    # Distillation's soft targets when the batch has them (training only).
    return frame_nll_sums(logits, batch.get("targets", batch["frames"]),
                          batch["mask"])

  def _eval_apply(self, params: Any):
    """`apply(inputs, carry) -> (logits, carry)`: the model at evaluation."""
    return lambda inputs, carry: self.model.apply(
        {"params": params}, inputs if self.serial else inputs.astype(jnp.float32),
        train=False, carry=carry)

  def _windowed(self, params: Any, batch: dict[str, Array], score: Any):
    """`windowed_scores` over a batch's model inputs; `score(logits, start,
    size, targets)` gets the batch's arrays cut to the scored positions
    (serial: "tokens" from the token before the first target)."""
    window, context = eval_windows(self.config)
    cut = lambda x, start, size: jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)
    if self.serial:
      tokens = batch["tokens"]
      inputs = tokens[:, :-1]
      targets = lambda start, size: {"tokens": cut(tokens, start, size + 1)}
    else:
      # shift_right, kept in uint8: each window becomes float32 on its own.
      inputs = jnp.pad(batch["frames"], ((0, 0), (1, 0), (0, 0)))[:, :-1]
      # eval_log_probs needs no mask (`teacher_probs` gives none).
      targets = lambda start, size: {k: cut(batch[k], start, size)
                                     for k in ("frames", "mask") if k in batch}
    return windowed_scores(
        self._eval_apply(params), inputs,
        lambda logits, start, size: score(logits, targets(start, size)),
        window=window, context=context,
        recurrent=self.config.model.name in RECURRENT_MODELS)

  def _window_log_probs(self, logits: Array, targets: dict[str, Array]) -> Array:
    if self.serial:
      return masked_log_probs(logits, targets["tokens"][:, :-1])
    return key_log_probs(logits)

  def eval_step(self, params: Any, batch: dict[str, Array]) -> dict[str, Array]:
    """NLL and frame sums over a batch of whole pieces, window by window
    (`eval_windows`: memory bounded by one window); `summarize` turns
    totals into means."""
    head, tail = self._windowed(params, batch, lambda logits, targets: (
        self.log_prob_sums(self._window_log_probs(logits, targets), targets)))
    if tail is None:
      return head
    return jax.tree.map(lambda h, t: h + jnp.sum(t, axis=0), head, tail)

  def eval_log_probs(self, params: Any, batch: dict[str, Array]) -> Array:
    """The model's log-probabilities of every target's possible values.

    What an ensemble averages (as probabilities; `evaluate --export=A,B`),
    then scores with `log_prob_sums`. Computed window by window as
    `eval_step` is; the result holds every position of the batch.

    Returns:
      Bernoulli: [batch, time, 88, 2], each key off and on; serial:
      [batch, length - 1, SERIAL_VOCAB_SIZE], each next token (-inf where
      the encoding forbids it).
    """
    head, tail = self._windowed(params, batch, self._window_log_probs)
    if tail is None:
      return head
    tail = jnp.moveaxis(tail, 0, 1)
    tail = tail.reshape((tail.shape[0], -1) + tail.shape[3:])
    return jnp.concatenate([head, tail], axis=1)

  def log_prob_sums(self, log_probs: Array, batch: dict[str, Array]
                    ) -> dict[str, Array]:
    """`eval_step`'s sums from `eval_log_probs` (or an ensemble's average)."""
    if self.serial:
      return serial_log_prob_sums(log_probs, batch["tokens"])
    return frame_log_prob_sums(log_probs, batch["frames"], batch["mask"])

  @staticmethod
  def summarize(sums: dict[str, float], eval_data: Any = None) -> dict[str, float]:
    """NLL in nats per frame, and per key (Bernoulli) or per token (serial).

    Also the number of frames counted (and of tokens, serial).
    """
    del eval_data  # The sums hold everything.
    frames = float(sums["frame_sum"])
    nll = float(sums["nll_sum"]) / max(frames, 1.0)
    if "token_sum" in sums:
      tokens = float(sums["token_sum"])
      return {"nll": nll, "nll_per_token": float(sums["nll_sum"]) / max(tokens, 1.0),
              "frames": frames, "tokens": tokens}
    return {"nll": nll, "nll_per_key": nll / NUM_KEYS, "frames": frames}

  def sample(self, params: Any, rng: Array, *, num_samples: int, length: int,
             temperature: float = 1.0) -> np.ndarray:
    """Draws `length` frames per sample from the start (one compiled loop).

    Returns:
      [num_samples, length, 88] uint8 rolls.

    Raises:
      errors.UserError: a Transformer whose max_len is too short for the loop.
    """
    max_notes = int(self.config.sample.max_notes_per_frame) if self.serial else 0
    positions = 1 + (sample_steps(length, max_notes) if self.serial else length)
    max_len = getattr(self.model, "max_len", None)
    if max_len is not None and positions > max_len:
      longest = (max_len - 1) // (max_notes + 1 if self.serial else 1)
      raise errors.UserError(
          f"--length={length}: sampling {length} frames takes up to {positions} "
          f"positions, and this model holds max_len={max_len}; allowed: --length "
          f"up to {longest}.")
    if not self.serial:
      return np.asarray(jax.device_get(sample_frames(
          self.model, params, rng, num_samples=num_samples, length=length,
          temperature=float(temperature))))
    tokens = jax.device_get(sample_serial_tokens(
        self.model, params, rng, num_samples=num_samples, length=length,
        temperature=float(temperature), max_notes_per_frame=max_notes))
    return np.stack([serial_frames.tokens_to_roll(row, length) for row in tokens])

  def write_samples(self, params: Any, rng: Array, directory: str | None, *,
                    num_samples: int, length: int, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0,
                    primer: np.ndarray | None = None, title: str = "") -> list[str]:
    """Samples `length` frames each and writes `sample_NNN.mid` + `.png`.

    The signature of `LanguageModelTask.write_samples` (musegen_jax.sample
    calls it); top-k, top-p and primers are not supported here.

    Args:
      directory: created if missing; None samples without writing (the
        non-chief processes of a multi-host run).

    Returns:
      The MIDI paths.
    """
    if top_k or top_p != 1.0 or primer is not None:
      raise errors.UserError(f"--top_k={top_k}, --top_p={top_p}, --primer: the "
                             "piano-roll task samples with --temperature only.")
    rolls = self.sample(params, rng, num_samples=num_samples, length=length,
                        temperature=temperature)
    if directory is None:
      return []
    # A frame lasts 1 / steps_per_quarter of a quarter note at SAMPLE_QPM, or
    # 1 / frames_per_second s.
    fps = float(self.config.data.get("frames_per_second", 0.0))
    steps_per_quarter = 1 if fps else int(self.config.data.get("steps_per_quarter", 1))
    sequences = (pianoroll_rep.roll_to_sequence(roll, steps_per_quarter=steps_per_quarter,
                                                min_pitch=jsb_quarter.MIN_PITCH,
                                                qpm=60.0 * fps if fps else SAMPLE_QPM)
                 for roll in rolls)
    return samples.write_midi_samples(
        sequences, directory, (f"{title}sample {i}" for i in range(len(rolls))))

  def write_step_samples(self, params: Any, rng: Array, directory: str | None,
                         title: str) -> list[dict[str, str]]:
    """The loop's periodic samples: one {"midi", "image"} per sample."""
    sample = self.config.sample
    paths = self.write_samples(params, rng, directory,
                               num_samples=sample.num_samples,
                               length=sample.length,
                               temperature=sample.temperature, title=title)
    return samples.midi_step_samples(paths)


@functools.partial(jax.jit, static_argnums=0,
                   static_argnames=("num_samples", "length", "temperature"))
def sample_frames(model: nn.Module, params: Any, rng: Array, *, num_samples: int,
                  length: int, temperature: float) -> Array:
  """One compiled loop: each frame drawn key by key, fed back with the carry."""
  start = jnp.zeros((num_samples, 1, NUM_KEYS), jnp.float32)
  logits, carry = model.apply({"params": params}, start, train=False)

  def step(state, step_rng):
    logits, carry = state
    frame = jax.random.bernoulli(step_rng, jax.nn.sigmoid(logits / temperature))
    logits, carry = model.apply({"params": params},
                                frame[:, None].astype(jnp.float32),
                                train=False, carry=carry)
    return (logits[:, -1], carry), frame.astype(jnp.uint8)

  _, frames = jax.lax.scan(step, (logits[:, -1], carry),
                           jax.random.split(rng, length))
  return jnp.swapaxes(frames, 0, 1)


@functools.partial(jax.jit, static_argnums=0, static_argnames=(
    "num_samples", "length", "temperature", "max_notes_per_frame"))
def sample_serial_tokens(model: nn.Module, params: Any, rng: Array, *,
                         num_samples: int, length: int, temperature: float,
                         max_notes_per_frame: int) -> Array:
  """One compiled loop over serial tokens from START, fed back with the carry.

  Each token is drawn from the masked distribution
  (`serial_frames.allowed_next`, and EOF alone once the frame has
  `max_notes_per_frame` keys). A sample that has ended `length` frames emits
  PAD from then on.

  Returns:
    [num_samples, sample_steps(length, max_notes_per_frame)] int32, without
    the START token.
  """
  start = jnp.full((num_samples, 1), START_ID, jnp.int32)
  logits, carry = model.apply({"params": params}, start, train=False)
  is_eof = jnp.arange(SERIAL_VOCAB_SIZE) == EOF_ID

  def step(state, step_rng):
    logits, carry, prev, notes, frames = state
    allowed = (serial_frames.allowed_next(prev)
               & ((notes < max_notes_per_frame)[:, None] | is_eof))
    scaled = jnp.where(allowed, logits / temperature, -jnp.inf)
    token = jax.random.categorical(step_rng, scaled).astype(jnp.int32)
    token = jnp.where(frames >= length, PAD_ID, token)
    ends = token == EOF_ID
    frames = frames + ends
    notes = jnp.where(ends, 0, notes + (token < NUM_KEYS))
    logits, carry = model.apply({"params": params}, token[:, None],
                                train=False, carry=carry)
    return (logits[:, -1], carry, token, notes, frames), token

  zeros = jnp.zeros((num_samples,), jnp.int32)
  state = (logits[:, -1], carry, start[:, 0], zeros, zeros)
  _, tokens = jax.lax.scan(step, state, jax.random.split(
      rng, sample_steps(length, max_notes_per_frame)))
  return tokens.T
