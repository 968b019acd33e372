"""ArrayRecord shards of serialized NoteSequence protos, plus metadata.json.

A prepared dataset directory holds `{split}-{i:05d}-of-{n:05d}.array_record`
shards and a `metadata.json`. Each shard is written under a hidden temporary name
and renamed into place when complete; metadata.json is written last, so its
presence marks a complete directory and an interrupted run is never mistaken for
one.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from array_record.python import array_record_module
from note_seq.protobuf import music_pb2

NoteSequence = music_pb2.NoteSequence

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
SPLITS = ("train", "valid", "test")
# One record per chunk keeps random access (grain's ArrayRecordDataSource) cheap.
WRITER_OPTIONS = "group_size:1"
_SPLIT_DIRS = {"train": "train", "valid": "valid", "validation": "valid",
               "val": "valid", "test": "test"}
# Folder names (lower case) that put the files below them into a split.
SPLIT_FOLDER_NAMES = frozenset(_SPLIT_DIRS)
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.array_record$")


def shard_name(split: str, index: int, num_shards: int) -> str:
  """The basename of shard `index` of `num_shards` for a split."""
  return f"{split}-{index:05d}-of-{num_shards:05d}.array_record"


class SplitWriter:
  """Streams one split's records into at most `num_shards` shards, in order.

  Records go to one hidden temporary file first; `close` cuts it into contiguous
  shards (the count is known only then) and renames each into place, so memory
  stays flat for any corpus size. Use as a context manager: on an exception the
  temporary files are removed.
  """

  def __init__(self, output_dir: str, split: str, num_shards: int):
    if num_shards < 1:
      raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    self.output_dir = output_dir
    self.split = split
    self.num_shards = num_shards
    self.num_records = 0
    self._writer = None
    self._tmp_paths: list[str] = []

  def _tmp_path(self) -> str:
    fd, path = tempfile.mkstemp(prefix=f".tmp-{self.split}-", dir=self.output_dir)
    os.close(fd)
    self._tmp_paths.append(path)
    return path

  def write(self, record: bytes) -> None:
    """Appends one serialized record."""
    if self._writer is None:
      self._writer = array_record_module.ArrayRecordWriter(self._tmp_path(), WRITER_OPTIONS)
    self._writer.write(record)
    self.num_records += 1

  def close(self) -> list[str]:
    """Finishes the shards and moves them into place; returns their paths."""
    if self._writer is None:
      return []
    self._writer.close()
    self._writer = None
    spill = self._tmp_paths[0]
    count = min(self.num_shards, self.num_records)
    paths = [os.path.join(self.output_dir, shard_name(self.split, i, count))
             for i in range(count)]
    if count == 1:
      os.replace(spill, paths[0])
    else:
      reader = array_record_module.ArrayRecordReader(spill)
      for i, path in enumerate(paths):
        tmp = self._tmp_path()
        writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
        size = (i + 1) * self.num_records // count - i * self.num_records // count
        for _ in range(size):
          writer.write(reader.read())
        writer.close()
        os.replace(tmp, path)
      reader.close()
      os.remove(spill)
    self._tmp_paths = []
    return paths

  def abort(self) -> None:
    """Drops everything written so far."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    for tmp in self._tmp_paths:
      if os.path.exists(tmp):
        os.remove(tmp)
    self._tmp_paths = []

  def __enter__(self) -> SplitWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None:
      self.abort()


