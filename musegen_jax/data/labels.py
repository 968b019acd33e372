"""Style labels of pieces: where `prepare` finds them and where shards keep them.

A label is a style name (a composer, a collection, a genre) per piece. The
shards keep it inside the NoteSequence record, as the single entry of
`sequence_metadata.genre`, so one prepared corpus still serves every
representation and task; `metadata.json` lists the label names and their
counts per split.

`prepare --labels=...` finds them:

- `folder`: the first folder of the file's path below the input that is not
  a split folder: `input/<style>/...`, `input/<style>/train/...` and
  `input/train/<style>/...` all give `<style>`.
- `composer`: the NoteSequence's composer metadata (MusicXML and some MIDI
  files carry it).
- `FILE.csv`: a manifest of `path,label` rows (paths relative to the input
  folder; a header row `path,label` is allowed).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping

from musegen_jax import errors
from musegen_jax.data import shards

FOLDER = "folder"
COMPOSER = "composer"
SOURCES = (FOLDER, COMPOSER, "FILE.csv")


def set_label(ns, label: str) -> None:
  """Stores `label` as the piece's style (replacing any genre it had)."""
  del ns.sequence_metadata.genre[:]
  ns.sequence_metadata.genre.append(label)


def get_label(ns) -> str | None:
  """The piece's style label, or None for an unlabelled piece."""
  genres = ns.sequence_metadata.genre
  return genres[0] if genres else None


def _normalise(relpath: str) -> str:
  return os.path.normpath(relpath).replace(os.sep, "/")


def folder_label(relpath: str) -> str | None:
  """The first folder of `relpath` that is not a split folder (None: the
  file lies directly in the input, or only in split folders)."""
  for part in _normalise(relpath).split("/")[:-1]:
    if part.lower() not in shards.SPLIT_FOLDER_NAMES:
      return part
  return None


def read_manifest(path: str) -> dict[str, str]:
  """{relative path: label} of a `path,label` CSV manifest.

  Raises:
    errors.UserError: the file is missing, a row has not two fields, a label
      is empty, or a path is listed twice with different labels.
  """
  if not os.path.isfile(path):
    raise errors.MissingInputError(f"--labels={path}: no such manifest file "
                                   "(a CSV of path,label rows).")
  manifest: dict[str, str] = {}
  with open(path, encoding="utf-8", newline="") as f:
    for line, row in enumerate(csv.reader(f), start=1):
      if not row or all(not cell.strip() for cell in row):
        continue
      if line == 1 and [c.strip().lower() for c in row] == ["path", "label"]:
        continue  # A header.
      if len(row) != 2 or not row[1].strip() or not row[0].strip():
        raise errors.UserError(f"--labels={path}: line {line} is {row!r}; each "
                               "row must be path,label with both non-empty.")
      key, label = _normalise(row[0].strip()), row[1].strip()
      if manifest.get(key, label) != label:
        raise errors.UserError(f"--labels={path}: line {line} gives {key} the "
                               f"label {label!r}, an earlier line "
                               f"{manifest[key]!r}.")
      manifest[key] = label
  if not manifest:
    raise errors.UserError(f"--labels={path}: the manifest lists no file.")
  return manifest


class Labeler:
  """Finds each file's label the way `--labels` says.

  Args:
    source: "folder", "composer", or the path of a CSV manifest.
  """

  def __init__(self, source: str):
    if source.lower().endswith(".csv"):
      self.manifest = read_manifest(source)
    elif source in (FOLDER, COMPOSER):
      self.manifest = None
    else:
      raise errors.UserError(f"--labels={source!r}: use one of "
                             f"{', '.join(SOURCES)} (or leave it empty: no labels).")
    self.source = source

  def check_files(self, relpaths: list[str], input_dir: str) -> None:
    """Fails, before anything is written, naming a file the source gives no
    label (folder, manifest), or a manifest row naming no file."""
    if self.source == FOLDER:
      for relpath in relpaths:
        if folder_label(relpath) is None:
          raise errors.UserError(
              f"--labels=folder: {os.path.join(input_dir, relpath)} is in no "
              "style folder; put files under INPUT/<style>/ (split folders "
              "may sit above or below it).")
    elif self.manifest is not None:
      listed = set(self.manifest)
      for relpath in relpaths:
        if _normalise(relpath) not in listed:
          raise errors.UserError(
              f"--labels={self.source}: no label for "
              f"{os.path.join(input_dir, relpath)} (add the row "
              f"{_normalise(relpath)},LABEL).")

  def label(self, relpath: str, ns) -> str | None:
    """The label of a piece of file `relpath` (None: composer metadata
    missing; such pieces are skipped and reported)."""
    if self.source == FOLDER:
      return folder_label(relpath)
    if self.manifest is not None:
      return self.manifest.get(_normalise(relpath))
    composers = [c.strip() for c in ns.sequence_metadata.composers if c.strip()]
    return composers[0] if composers else None


def check_counts(counts: Mapping[str, Mapping[str, int]], source: str) -> None:
  """Fails naming a style with no piece in some split.

  Args:
    counts: {split: {label: pieces}}.
    source: the --labels or --input value, for the message.
  """
  names = sorted({label for per_split in counts.values() for label in per_split})
  for split in shards.SPLITS:
    missing = [n for n in names if not counts.get(split, {}).get(n)]
    if missing:
      raise errors.UserError(
          f"--labels={source}: style(s) {', '.join(map(repr, missing))} have no "
          f"piece in the {split} split; add pieces there (a {split}/ folder) "
          "or drop the style.")


def metadata_entry(counts: Mapping[str, Mapping[str, int]], source: str
                   ) -> dict[str, object]:
  """metadata.json's "labels": the names (sorted: a label's index is its
  class id) and the counts per split."""
  names = sorted({label for per_split in counts.values() for label in per_split})
  return {"source": source, "names": names,
          "counts": {split: {n: int(counts.get(split, {}).get(n, 0)) for n in names}
                     for split in shards.SPLITS}}


def dataset_styles(data_dir: str) -> list[str]:
  """The style names of a prepared dataset (metadata.json), sorted.

  Raises:
    errors.UserError: the dataset has no labels.
  """
  entry = shards.read_metadata(data_dir).get("labels")
  if not entry or not entry.get("names"):
    raise errors.UserError(
        f"config.data.dir={data_dir}: the dataset has no style labels; prepare it "
        "with --labels=folder|composer|FILE.csv or --input=music21:NAMES.")
  return list(entry["names"])


def fill_styles(config, data_dir: str, required: bool = True) -> None:
  """Sets `config.styles` (the class names, in id order) to the dataset's.

  With `required=False` a dataset without labels leaves them empty.

  Raises:
    errors.UserError: the dataset has no labels (when `required`), or
      `config.styles` was given (or comes from an earlier run) and differs
      from them.
  """
  if not required and not shards.read_metadata(data_dir).get("labels"):
    return
  names = dataset_styles(data_dir)
  if list(config.styles) and list(config.styles) != names:
    raise errors.UserError(
        f"config.styles={list(config.styles)} but config.data.dir={data_dir} "
        f"has the styles {names}; leave config.styles empty to take the data's.")
  config.styles = tuple(names)
