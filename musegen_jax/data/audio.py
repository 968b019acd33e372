"""Audio data: files, ArrayRecord shards of PCM clips, and the grain pipeline.

An audio dataset is a shard directory (see `shards.py`) whose records are
mono clips and whose metadata.json says `"kind": "audio"` and gives
`"sample_rate"`. Two things write one:

- `prepare` on a folder of audio files (one record per file, resampled);
- `ensure_audio_dir` on a NoteSequence dataset: every split rendered by an
  `AudioRepresentation`'s synthesizer into `DATA_DIR/cache/audio-KEY/`, once,
  where KEY hashes the sample rate and synth settings.

A record is 16-bit PCM: the 4-byte magic `AU16`, the sample count as a
little-endian uint32, then the samples as little-endian int16 (full scale
32767). No pickle. A NoteSequence dataset's metadata has no "kind" (older
datasets) or `"kind": "note_sequence"`.

Train: record indices -> seeded shuffle (a new order each epoch) -> repeat ->
this process's slice -> read -> check the record (a bad one raises or is
skipped, named by shard and index) -> a random `slice_len` window (short
clips padded with zeros; a few offsets are tried to avoid near-silence, and a
clip that stays silent is dropped) -> peak-normalized -> batch -> optional
worker processes. The iterator state is checkpointable, as for tokens.

Eval: `eval_clips` cuts a split into consecutive windows, deterministically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import struct
import sys
import tempfile
import uuid
from typing import Any

import grain
import jax
import numpy as np
import soundfile
from absl import logging
from google.protobuf.message import DecodeError
from scipy import signal
from tqdm import tqdm

from musegen_jax.data import labels
from musegen_jax.data import pipeline
from musegen_jax.data import representations
from musegen_jax.data import shards
from musegen_jax.data import workers

AUDIO_KIND = "audio"
NOTE_SEQUENCE_KIND = "note_sequence"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif",
                    ".aifc", ".au", ".caf", ".w64")
CACHE_DIR = "cache"
CACHE_PREFIX = "audio-"
# RMS below which a window counts as silent: -46 dBFS.
DEFAULT_SILENCE_THRESHOLD = 0.005
# Random offsets tried per clip before a silent clip is dropped.
SLICE_TRIES = 4

_MAGIC = b"AU16"
# A record of a labelled piece: the same header and samples, then the
# piece's style label in UTF-8.
_LABELLED_MAGIC = b"AU1L"
_HEADER = struct.Struct("<4sI")
# Caches rendered before records carried their labels lack this key in their
# metadata and are rendered again.
_RECORD_LABELS = "record_labels"
_FULL_SCALE = 32767.0


class AudioReadError(ValueError):
  """An audio file that cannot be read: corrupt, empty, or not audio."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


