"""Polyphonic piano-roll modelling: each frame an independent Bernoulli per key.

The JSB Chorales benchmark of the polyphonic-music literature
(Boulanger-Lewandowski et al. 2012; Bai et al. 2018): the bundled quarter-note
chorales (`data/jsb_quarter.py`) as 88-key multi-hot frames, with the file's
own train/valid/test split. The model reads frames 0..t-1 and predicts frame t
as 88 independent Bernoullis (sigmoid cross-entropy over 88 logits); frame 0
is predicted from an all-zero start frame. The metric is the negative
log-likelihood in nats per frame: summed over the 88 keys, averaged over every
frame of every piece of the split.

Batches are whole pieces, zero-padded to `config.data.max_frames`:
{"frames": [batch, max_frames, 88] uint8, "mask": [batch, max_frames] uint8}
(mask 1 on a piece's frames; padding rows of the last eval batch are all
zero). A model is any linen module called as `model(frames, train=...,
carry=...) -> (logits, carry)` on float multi-hot frames, such as the LSTM and
the Transformer with `vocab_size = 88`.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterator

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import note_seq
import numpy as np
import optax
from ml_collections import config_dict

from musegen_jax import models
from musegen_jax import plots
from musegen_jax.data import jsb_quarter
from musegen_jax.data import pipeline
from musegen_jax.data.representations import pianoroll as pianoroll_rep
from musegen_jax.tasks import common

Array = jax.Array
NUM_KEYS = jsb_quarter.NUM_KEYS
SAMPLE_QPM = 80.0  # Tempo of written samples: one frame is a quarter note.


def check_config(config: config_dict.ConfigDict) -> None:
  """Rejects out-of-range values of the piano-roll task's keys."""
  positive = {"data.max_frames": config.data.max_frames,
              "learning_rate": config.learning_rate,
              "sample.num_samples": config.sample.num_samples,
              "sample.length": config.sample.length,
              "sample.temperature": config.sample.temperature}
  for key, value in positive.items():
    if not value > 0:
      raise ValueError(f"config.{key}={value!r} must be > 0")
  non_negative = {"warmup_steps": config.warmup_steps,
                  "weight_decay": config.weight_decay,
                  "grad_clip_norm": config.grad_clip_norm}
  for key, value in non_negative.items():
    if value < 0:
      raise ValueError(f"config.{key}={value!r} must be >= 0")
  if config.grad_accum_steps < 1:
    raise ValueError(f"config.grad_accum_steps={config.grad_accum_steps} must be >= 1")
  if not 0 <= config.input_dropout_rate < 1:
    raise ValueError(f"config.input_dropout_rate={config.input_dropout_rate} "
                     "must be in [0, 1)")
  if not 0 <= config.model.dropout_rate < 1:
    raise ValueError(f"config.model.dropout_rate={config.model.dropout_rate} "
                     "must be in [0, 1)")
  if config.model.name == "transformer" and config.model.max_len < config.data.max_frames:
    raise ValueError(f"config.model.max_len={config.model.max_len} is shorter than "
                     f"config.data.max_frames={config.data.max_frames}")