def write_split(records: Iterable[bytes], output_dir: str, split: str,
                num_shards: int) -> list[str]:
  """Writes one split's records into contiguous shards.

  Args:
    records: serialized protos, in order.
    output_dir: an existing directory.
    split: the shard name prefix, e.g. "train".
    num_shards: the most shards to write; fewer when there are fewer records,
      and none for no records.

  Returns:
    The shard paths, in order.
  """
  with SplitWriter(output_dir, split, num_shards) as writer:
    for record in records:
      writer.write(record)
    return writer.close()


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to a temporary file beside `path`, then renames it into place."""
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(path) or ".")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    os.remove(tmp)
    raise


def write_metadata(output_dir: str, metadata: dict[str, Any]) -> None:
  """Writes metadata.json atomically; call it last, it marks the directory complete."""
  write_json_atomic(os.path.join(output_dir, METADATA_FILE), metadata)


def read_metadata(data_dir: str) -> dict[str, Any]:
  """Reads a prepared dataset's metadata.json.

  Raises:
    FileNotFoundError: no metadata.json, so the directory is not a complete
      prepared dataset.
    ValueError: unreadable metadata or an unknown format version.
  """
  path = os.path.join(data_dir, METADATA_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{data_dir} is not a prepared dataset (no {METADATA_FILE}; an interrupted run "
        f"leaves none): run python -m musegen_jax.prepare --input=... --output={data_dir}")
  try:
    with open(path, encoding="utf-8") as f:
      metadata = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: unreadable metadata: {e}") from e
  version = metadata.get("format_version") if isinstance(metadata, dict) else None
  if version != FORMAT_VERSION:
    raise ValueError(f"{path}: format_version={version!r}, this code reads {FORMAT_VERSION}; "
                     "prepare the dataset again")
  return metadata


def split_paths(data_dir: str, split: str) -> list[str]:
  """The complete, sorted shard paths of one split.

  Raises:
    FileNotFoundError: the split has no shards in `data_dir`.
    ValueError: the shards on disk are not one complete set.
  """
  paths = sorted(glob.glob(os.path.join(glob.escape(data_dir), f"{split}-*-of-*.array_record")))
  matches = [_SHARD_RE.match(os.path.basename(p)) for p in paths]
  paths = [p for p, m in zip(paths, matches) if m and m["split"] == split]
  if not paths:
    raise FileNotFoundError(f"No shards for split {split!r} in {data_dir}")
  expected = [shard_name(split, i, len(paths)) for i in range(len(paths))]
  if [os.path.basename(p) for p in paths] != expected:
    raise ValueError(f"Incomplete or mixed shards for split {split!r} in {data_dir}: "
                     f"{[os.path.basename(p) for p in paths]}")
  return paths


def remove_shards(data_dir: str) -> None:
  """Removes metadata.json, all shards and temporary files left in `data_dir`."""
  for name in os.listdir(data_dir):
    if name == METADATA_FILE or name.startswith(".tmp-") or _SHARD_RE.match(name):
      os.remove(os.path.join(data_dir, name))


def check_fractions(valid_fraction: float, test_fraction: float) -> None:
  """Raises ValueError unless both are >= 0 and they leave some files for train."""
  if not (0 <= valid_fraction and 0 <= test_fraction and valid_fraction + test_fraction < 1):
    raise ValueError(f"Need 0 <= fractions and valid + test < 1, got "
                     f"valid_fraction={valid_fraction}, test_fraction={test_fraction}")


def split_for_path(relpath: str, valid_fraction: float = 0.1,
                   test_fraction: float = 0.1) -> str:
  """Assigns a file to "train", "valid" or "test".

  A folder named train, valid/validation/val or test in the relative path decides
  (the outermost one). Otherwise a SHA-256 of the path (with "/" separators)
  decides, so a file keeps its split across runs and machines.

  Args:
    relpath: the file's path relative to the corpus root.
    valid_fraction: the expected share of hash-assigned files in valid.
    test_fraction: the expected share of hash-assigned files in test.

  Returns:
    The split name.
  """
  check_fractions(valid_fraction, test_fraction)
  parts = relpath.replace(os.sep, "/").split("/")
  for part in parts[:-1]:
    if part.lower() in _SPLIT_DIRS:
      return _SPLIT_DIRS[part.lower()]
  digest = hashlib.sha256("/".join(parts).encode("utf-8")).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  if u < test_fraction:
    return "test"
  if u < test_fraction + valid_fraction:
    return "valid"
  return "train"


def read_records(paths: Sequence[str]) -> Iterator[bytes]:
  """Yields every record of the shards, shard by shard."""
  for path in paths:
    reader = array_record_module.ArrayRecordReader(path)
    try:
      yield from reader.read_all()
    finally:
      reader.close()


def read_note_sequences(paths: Sequence[str]) -> Iterator[NoteSequence]:
  """Yields the NoteSequences stored in the shards, shard by shard."""
  for record in read_records(paths):
    yield NoteSequence.FromString(record)
