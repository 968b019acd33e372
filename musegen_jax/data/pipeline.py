"""grain input pipeline: shards of NoteSequences -> batches of model inputs.

Train: record indices -> seeded shuffle (a new order each epoch) -> repeat ->
this process's slice -> read from the ArrayRecord shards -> parse + encode (a
bad record raises or is skipped, named by shard and index) -> random crop / pad to
`seq_len + 1` -> batch -> optional worker processes. The iterator's state is
saved in every checkpoint, so a resumed run sees the same batches.

Eval: every valid sequence cut into consecutive windows (deterministic), so
the valid loss of two runs or two steps is comparable.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from typing import Any, Iterator

import grain
import jax
import numpy as np
from absl import flags
from absl import logging
from google.protobuf.message import DecodeError

from musegen_jax.data import labels
from musegen_jax.data import representations
from musegen_jax.data import shards


def parse_note_sequence(record: bytes):
  """Deserializes one shard record into a NoteSequence."""
  from note_seq.protobuf import music_pb2
  return music_pb2.NoteSequence.FromString(record)


def load_representation(name: str, data_dir: str,
                        settings: dict[str, Any] | None = None):
  """Builds the representation `name` for a prepared dataset.

  Token vocabularies learnt from data (chord_token; miditok with BPE) are
  built on the train split once and cached beside the shards
  (`cache/chord_token_vocab.json`; miditok's file name holds a digest of its
  settings: `MidiTokRepresentation.cache_file`).

  Args:
    name: a representation name (`representations.REPRESENTATIONS`).
    data_dir: the prepared dataset.
    settings: constructor settings, e.g. the audio representation's sample
      rate and synthesizer (a config's `data.<name>` section).
  """
  if name == "miditok":
    return _load_miditok(data_dir, settings or {})
  if name != "chord_token":
    return representations.get_representation(name, **(settings or {}))
  cache = os.path.join(data_dir, "cache", "chord_token_vocab.json")
  if os.path.exists(cache):
    with open(cache, encoding="utf-8") as f:
      return representations.get_representation(name, **json.load(f))
  sequences = shards.read_note_sequences(shards.split_paths(data_dir, "train"))
  rep = representations.get_representation(name).build(sequences)
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  shards.write_json_atomic(cache, rep.settings())
  return rep


def _load_miditok(data_dir: str, settings: dict[str, Any]):
  """The MidiTok representation of `settings`; with BPE, its tokenizer read
  from the dataset's cache, or learned on the train split and cached."""
  cls = representations.MidiTokRepresentation
  name = cls.cache_file(settings)
  if name is None:
    return cls(**settings)
  cache = os.path.join(data_dir, "cache", name)
  if os.path.exists(cache):
    with open(cache, encoding="utf-8") as f:
      return cls(**json.load(f))
  logging.info("Learning the MidiTok BPE vocabulary on %s's train split.",
               data_dir)
  sequences = shards.read_note_sequences(shards.split_paths(data_dir, "train"))
  rep = cls.build(sequences, **settings)
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  shards.write_json_atomic(cache, rep.settings())
  return rep


def representation_spec(rep) -> dict[str, Any]:
  """JSON description that `representation_from_spec` turns back into `rep`."""
  return {"name": rep.name, "settings": rep.settings()}


def representation_from_spec(spec: dict[str, Any]):
  return representations.get_representation(spec["name"], **spec["settings"])


BAD_RECORD_MODES = ("error", "skip")


class BadRecordError(ValueError):
  """A shard record that does not parse or encode."""


def locate_record(index: int, shard_paths: tuple[str, ...],
                  shard_starts: tuple[int, ...]) -> str:
  """'SHARD record I' for a global record index (or 'record I' without paths)."""
  if not shard_paths:
    return f"record {index}"
  shard = bisect.bisect_right(shard_starts, index) - 1
  return f"{shard_paths[shard]} record {index - shard_starts[shard]}"


def shard_starts(paths: list[str]) -> tuple[int, ...]:
  """The global index of each shard's first record."""
  sizes = [len(grain.sources.ArrayRecordDataSource([p])) for p in paths[:-1]]
  return tuple(int(x) for x in np.cumsum([0] + sizes))


@dataclasses.dataclass(frozen=True)
class DecodeRecord(grain.transforms.Map):
  """Record index -> {"value": decode(record), "bad_records": n}.

  A record that does not decode raises `BadRecordError` naming its shard
  and record index (`on_bad_record="error"`); with `"skip"` a warning says
  the same and the next record that decodes takes its place, with
  `bad_records` counting the records passed over. Nothing is dropped, so
  the batch shape and the order of the others stay as they were, and the
  loop can count the skips exactly (`train/bad_records`).
  """
  source: Any
  decode: Any  # A picklable callable: bytes -> value.
  shard_paths: tuple[str, ...] = ()
  shard_starts: tuple[int, ...] = ()
  on_bad_record: str = "error"
  # Keep decoded values (up to `CACHE_BYTES`, read-only) for as long as this
  # transform lives, in each process that runs it: for a decode that costs
  # more than reading the record (tokenizing a piece).
  cache: bool = False
  _decoded: "_DecodedCache" = dataclasses.field(
      default_factory=lambda: _DecodedCache(), repr=False, compare=False)

  def map(self, index: int) -> dict[str, Any]:
    count = len(self.source)
    for skipped in range(count):
      i = (index + skipped) % count
      try:
        return {"value": self._decode(i), "bad_records": skipped}
      except (DecodeError, ValueError) as e:
        where = locate_record(i, self.shard_paths, self.shard_starts)
        if self.on_bad_record == "error":
          raise BadRecordError(
              f"{where}: {type(e).__name__}: {e} (set "
              "--config.data.bad_records=skip to skip such records)") from None
        logging.warning("Skipping bad record %s: %s: %s", where,
                        type(e).__name__, e)
    raise BadRecordError(f"No record of {list(self.shard_paths)} decodes.")

  def _decode(self, i: int) -> Any:
    if not self.cache:
      return self.decode(self.source[i])
    value = self._decoded.values.get(i)
    if value is None:
      value = self.decode(self.source[i])
      self._decoded.remember(i, value)
    return value


# The most one `DecodeRecord(cache=True)` keeps per process.
CACHE_BYTES = 512 << 20


class _DecodedCache:
  """Record index -> decoded value, up to `CACHE_BYTES`; values read-only."""

  def __init__(self):
    self.values: dict[int, Any] = {}
    self.bytes = 0

  def remember(self, i: int, value: Any) -> None:
    arrays = list(value.values()) if isinstance(value, dict) else [value]
    size = sum(np.asarray(a).nbytes for a in arrays)
    if self.bytes + size > CACHE_BYTES:
      return  # Full: decoded again each time, as without a cache.
    for a in arrays:
      if isinstance(a, np.ndarray):
        a.setflags(write=False)
    self.values[i] = value
    self.bytes += size


@dataclasses.dataclass(frozen=True)
class EncodeNoteSequence:
  """Serialized NoteSequence -> [EOS, tokens..., EOS] (picklable for workers)."""
  representation: Any

  def __call__(self, record: bytes) -> np.ndarray:
    return encode_with_boundary(self.representation, parse_note_sequence(record))


@dataclasses.dataclass(frozen=True)
class EncodeStyledNoteSequence:
  """Serialized NoteSequence -> {"tokens": [EOS, tokens..., EOS], "style": id}.

  `id` is the index of the piece's label (`labels.get_label`) in `styles`; a
  piece without one of them is a bad record (see `DecodeRecord`). Without
  `leading_eos` the tokens are [tokens..., EOS] (the VAE's sequences, which
  never start with EOS).
  """
  representation: Any
  styles: tuple[str, ...]
  leading_eos: bool = True

  def __call__(self, record: bytes) -> dict[str, Any]:
    ns = parse_note_sequence(record)
    label = labels.get_label(ns)
    if label not in self.styles:
      raise ValueError(f"piece {ns.id!r} has the style {label!r}, not one of "
                       f"config.styles {list(self.styles)}")
    tokens = encode_with_boundary(self.representation, ns)
    return {"tokens": tokens if self.leading_eos else tokens[1:],
            "style": np.int32(self.styles.index(label))}


@dataclasses.dataclass(frozen=True)
class StyleFirst(grain.transforms.Map):
  """{"tokens": [n], "style": s} -> {"tokens": [first_id + s, tokens...]}:
  a conditioned model reads the style as the first token of every window."""
  first_id: int

  def map(self, item: dict[str, Any]) -> dict[str, Any]:
    item = dict(item)
    style = np.asarray([self.first_id + item.pop("style")], item["tokens"].dtype)
    item["tokens"] = np.concatenate([style, item["tokens"]])
    return item


def encode_with_boundary(representation, ns) -> np.ndarray:
  """Encodes `ns` as [EOS, tokens..., EOS].

  The leading EOS marks a piece's start, so a model learns how pieces begin
  and sampling can start from a single EOS token.
  """
  tokens = representation.encode(ns)
  return np.concatenate([np.asarray([representation.eos_id], tokens.dtype), tokens])


@dataclasses.dataclass(frozen=True)
class RandomWindow(grain.transforms.RandomMap):
  """Random crop of `length` steps along axis 0, padded with `pad_value`.

  Takes `DecodeRecord`'s {"value", "bad_records"}; gives {"tokens",
  "bad_records"}. A value that is a dict ({"tokens", "style"}) has its
  tokens cropped and its other entries passed on.

  With `left_pad`, a window may also start before the sequence (left-padded
  with `pad_value`, at least its first two tokens inside), so that the last
  token of a window is any token after the first with equal chance: what a
  model that predicts only the token after its window needs to learn how
  pieces begin.
  """
  length: int
  pad_value: int
  left_pad: bool = False

  def random_map(self, item: dict[str, Any], rng: np.random.Generator) -> dict:
    x, extra = item["value"], {}
    if isinstance(x, dict):
      extra = {k: v for k, v in x.items() if k != "tokens"}
      x = x["tokens"]
    low = -(self.length - 2) if self.left_pad else 0
    start = int(rng.integers(low, max(0, len(x) - self.length) + 1))
    window = x[max(start, 0):start + self.length]
    if start < 0:
      window = np.concatenate([np.full((-start,) + x.shape[1:], self.pad_value,
                                       x.dtype), window])
    return {"tokens": pad_to(window, self.length, self.pad_value),
            "bad_records": item["bad_records"], **extra}


def pad_to(x: np.ndarray, length: int, pad_value: int) -> np.ndarray:
  """Pads axis 0 of `x` to `length` with `pad_value`."""
  if len(x) >= length:
    return x[:length]
  pad = np.full((length - len(x),) + x.shape[1:], pad_value, x.dtype)
  return np.concatenate([x, pad], 0)


def create_train_dataset(data_dir: str, representation, *, seq_len: int,
                         global_batch_size: int, seed: int, num_workers: int,
                         prefetch_buffer_size: int = 32,
                         on_bad_record: str = "error",
                         left_pad: bool = False, styles: tuple[str, ...] = (),
                         style_first_id: int = 0,
                         leading_eos: bool = True) -> grain.IterDataset:
  """The training dataset of this process: dicts of [batch, seq_len + 1].

  Args:
    data_dir: a directory written by `prepare`.
    representation: the encoder (see `data/representations`).
    seq_len: model sequence length; windows hold `seq_len + 1` steps so that
      inputs and shifted targets both have `seq_len`.
    global_batch_size: batch over all processes; each process yields its share.
    seed: shuffle and crop seed.
    num_workers: grain worker processes (0 runs in this process).
    prefetch_buffer_size: elements read ahead by grain's threads.
    on_bad_record: "error" (raise `BadRecordError` naming the shard and
      record) or "skip" (warn with the same, put the next good record in
      its place and count it in the batch's "bad_records").
    left_pad: windows may start before a sequence (`RandomWindow`), for
      models scored on the last token of a window only.
    styles: a style-conditioned model's styles: each window is then the
      piece's style token (`style_first_id` + its index in `styles`)
      followed by `seq_len` tokens of the piece (`StyleFirst`).
    style_first_id: the token id of the first style.
    leading_eos: with `styles`, False drops each piece's leading EOS
      (`EncodeStyledNoteSequence`).
  """
  if on_bad_record not in BAD_RECORD_MODES:
    raise ValueError(f"on_bad_record={on_bad_record!r}; allowed: {BAD_RECORD_MODES}")
  paths = shards.split_paths(data_dir, "train")
  source = grain.sources.ArrayRecordDataSource(paths)
  encode = (EncodeStyledNoteSequence(representation, tuple(styles), leading_eos)
            if styles else EncodeNoteSequence(representation))
  ds = (grain.MapDataset.range(len(source))
        .seed(seed)
        .shuffle()
        .repeat()
        .map(DecodeRecord(source, encode, tuple(paths), shard_starts(paths),
                          on_bad_record, cache=True))
        # Styled: seq_len tokens after the style token.
        .random_map(RandomWindow(seq_len + (0 if styles else 1),
                                 representation.pad_id, left_pad)))
  if styles:
    ds = ds.map(StyleFirst(style_first_id))
  # Sliced after the crop, so that an element's random crop depends on its
  # global index only: every process count sees the same global batches.
  # The dataset is lazy: a process reads only its own records.
  ds = ds[jax.process_index()::jax.process_count()]
  return batch_and_prefetch(ds, global_batch_size=global_batch_size,
                            num_workers=num_workers,
                            prefetch_buffer_size=prefetch_buffer_size)


def batch_and_prefetch(ds: grain.MapDataset, *, global_batch_size: int,
                       num_workers: int, prefetch_buffer_size: int
                       ) -> grain.IterDataset:
  """The end every training pipeline shares: this process's share of each
  global batch, read ahead by threads and, with `num_workers` > 0, produced
  by worker processes."""
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=2, prefetch_buffer_size=prefetch_buffer_size))
  ds = ds.batch(global_batch_size // jax.process_count(), drop_remainder=True)
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's workers read absl flags; outside an absl app (notebooks,
      # tests) use their defaults.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                        worker_init_fn=_init_worker)
  return ds


def _init_worker(worker_index: int, worker_count: int) -> None:
  """Runs in each grain worker: its lifetime belongs to the trainer.

  A terminal's Ctrl-C (and SLURM's SIGTERM) reach every process of the job;
  a worker that died of it would leave the trainer waiting for a batch
  instead of finishing its step and saving, so workers ignore both and the
  trainer stops them when it closes the iterator. A worker also exits as
  soon as the trainer process dies (even by SIGKILL), so none is left
  behind: see `_exit_with_parent`.
  """
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  parent = multiprocessing.parent_process()
  if parent is not None:
    threading.Thread(target=_exit_with_parent, args=(parent.sentinel,),
                     name="musegen-exit-with-trainer", daemon=True).start()


def _exit_with_parent(parent_sentinel: int) -> None:
  """Waits for the trainer process to end, then ends this worker at once.

  The sentinel is multiprocessing's pipe from the parent process, readable
  once that process is gone. Not `prctl(PR_SET_PDEATHSIG)`: Linux sends that
  signal when the parent *thread* that started the worker ends, and grain
  starts workers from a thread pool that it shuts down first when the
  iterator closes. The signal then killed every worker in the middle of its
  clean exit, and the batch it was handing over stayed in /dev/shm until
  the resource tracker reported it as leaked.
  """
  multiprocessing.connection.wait([parent_sentinel])
  os._exit(1)


def eval_windows(data_dir: str, representation, *, seq_len: int,
                 split: str = "valid", max_windows: int | None = None,
                 sliding: bool = False, styles: tuple[str, ...] = (),
                 style_first_id: int = 0, leading_eos: bool = True) -> np.ndarray:
  """Every sequence of `split` cut into windows of `seq_len + 1` tokens.

  Consecutive windows overlap by one token so every token of a sequence is a
  target exactly once. With `sliding`, one window ends at every token after
  the first (left-padded near the start): every token is the last token of
  exactly one window, for models scored on that token only. With `styles`
  (a style-conditioned model), each window is the piece's style token and
  the next `seq_len` tokens of the piece, back to back, so again every token
  is a target once (without `leading_eos`, of the piece's tokens after its
  leading EOS). Returns [num_windows, seq_len + 1], padded.
  """
  windows = []
  pad = representation.pad_id
  encode = (EncodeStyledNoteSequence(representation, tuple(styles), leading_eos)
            if styles else None)
  for record in shards.read_records(shards.split_paths(data_dir, split)):
    if encode is not None:
      item = encode(record)
      tokens, style = item["tokens"], item["style"]
      cuts = [np.concatenate([np.asarray([style_first_id + style], tokens.dtype),
                              pad_to(tokens[start:start + seq_len], seq_len, pad)])
              for start in range(0, len(tokens), seq_len)]
      for window in cuts:
        windows.append(window)
        if max_windows is not None and len(windows) >= max_windows:
          return np.stack(windows)
      continue
    tokens = encode_with_boundary(representation, parse_note_sequence(record))
    if sliding:
      padded = np.concatenate([np.full(seq_len - 1, pad, tokens.dtype), tokens])
      cuts = [padded[end - seq_len - 1:end]
              for end in range(seq_len + 1, len(padded) + 1)]
    else:
      cuts = [pad_to(tokens[start:start + seq_len + 1], seq_len + 1, pad)
              for start in range(0, max(1, len(tokens) - 1), seq_len)]
    for window in cuts:
      windows.append(window)
      if max_windows is not None and len(windows) >= max_windows:
        return np.stack(windows)
  if not windows:
    raise ValueError(f"{data_dir}: split {split!r} has no sequences to evaluate")
  return np.stack(windows)


def eval_batches(windows: np.ndarray, global_batch_size: int, pad_value: int
                 ) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of fixed-size eval batches; the last is padded."""
  n = len(windows)
  per_process = global_batch_size // jax.process_count()
  for start in range(0, n, global_batch_size):
    batch = pad_to(windows[start:start + global_batch_size], global_batch_size,
                   pad_value)
    lo = jax.process_index() * per_process
    yield {"tokens": batch[lo:lo + per_process]}


