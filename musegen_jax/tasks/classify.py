"""Style classification: which style a window of piano roll comes from.

The data is a labelled corpus (`prepare --labels=...` or
`--input=music21:...`; the label of a piece is `data/labels.py`'s). Its
style names, sorted, are the classes: they fill `config.styles` when a run
starts (`configure_from_data`), so the run's config and its export bundles
record them.

Training reads random windows of `data.window` frames (at
`data.pianoroll.steps_per_quarter` frames per quarter note, 88 keys) of the
train pieces, each transposed by up to `data.transpose` semitones, and fits
the cross-entropy of the piece's style. Evaluation reads up to
`data.eval_windows_per_piece` windows spread over every piece of the split,
never transposed, and reports the window accuracy and the piece accuracy
(the style with the highest summed log-probability over the piece's
windows) with the confusion matrix of pieces, `confusion/TRUE/PREDICTED`.
"""

from __future__ import annotations

from typing import Any, Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from musegen_jax import errors
from musegen_jax import models
from musegen_jax.data import labels as labels_lib
from musegen_jax.data import pipeline
from musegen_jax.data import shards
from musegen_jax.models import classifier
from musegen_jax.tasks import base
from musegen_jax.tasks import checks
from musegen_jax.tasks import pianoroll

Array = jax.Array
NUM_KEYS = 88
# Pieces a split may have: the eval sums the log-probabilities of each
# piece's windows into a [MAX_EVAL_PIECES, styles] array of fixed shape.
MAX_EVAL_PIECES = 4096
CONFUSION_PREFIX = "confusion/"


def check_config(config: config_dict.ConfigDict) -> None:
  """Rejects out-of-range values of the classifier's keys."""
  checks.check_optimizer_ranges(config)
  checks.check_ranges(
      positive={key: config[key.split(".")[0]][key.split(".")[1]] for key in (
          "data.window", "data.eval_windows_per_piece",
          "data.max_windows_per_piece", "model.kernel_size")})
  if config.data.transpose < 0:
    raise ValueError(f"config.data.transpose={config.data.transpose!r} must be >= 0")
  if config.data.representation != "pianoroll":
    raise ValueError(f"config.data.representation={config.data.representation!r}: "
                     "the classify task reads piano rolls; use 'pianoroll'")
  features = tuple(config.model.features)
  if not features or any(int(f) != f or f < 1 for f in features):
    raise ValueError(f"config.model.features={features!r}: a non-empty list of "
                     "positive ints")
  if not 0.0 <= config.model.dropout_rate < 1.0:
    raise ValueError(f"config.model.dropout_rate={config.model.dropout_rate!r} "
                     "must be in [0, 1)")


def configure_from_data(config: config_dict.ConfigDict, data_dir: str) -> None:
  """Fills `config.styles` with the dataset's label names (metadata.json;
  `labels.fill_styles`)."""
  labels_lib.fill_styles(config, data_dir)