def frame_nll_sums(logits: Array, frames: Array, mask: Array) -> dict[str, Array]:
  """Summed Bernoulli NLL of target frames under per-key logits.

  Args:
    logits: [batch, time, 88] float logits of each key being on.
    frames: [batch, time, 88] targets in {0, 1}.
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


def shift_right(frames: Array) -> Array:
  """Model inputs: an all-zero start frame, then frames[:, :-1], as float32."""
  frames = frames.astype(jnp.float32)
  return jnp.pad(frames, ((0, 0), (1, 0), (0, 0)))[:, :-1]


class _PieceAt(grain.transforms.Map):
  """Index -> {"frames", "mask"} of one padded piece (picklable for workers)."""

  def __init__(self, rolls: np.ndarray, mask: np.ndarray):
    self.rolls, self.mask = rolls, mask

  def map(self, index: int) -> dict[str, np.ndarray]:
    return {"frames": self.rolls[index], "mask": self.mask[index]}


class PianorollTask:
  """Loss, steps and sampling of a multi-hot next-frame model on JSB Chorales."""

  # Valid metric that picks the best checkpoint (lower is better), and the
  # train metrics the progress bar shows.
  valid_metric = "nll"
  progress_keys = ("loss",)

  def __init__(self, config: config_dict.ConfigDict, representation: Any):
    """`representation` is only recorded with exports: the data is built in."""
    self.config = config
    self.representation = representation
    self.max_frames = int(config.data.max_frames)
    self.model: nn.Module = models.create_model(config.model, NUM_KEYS)
    self.learning_rate_fn = common.create_learning_rate_fn(config)
    # Made once: the optimizer is part of the state's tree structure.
    self.tx = common.create_optimizer(config)

  def init_state(self, rng: Array) -> common.TrainState:
    """Fresh parameters (still `nn.Partitioned`) and AdamW state."""
    return common.TrainState.create(apply_fn=self.model.apply,
                                    params=self.init_params(rng, unbox=False),
                                    tx=self.tx)

  def init_params(self, rng: Array, unbox: bool = True) -> Any:
    """Fresh parameters; with `unbox=False` still in their `nn.Partitioned` boxes."""
    frames = jnp.zeros((1, self.max_frames, NUM_KEYS), jnp.float32)
    params = self.model.init({"params": rng}, frames, train=False)["params"]
    return common.unbox(params) if unbox else params

  @staticmethod
  def prepare_data(data_dir: str) -> str:
    """Nothing to prepare: the quarter-note chorales ship with the package."""
    return data_dir

  @staticmethod
  def eval_params(state: common.TrainState) -> Any:
    """The parameters that evaluation, samples and export use."""
    return state.params

  def _padded(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    return jsb_quarter.pad_rolls(jsb_quarter.load_rolls(split), self.max_frames)

  def create_train_dataset(self, data_dir: str) -> grain.IterDataset:
    """Shuffled whole training pieces, this process's share of each batch.

    `data_dir` is not read (the chorales are bundled). The iterator's state
    (position and shuffle) goes into checkpoints.
    """
    del data_dir
    config = self.config
    rolls, mask = self._padded("train")
    ds = (grain.MapDataset.range(len(rolls))
          .seed(config.seed)
          .shuffle()
          .repeat()
          .map(_PieceAt(rolls, mask))
          [jax.process_index()::jax.process_count()])
    return pipeline.batch_and_prefetch(
        ds, global_batch_size=config.batch_size, num_workers=config.data.num_workers,
        prefetch_buffer_size=config.data.prefetch_buffer_size)

  def eval_data(self, data_dir: str, split: str = "valid") -> dict[str, np.ndarray]:
    """Every piece of `split`, whole and padded: {"frames", "mask"}.

    With `config.num_eval_batches` >= 0 only as many pieces as those batches
    hold (the loop stops there anyway).
    """
    del data_dir
    rolls, mask = self._padded(split)
    if self.config.num_eval_batches >= 0:
      keep = self.config.num_eval_batches * self.config.batch_size
      rolls, mask = rolls[:keep], mask[:keep]
    return {"frames": rolls, "mask": mask}

  def eval_batches(self, eval_data: dict[str, np.ndarray]
                   ) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of fixed-size batches; the last padded with empty pieces."""
    size = self.config.batch_size
    per_process = size // jax.process_count()
    lo = jax.process_index() * per_process
    for start in range(0, len(eval_data["mask"]), size):
      batch = {k: pipeline.pad_to(v[start:start + size], size, 0)
               for k, v in eval_data.items()}
      yield {k: v[lo:lo + per_process] for k, v in batch.items()}

  def _sums(self, params: Any, batch: dict[str, Array], rng: Array | None,
            train: bool) -> dict[str, Array]:
    inputs = shift_right(batch["frames"])
    rate = self.config.input_dropout_rate
    if train and rate > 0:
      # Inverted dropout on the input keys (the targets stay whole).
      rng, input_rng = jax.random.split(rng)
      keep = jax.random.bernoulli(input_rng, 1.0 - rate, inputs.shape)
      inputs = jnp.where(keep, inputs / (1.0 - rate), 0.0)
    logits, _ = self.model.apply(
        {"params": params}, inputs, train=train,
        rngs=None if rng is None else {"dropout": rng})
    return frame_nll_sums(logits, batch["frames"], batch["mask"])

  def train_step(self, state: common.TrainState, batch: dict[str, Array],
                 rng: Array, axis_name: str | None = None
                 ) -> tuple[common.TrainState, dict[str, Array]]:
    """One AdamW update on the frame-averaged NLL of the (global) batch.

    Gradients of each micro-batch's NLL sum are added up (and summed over
    `axis_name` under pmap), then divided by the batch's frame count, so
    accumulation and device count do not change the update.

    Args:
      state: the train state.
      batch: {"frames", "mask"} (this device's share under pmap).
      rng: the run's step key (folded with step, micro-batch and device).
      axis_name: the pmap axis to sum gradients and metrics over, or None.
    """
    _, grads, loss = common.summed_loss_gradients(
        state.params, batch, jax.random.fold_in(rng, state.step),
        lambda params, micro_batch, key: self._sums(params, micro_batch, key,
                                                    train=True),
        loss_key="nll_sum", weight_key="frame_sum",
        num=self.config.grad_accum_steps, axis_name=axis_name)
    grad_norm = optax.tree.norm(grads)
    state, finite = common.apply_finite_update(state, grads, loss, grad_norm)
    return state, {"loss": loss, "grad_norm": grad_norm,
                   "nonfinite": (~finite).astype(jnp.float32)}

  def eval_step(self, params: Any, batch: dict[str, Array]) -> dict[str, Array]:
    """NLL and frame sums over a batch; `summarize` turns totals into means."""
    return self._sums(params, batch, None, train=False)

  @staticmethod
  def summarize(sums: dict[str, float], eval_data: Any = None) -> dict[str, float]:
    """NLL in nats per frame (and per key), and the number of frames counted."""
    del eval_data  # The sums hold everything.
    frames = float(sums["frame_sum"])
    nll = float(sums["nll_sum"]) / max(frames, 1.0)
    return {"nll": nll, "nll_per_key": nll / NUM_KEYS, "frames": frames}

  def sample(self, params: Any, rng: Array, *, num_samples: int, length: int,
             temperature: float = 1.0) -> Array:
    """Draws `length` frames per sample from the all-zero start frame.

    Returns:
      [num_samples, length, 88] uint8 rolls.
    """
    return sample_frames(self.model, params, rng, num_samples=num_samples,
                         length=length, temperature=float(temperature))

  def write_step_samples(self, params: Any, rng: Array, directory: str | None,
                         title: str) -> list[dict[str, str]]:
    """The loop's periodic samples: one {"midi", "image"} per sample."""
    sample = self.config.sample
    rolls = np.asarray(jax.device_get(self.sample(
        params, rng, num_samples=sample.num_samples, length=sample.length,
        temperature=sample.temperature)))
    if directory is None:
      return []
    os.makedirs(directory, exist_ok=True)
    written = []
    for i, roll in enumerate(rolls):
      ns = pianoroll_rep.roll_to_sequence(roll, steps_per_quarter=1,
                                          min_pitch=jsb_quarter.MIN_PITCH,
                                          qpm=SAMPLE_QPM)
      path = os.path.join(directory, f"sample_{i:03d}.mid")
      note_seq.sequence_proto_to_midi_file(ns, path)
      plots.plot_pianoroll(ns, path[:-4] + ".png", title=f"{title}sample {i}")
      written.append({"midi": path, "image": path[:-4] + ".png"})
    return written


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