def is_audio_file(path: str) -> bool:
  """Whether the file's extension (any case) is one `read_audio_file` reads."""
  return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """Polyphase resampling along axis 0 by the reduced ratio to_rate / from_rate."""
  if from_rate == to_rate:
    return samples
  g = math.gcd(int(from_rate), int(to_rate))
  return signal.resample_poly(samples, int(to_rate) // g, int(from_rate) // g, axis=0)


def read_audio_file(path: str, sample_rate: int) -> np.ndarray:
  """Reads an audio file as mono at `sample_rate`.

  Args:
    path: a file libsndfile reads: WAV, FLAC, OGG/Opus, AIFF, MP3, ...
    sample_rate: the rate to resample to.

  Returns:
    [num_samples] float32; channels averaged.

  Raises:
    AudioReadError: the file is missing, empty, corrupt, not audio, or holds
      no samples or non-finite ones.
  """
  try:
    if os.path.getsize(path) == 0:
      raise AudioReadError(path, "empty file")
    samples, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
  except AudioReadError:
    raise
  except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as e:
    raise AudioReadError(path, f"not readable audio: {type(e).__name__}: {e}") from None
  if samples.shape[0] == 0:
    raise AudioReadError(path, "no audio samples")
  if not np.all(np.isfinite(samples)):
    raise AudioReadError(path, "non-finite samples")
  mono = samples.mean(axis=1)
  return resample(mono, file_rate, sample_rate).astype(np.float32)


def write_wav(path: str, samples: np.ndarray, sample_rate: int) -> None:
  """Writes [num_samples] or [num_samples, channels] audio as 16-bit PCM WAV.

  Samples are clipped to [-1, 1].
  """
  samples = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
  soundfile.write(path, samples, int(sample_rate), subtype="PCM_16", format="WAV")


def encode_audio_record(samples: np.ndarray, label: str | None = None) -> bytes:
  """[num_samples] float audio (clipped to [-1, 1]) -> a PCM16 shard record,
  which carries the piece's style `label` when it has one."""
  samples = np.asarray(samples)
  if samples.ndim != 1:
    raise ValueError(f"Expected mono [num_samples] audio, got shape {samples.shape}")
  pcm = np.round(np.clip(samples, -1.0, 1.0) * _FULL_SCALE).astype("<i2")
  if label is None:
    return _HEADER.pack(_MAGIC, len(pcm)) + pcm.tobytes()
  return _HEADER.pack(_LABELLED_MAGIC, len(pcm)) + pcm.tobytes() + label.encode("utf-8")


def audio_record_pcm(record: bytes) -> np.ndarray:
  """A PCM16 shard record -> its [num_samples] int16 samples (no copy).

  Raises:
    ValueError: the record is not one `encode_audio_record` wrote.
  """
  if not isinstance(record, (bytes, bytearray, memoryview)):
    raise ValueError(f"Expected bytes, got {type(record).__name__}")
  if len(record) < _HEADER.size:
    raise ValueError(f"audio record of {len(record)} bytes is shorter than its header")
  magic, count = _HEADER.unpack_from(record)
  if magic not in (_MAGIC, _LABELLED_MAGIC):
    raise ValueError(f"not an audio record (magic {bytes(magic)!r}, expected {_MAGIC!r})")
  size = _HEADER.size + 2 * count
  if len(record) < size or (magic == _MAGIC and len(record) != size):
    raise ValueError(f"audio record of {len(record)} bytes; its header says "
                     f"{count} samples ({size} bytes)")
  return np.frombuffer(record, "<i2", count, _HEADER.size)


def audio_record_label(record: bytes) -> str | None:
  """The style label a PCM16 shard record carries (None: an unlabelled piece)."""
  pcm = audio_record_pcm(record)
  if bytes(record[:4]) != _LABELLED_MAGIC:
    return None
  return bytes(record[_HEADER.size + 2 * len(pcm):]).decode("utf-8")


@dataclasses.dataclass(frozen=True)
class StyledPCM:
  """A shard record -> (its int16 samples, the id of its label among
  `styles`), for `pipeline.DecodeRecord`.

  Raises:
    ValueError: the record carries no label or one not among `styles`
      (an unlabelled piece in a dataset trained with styles).
  """
  styles: tuple[str, ...]

  def __call__(self, record: bytes) -> tuple[np.ndarray, int]:
    label = audio_record_label(record)
    if label not in self.styles:
      raise ValueError(f"the clip's style label {label!r} is not one of "
                       f"{', '.join(self.styles)}")
    return audio_record_pcm(record), self.styles.index(label)


def decode_audio_record(record: bytes) -> np.ndarray:
  """A PCM16 shard record -> [num_samples] float32 in [-1, 1]."""
  return pcm_to_float(audio_record_pcm(record))


def pcm_to_float(pcm: np.ndarray) -> np.ndarray:
  return np.clip(pcm.astype(np.float32) / _FULL_SCALE, -1.0, 1.0)


def dataset_kind(metadata: dict[str, Any]) -> str:
  """"audio" or "note_sequence" (metadata without a kind predates audio)."""
  return metadata.get("kind", NOTE_SEQUENCE_KIND)


def read_audio_metadata(audio_dir: str) -> dict[str, Any]:
  """Reads an audio dataset's metadata.json.

  Raises:
    FileNotFoundError: not a complete prepared dataset.
    ValueError: a NoteSequence dataset, or bad metadata.
  """
  metadata = shards.read_metadata(audio_dir)
  if dataset_kind(metadata) != AUDIO_KIND:
    raise ValueError(
        f"{audio_dir} holds {dataset_kind(metadata)!r} records, not audio: render it "
        "first with musegen_jax.data.audio.ensure_audio_dir(data_dir, representation)")
  if not isinstance(metadata.get("sample_rate"), int) or metadata["sample_rate"] <= 0:
    raise ValueError(f"{audio_dir}: metadata.json has no valid sample_rate "
                     f"({metadata.get('sample_rate')!r})")
  return metadata


def _bad_record(error: Exception, where: str, on_bad_record: str) -> None:
  """Raises BadRecordError (on_bad_record="error") or logs a warning ("skip")."""
  if on_bad_record == "error":
    raise pipeline.BadRecordError(
        f"{where}: {type(error).__name__}: {error} (set "
        "--config.data.bad_records=skip to skip such records)") from None
  logging.warning("Skipping bad record %s: %s: %s", where, type(error).__name__, error)


def _check_bad_record_mode(on_bad_record: str) -> None:
  if on_bad_record not in pipeline.BAD_RECORD_MODES:
    raise ValueError(f"on_bad_record={on_bad_record!r}; allowed: {pipeline.BAD_RECORD_MODES}")


# Rendering NoteSequence datasets.


@dataclasses.dataclass(frozen=True)
class _RenderRecord:
  """(index, serialized NoteSequence) -> (PCM16 record or None, seconds)."""
  representation: Any
  shard_paths: tuple[str, ...]
  shard_starts: tuple[int, ...]
  on_bad_record: str

  def __call__(self, item: tuple[int, bytes]) -> tuple[bytes | None, float]:
    index, record = item
    try:
      ns = pipeline.parse_note_sequence(record)
      samples = self.representation.encode(ns)
    except (DecodeError, ValueError) as e:
      _bad_record(e, pipeline.locate_record(index, self.shard_paths, self.shard_starts), self.on_bad_record)
      return None, 0.0
    return (encode_audio_record(samples, labels.get_label(ns)),
            len(samples) / self.representation.sample_rate)


def _fingerprint(data_dir: str) -> str:
  with open(os.path.join(data_dir, shards.METADATA_FILE), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _is_current(audio_dir: str, fingerprint: str) -> bool:
  try:
    metadata = shards.read_metadata(audio_dir)
    return metadata.get("source_fingerprint") == fingerprint and _RECORD_LABELS in metadata
  except (FileNotFoundError, ValueError):
    return False


def _render_dataset(data_dir: str, output_dir: str, representation, num_workers: int,
                    progress: bool, on_bad_record: str) -> dict[str, dict[str, Any]]:
  """Renders every split of a NoteSequence dataset into output_dir; returns split stats."""
  split_paths = {}
  for split in shards.SPLITS:
    try:
      split_paths[split] = shards.split_paths(data_dir, split)
    except FileNotFoundError:
      split_paths[split] = []
  sizes = {split: [len(grain.sources.ArrayRecordDataSource([p])) for p in paths]
           for split, paths in split_paths.items()}
  stats = {}
  with tqdm(total=sum(map(sum, sizes.values())), desc=f"render audio {representation.cache_key}",
            unit="seq", file=sys.stderr, disable=not progress) as bar:
    for split, paths in split_paths.items():
      starts = tuple(int(x) for x in np.cumsum([0] + sizes[split][:-1])) if paths else ()
      render_fn = _RenderRecord(representation, tuple(paths), starts, on_bad_record)
      items = list(enumerate(shards.read_records(paths)))
      num_clips, seconds, skipped = 0, 0.0, 0
      with shards.SplitWriter(output_dir, split, max(1, len(paths))) as writer:
        for record, duration in workers.map_in_workers(render_fn, items, num_workers):
          bar.update()
          if record is None:
            skipped += 1
            continue
          writer.write(record)
          num_clips += 1
          seconds += duration
        written = writer.close()
      stats[split] = {"num_clips": num_clips, "total_seconds": round(seconds, 3),
                      "shards": [os.path.basename(p) for p in written],
                      "skipped_records": skipped}
  return stats


def ensure_audio_dir(data_dir: str, representation, *, num_workers: int | None = None,
                     progress: bool = True, on_bad_record: str = "error") -> str:
  """The audio dataset for `data_dir`, rendering it once if needed.

  An audio dataset is returned as it is, once its sample rate is checked. A
  NoteSequence dataset is rendered with the representation's synthesizer into
  `data_dir/cache/audio-{representation.cache_key}/`, with the same splits and
  shard counts; later calls reuse it. The cache records a hash of the
  source's metadata.json and is rendered again if the source changed. Safe
  when several processes call it at once: each renders into its own
  temporary folder and renames it into place; the first rename wins.

  Args:
    data_dir: a prepared dataset (NoteSequence or audio).
    representation: an `AudioRepresentation`.
    num_workers: render processes; None for the default: in this process for
      the additive synthesizer (it renders about 10,000x real time, faster
      than processes start), min(cpus, 8) for FluidSynth.
    progress: show a tqdm bar on stderr.
    on_bad_record: a NoteSequence record that does not parse or render:
      "error" raises `pipeline.BadRecordError` naming shard and record,
      "skip" leaves it out (counted in the cache's metadata).

  Returns:
    The audio dataset directory.

  Raises:
    ValueError: an audio dataset at another sample rate, or an unknown kind.
  """
  _check_bad_record_mode(on_bad_record)
  if not isinstance(representation, representations.AudioRepresentation):
    raise ValueError(
        f"ensure_audio_dir needs the audio representation, got {representation!r}")
  metadata = shards.read_metadata(data_dir)
  kind = dataset_kind(metadata)
  if kind == AUDIO_KIND:
    rate = read_audio_metadata(data_dir)["sample_rate"]
    if rate != representation.sample_rate:
      raise ValueError(
          f"{data_dir} holds audio at sample_rate={rate}, but the representation "
          f"wants sample_rate={representation.sample_rate}: prepare the audio again "
          f"with --sample_rate={representation.sample_rate}, or train at {rate}")
    return data_dir
  if kind != NOTE_SEQUENCE_KIND:
    raise ValueError(f"{data_dir}: unknown dataset kind {kind!r} in metadata.json")

  key = representation.cache_key
  cache_root = os.path.join(data_dir, CACHE_DIR)
  target = os.path.join(cache_root, CACHE_PREFIX + key)
  fingerprint = _fingerprint(data_dir)
  if _is_current(target, fingerprint):
    return target
  if num_workers is None:
    num_workers = min(os.cpu_count() or 1, 8) if representation.synth_settings.soundfont else 0
  os.makedirs(cache_root, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{CACHE_PREFIX}{key}.tmp-", dir=cache_root)
  try:
    stats = _render_dataset(data_dir, tmp, representation, num_workers, progress,
                            on_bad_record)
    shards.write_metadata(tmp, {
        "format_version": shards.FORMAT_VERSION,
        "kind": AUDIO_KIND,
        "sample_rate": representation.sample_rate,
        "synth": representation.synth_settings.to_dict(),
        "synth_key": key,
        "representation": pipeline.representation_spec(representation),
        "source": os.path.abspath(data_dir),
        "source_fingerprint": fingerprint,
        _RECORD_LABELS: True,
        "splits": stats,
        "created_by": "musegen_jax.data.audio.ensure_audio_dir",
    })
    _install(tmp, target, fingerprint)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def _install(tmp: str, target: str, fingerprint: str) -> None:
  """Renames a rendered tmp folder to target, replacing a stale one there."""
  try:
    os.rename(tmp, target)  # Atomic; fails if target exists and is not empty.
    return
  except OSError:
    if _is_current(target, fingerprint):
      return  # Another process got there first.
  stale = f"{target}.stale-{uuid.uuid4().hex[:8]}"
  try:
    os.rename(target, stale)
  except OSError:
    pass  # Another process moved it.
  try:
    os.rename(tmp, target)
  except OSError:
    if not _is_current(target, fingerprint):
      raise FileExistsError(f"{target} exists but is not a rendered audio dataset; remove it")
  finally:
    shutil.rmtree(stale, ignore_errors=True)


# Training and evaluation.


def is_silent(x: np.ndarray, threshold: float) -> bool:
  """Whether the RMS of float audio `x` is below `threshold`."""
  return not x.size or float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) < threshold


def finish_clip(x: np.ndarray, normalize: bool) -> np.ndarray:
  """[slice_len] float audio -> [slice_len, 1] float32 in [-1, 1]."""
  if normalize:
    peak = float(np.max(np.abs(x)))
    if peak > 0:
      x = x / peak
  return np.clip(x, -1.0, 1.0).astype(np.float32)[:, None]


@dataclasses.dataclass(frozen=True)
class RandomAudioSlice(grain.transforms.RandomMap):
  """`pipeline.DecodeRecord`'s {"value": [num_samples] int16, "bad_records"}
  -> {"audio": [slice_len, 1] float32, "bad_records"}, or None if silent.

  Tries up to `tries` random offsets for a window whose RMS reaches
  `silence_threshold`; clips shorter than `slice_len` are zero-padded at the
  end and get one try.
  """
  slice_len: int
  silence_threshold: float = DEFAULT_SILENCE_THRESHOLD
  normalize: bool = True
  tries: int = SLICE_TRIES

  def random_map(self, item: dict[str, Any], rng: np.random.Generator
                 ) -> dict | None:
    pcm, style = item["value"] if isinstance(item["value"], tuple) else (item["value"], None)
    extra = {} if style is None else {"style": np.int32(style)}
    max_start = max(0, len(pcm) - self.slice_len)
    for _ in range(self.tries if max_start else 1):
      start = int(rng.integers(0, max_start + 1))
      x = pipeline.pad_to(pcm_to_float(pcm[start:start + self.slice_len]), self.slice_len, 0)
      if not is_silent(x, self.silence_threshold):
        return {"audio": finish_clip(x, self.normalize),
                "bad_records": item["bad_records"], **extra}
    return None


def create_train_dataset(audio_dir: str, *, slice_len: int, global_batch_size: int, seed: int,
                         num_workers: int, prefetch_buffer_size: int = 32,
                         silence_threshold: float = DEFAULT_SILENCE_THRESHOLD,
                         normalize: bool = True,
                         on_bad_record: str = "error",
                         styles: tuple[str, ...] = ()) -> grain.IterDataset:
  """The training dataset of this process: {"audio": [batch, slice_len, 1] float32}
  (and with `styles`, "style": [batch] int32, each clip's label among them).

  Args:
    audio_dir: an audio dataset (`ensure_audio_dir`, or `prepare` on audio).
    slice_len: samples per training clip.
    global_batch_size: batch over all processes; each process yields its share.
    seed: shuffle and slice seed.
    num_workers: grain worker processes (0 runs in this process).
    prefetch_buffer_size: elements read ahead by grain's threads.
    silence_threshold: RMS below which a window is silent and another offset
      is tried; a clip that stays silent is dropped. 0 keeps everything.
    normalize: scale each clip to a peak of 1 (else only clip to [-1, 1]).
    on_bad_record: "error" (raise `BadRecordError` naming the shard and
      record) or "skip" (warn with the same, and go on).
  """
  _check_bad_record_mode(on_bad_record)
  if slice_len < 1:
    raise ValueError(f"slice_len must be >= 1, got {slice_len}")
  read_audio_metadata(audio_dir)
  paths = shards.split_paths(audio_dir, "train")
  source = grain.sources.ArrayRecordDataSource(paths)
  ds = (grain.MapDataset.range(len(source))
        .seed(seed)
        .shuffle()
        .repeat()
        .map(pipeline.DecodeRecord(source, StyledPCM(tuple(styles)) if styles
                                   else audio_record_pcm, tuple(paths),
                                   pipeline.shard_starts(paths), on_bad_record))
        .random_map(RandomAudioSlice(slice_len, silence_threshold, normalize))
        # Sliced after the crop, so that an element's random crop depends on
        # its global index only: every process count sees the same global
        # batches. The dataset is lazy: a process reads only its own records.
        [jax.process_index()::jax.process_count()])
  return pipeline.batch_and_prefetch(ds, global_batch_size=global_batch_size,
                                     num_workers=num_workers,
                                     prefetch_buffer_size=prefetch_buffer_size)


def _record_windows(pcm: np.ndarray, slice_len: int, silence_threshold: float,
                    normalize: bool, limit: int | None = None):
  """A record's consecutive windows that are not silent (one zero-padded
  window if it is shorter than `slice_len`); with `limit`, at most that many,
  from starts spread evenly over the record."""
  starts = range(0, len(pcm) - slice_len + 1, slice_len) if len(pcm) >= slice_len else [0]
  if limit is not None and len(starts) > limit:
    starts = starts[::len(starts) // limit]
  taken = 0
  for start in starts:
    x = pipeline.pad_to(pcm_to_float(pcm[start:start + slice_len]), slice_len, 0)
    if not is_silent(x, silence_threshold):
      yield finish_clip(x, normalize)
      taken += 1
      if limit is not None and taken >= limit:
        return


def _split_records(audio_dir: str, split: str):
  """(path, index, record, its int16 samples) of a split, in shard order."""
  read_audio_metadata(audio_dir)
  for path in shards.split_paths(audio_dir, split):
    for index, record in enumerate(shards.read_records([path])):
      try:
        pcm = audio_record_pcm(record)
      except ValueError as e:
        _bad_record(e, f"{path} record {index}", "error")
      yield path, index, record, pcm


def eval_clips(audio_dir: str, *, slice_len: int, split: str = "valid",
               max_clips: int | None = None,
               silence_threshold: float = DEFAULT_SILENCE_THRESHOLD,
               normalize: bool = True) -> np.ndarray:
  """Consecutive, non-overlapping windows of a split's clips, silent ones left out.

  A clip gives its full windows; one shorter than `slice_len` gives one
  zero-padded window. Deterministic: records and windows in shard order.

  Returns:
    [num_clips, slice_len, 1] float32 in [-1, 1].

  Raises:
    pipeline.BadRecordError: a record that does not decode.
    ValueError: no window that is not silent.
  """
  clips = []
  for _, _, _, pcm in _split_records(audio_dir, split):
    for clip in _record_windows(pcm, slice_len, silence_threshold, normalize):
      clips.append(clip)
      if max_clips is not None and len(clips) >= max_clips:
        return np.stack(clips)
  if not clips:
    raise ValueError(f"{audio_dir}: split {split!r} has no clips of {slice_len} samples "
                     "that are not silent")
  return np.stack(clips)


def eval_clips_by_style(audio_dir: str, styles: tuple[str, ...], *, slice_len: int,
                        split: str = "valid", max_clips: int,
                        silence_threshold: float = DEFAULT_SILENCE_THRESHOLD,
                        normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """`eval_clips` of a labelled dataset, balanced over the styles and spread
  over the pieces: up to max_clips / len(styles) (rounded up) windows of
  each style, each piece giving an equal share of its style's (rounded up),
  from starts spread evenly over it. Deterministic: records in shard order.

  Returns:
    ([num_clips, slice_len, 1] float32, [num_clips] int32 style ids), the
    clips grouped by style in the order of `styles`.

  Raises:
    ValueError: a style with no window that is not silent in the split, or a
      clip whose label is not one of `styles`.
  """
  decode = StyledPCM(tuple(styles))
  pieces = np.zeros((len(styles),), np.int64)
  for _, _, record, _ in _split_records(audio_dir, split):
    pieces[decode(record)[1]] += 1
  per_style = -(-max_clips // len(styles))
  per_piece = [-(-per_style // max(int(n), 1)) for n in pieces]
  by_style = [[] for _ in styles]
  for _, _, record, pcm in _split_records(audio_dir, split):
    style = decode(record)[1]
    room = per_style - len(by_style[style])
    if room > 0:
      by_style[style].extend(_record_windows(pcm, slice_len, silence_threshold,
                                             normalize, min(room, per_piece[style])))
  empty = [name for name, clips in zip(styles, by_style) if not clips]
  if empty:
    raise ValueError(f"{audio_dir}: split {split!r} has no clips of {slice_len} samples "
                     f"that are not silent for style(s) {', '.join(empty)}")
  ids = np.concatenate([np.full((len(c),), i, np.int32) for i, c in enumerate(by_style)])
  return np.stack([clip for clips in by_style for clip in clips]), ids