def read_labelled_rolls(data_dir: str, split: str, representation: Any,
                        styles: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
  """The pieces of `split` as [frames, 88] rolls, and their style ids.

  Raises:
    errors.UserError: a piece without a label, or with a label not in
      `styles`.
  """
  rolls, ids = [], []
  index = {name: i for i, name in enumerate(styles)}
  for ns in shards.read_note_sequences(shards.split_paths(data_dir, split)):
    label = labels_lib.get_label(ns)
    if label not in index:
      raise errors.UserError(
          f"{data_dir}: piece {ns.id!r} of {split} has the label {label!r}, not one "
          f"of config.styles {styles}; prepare the data again or leave "
          "config.styles empty.")
    roll = representation.encode(ns)
    if len(roll):
      rolls.append(roll)
      ids.append(index[label])
  if not rolls:
    raise errors.UserError(f"{data_dir}: split {split!r} has no piece to classify.")
  return rolls, np.asarray(ids, np.int32)


def _window(roll: np.ndarray, start: int, length: int) -> np.ndarray:
  return pipeline.pad_to(roll[start:start + length], length, 0)


def eval_starts(num_frames: int, window: int, most: int) -> np.ndarray:
  """Starts of the windows that score a piece: back to back from frame 0,
  or `most` of them spread evenly from the first frame to the last window."""
  last = max(num_frames - window, 0)
  count = min(-(-num_frames // window), most)
  if count <= 1:
    return np.zeros((1,), np.int64)
  return np.round(np.linspace(0, last, count)).astype(np.int64)


class LabelledWindow(grain.transforms.RandomMap):
  """Entry index -> {"frames": a window of its piece at a random start,
  "label": the piece's style}.

  A piece is `min(ceil(frames / window), most)` entries of an epoch, so long
  pieces are read more often, up to a cap that keeps a few long ones from
  outweighing a style of short ones.
  """

  def __init__(self, rolls: list[np.ndarray], ids: np.ndarray, length: int,
               most: int):
    self.rolls = rolls
    self.ids = ids
    self.length = int(length)
    self.entries = np.repeat(np.arange(len(rolls)),
                             [min(-(-len(r) // self.length), most) for r in rolls])

  def random_map(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    piece = int(self.entries[index])
    roll = self.rolls[piece]
    start = int(rng.integers(max(len(roll) - self.length, 0) + 1))
    return {"frames": _window(roll, start, self.length),
            "label": np.asarray(self.ids[piece], np.int32)}


class ClassifyTask(base.SingleNetworkTask):
  """Cross-entropy of a window's style; piece accuracy and confusion in eval."""

  valid_metric = "loss"
  progress_keys = ("loss", "accuracy")
  progress_valid_keys = ("accuracy", "piece_accuracy")
  curve_keys = ("loss", "accuracy", "piece_accuracy")
  loss_key = "loss_sum"
  weight_key = "weight_sum"

  def __init__(self, config: config_dict.ConfigDict, representation: Any):
    self.styles = [str(s) for s in config.styles]
    if len(self.styles) < 2:
      raise errors.UserError(
          f"config.styles={self.styles}: a classifier needs two or more styles "
          "(filled from the dataset's labels when empty).")
    self.window = int(config.data.window)
    model = classifier.ConvStyleClassifier(
        num_classes=len(self.styles), features=tuple(int(f) for f in config.model.features),
        kernel_size=int(config.model.kernel_size),
        dropout_rate=float(config.model.dropout_rate),
        dtype=models.get_dtype(config.model.dtype))
    super().__init__(config, representation, model)

  def init_inputs(self) -> Array:
    return jnp.zeros((1, self.window, NUM_KEYS), jnp.float32)

  # --- data ------------------------------------------------------------------

  def create_train_dataset(self, data_dir: str) -> grain.IterDataset:
    """Shuffled labelled windows (`LabelledWindow`), transposed by up to
    `data.transpose` semitones; this process's share of each batch. The
    iterator's state goes into checkpoints."""
    config = self.config
    rolls, ids = read_labelled_rolls(data_dir, "train", self.representation, self.styles)
    windows = LabelledWindow(rolls, ids, self.window, config.data.max_windows_per_piece)
    ds = (grain.MapDataset.range(len(windows.entries))
          .seed(config.seed)
          .shuffle()
          .repeat()
          .random_map(windows))
    return pianoroll.transposed_batches(ds, config)

  def eval_data(self, data_dir: str, split: str = "valid") -> dict[str, np.ndarray]:
    """The scoring windows of every piece of `split` (`eval_starts`):
    {"frames", "label", "piece", "weight"} per window, and "piece_labels"."""
    rolls, ids = read_labelled_rolls(data_dir, split, self.representation, self.styles)
    if len(rolls) > MAX_EVAL_PIECES:
      raise errors.UserError(f"{data_dir}: split {split!r} has {len(rolls)} pieces; "
                             f"the classifier evaluates at most {MAX_EVAL_PIECES}.")
    frames, label, piece = [], [], []
    for i, roll in enumerate(rolls):
      for start in eval_starts(len(roll), self.window,
                               self.config.data.eval_windows_per_piece):
        frames.append(_window(roll, int(start), self.window))
        label.append(ids[i])
        piece.append(i)
    return {"frames": np.stack(frames), "label": np.asarray(label, np.int32),
            "piece": np.asarray(piece, np.int32),
            "weight": np.ones((len(frames),), np.float32), "piece_labels": ids}

  def eval_batches(self, eval_data: dict[str, np.ndarray]
                   ) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of fixed-size batches; padding rows weigh 0."""
    size = self.config.batch_size
    per_process = size // jax.process_count()
    lo = jax.process_index() * per_process
    keys = ("frames", "label", "piece", "weight")
    for start in range(0, len(eval_data["label"]), size):
      batch = {k: pipeline.pad_to(eval_data[k][start:start + size], size, 0) for k in keys}
      yield {k: v[lo:lo + per_process] for k, v in batch.items()}

  def batch_spec(self, split: str = "train") -> dict[str, jax.ShapeDtypeStruct]:
    size = self.config.batch_size
    spec = {"frames": jax.ShapeDtypeStruct((size, self.window, NUM_KEYS), jnp.uint8),
            "label": jax.ShapeDtypeStruct((size,), jnp.int32)}
    if split != "train":
      spec.update(piece=jax.ShapeDtypeStruct((size,), jnp.int32),
                  weight=jax.ShapeDtypeStruct((size,), jnp.float32))
    return spec

  # --- loss and evaluation ---------------------------------------------------

  def log_probs(self, params: Any, frames: Array, rng: Array | None = None,
                train: bool = False) -> Array:
    """[batch, styles] log-probabilities of windows [batch, frames, 88]."""
    logits = self.model.apply({"params": params}, frames.astype(jnp.float32),
                              train=train, rngs=None if rng is None else {"dropout": rng})
    return jax.nn.log_softmax(logits.astype(jnp.float32))

  def _window_sums(self, log_probs: Array, label: Array, weight: Array
                   ) -> dict[str, Array]:
    nll = -jnp.take_along_axis(log_probs, label[:, None], axis=-1)[:, 0]
    correct = (jnp.argmax(log_probs, axis=-1) == label).astype(jnp.float32)
    return {"loss_sum": jnp.sum(nll * weight), "weight_sum": jnp.sum(weight),
            "correct_sum": jnp.sum(correct * weight)}

  def _sums(self, params: Any, inputs: dict[str, Array], rng: Array | None,
            train: bool) -> dict[str, Array]:
    label = inputs["label"]
    return self._window_sums(self.log_probs(params, inputs["frames"], rng, train),
                             label, jnp.ones(label.shape, jnp.float32))

  def train_metrics(self, sums: dict[str, Array]) -> dict[str, Array]:
    return {"accuracy": sums["correct_sum"] / jnp.maximum(sums["weight_sum"], 1.0)}

  def eval_step(self, params: Any, batch: dict[str, Array]) -> dict[str, Array]:
    """Window sums, and each piece's summed log-probabilities (a fixed
    [MAX_EVAL_PIECES, styles] array)."""
    log_probs = self.log_probs(params, batch["frames"])
    weight = batch["weight"]
    sums = self._window_sums(log_probs, batch["label"], weight)
    sums["piece_log_probs"] = jnp.zeros(
        (MAX_EVAL_PIECES, len(self.styles)), jnp.float32
    ).at[batch["piece"]].add(log_probs * weight[:, None])
    return sums

  def summarize(self, totals: dict[str, Any], eval_data: Any = None
                ) -> dict[str, float]:
    """loss (nats per window), accuracy (windows), piece_accuracy and the
    pieces' confusion counts `confusion/TRUE/PREDICTED`."""
    weight = max(float(totals["weight_sum"]), 1.0)
    out = {"loss": float(totals["loss_sum"]) / weight,
           "accuracy": float(totals["correct_sum"]) / weight}
    if eval_data is not None:
      truth = np.asarray(eval_data["piece_labels"])
      scores = np.asarray(totals["piece_log_probs"])[:len(truth)]
      predicted = np.argmax(scores, axis=-1)
      out["piece_accuracy"] = float(np.mean(predicted == truth))
      for t, true_name in enumerate(self.styles):
        for p, predicted_name in enumerate(self.styles):
          out[f"{CONFUSION_PREFIX}{true_name}/{predicted_name}"] = float(
              np.sum((truth == t) & (predicted == p)))
    return out

  # --- inference -------------------------------------------------------------

  def sample_program(self, num_samples: int):
    """The classifier's inference program: `fn(params, rng, frames)` ->
    [num_samples, styles] probabilities of `num_samples` windows."""
    def fn(params, rng, frames):
      del rng
      return jnp.exp(self.log_probs(params, frames))
    return fn, (jax.ShapeDtypeStruct((num_samples, self.window, NUM_KEYS), jnp.uint8),)

  def classify_rolls(self, params: Any, rolls: list[np.ndarray]) -> np.ndarray:
    """[pieces, styles] probabilities of whole pieces: each piece's windows
    (`eval_starts`) scored and their log-probabilities summed."""
    program = jax.jit(lambda p, x: self.log_probs(p, x))
    out = []
    for roll in rolls:
      starts = eval_starts(len(roll), self.window, self.config.data.eval_windows_per_piece)
      windows = np.stack([_window(roll, int(s), self.window) for s in starts])
      total = np.asarray(program(params, windows)).sum(axis=0)
      out.append(np.exp(total - np.logaddexp.reduce(total)))
    return np.stack(out)

  def write_samples(self, params: Any, rng: Array, directory: str | None,
                    **options: Any) -> list[Any]:
    del params, rng, directory, options
    raise errors.UserError(
        "config.task='classify' generates nothing; score generated pieces with "
        "`python -m musegen_jax.evaluate --export=GENERATOR --classifier=THIS`.")

  def write_step_samples(self, params: Any, rng: Array, directory: str | None,
                         title: str) -> list[dict[str, str]]:
    del params, rng, directory, title
    return []
