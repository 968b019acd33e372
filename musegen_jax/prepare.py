"""Prepares a corpus: music files, audio files, or the bundled JSB Chorales, to shards.

  python -m musegen_jax.prepare --input=jsb --output=/tmp/jsb
  python -m musegen_jax.prepare --input=~/midi --output=/tmp/midi_ds --num_workers=8
  python -m musegen_jax.prepare --input=~/wavs --output=/tmp/wav_ds --sample_rate=16000
  python -m musegen_jax.prepare --input=Nottingham.pickle --output=/tmp/nott

A folder is walked for music files (.mid/.midi/.xml/.mxl/.musicxml/.abc), which
become NoteSequence shards, or audio files (.wav/.flac/.ogg/.opus/.mp3/.aiff/
.aif and others libsndfile reads), which become audio shards: one record per
file, mono (channels averaged), resampled to --sample_rate (see data/audio.py).
--kind=auto (the default) picks music when the folder holds any music file,
else audio; in a folder with both (MAESTRO has .midi beside .wav) the other
kind's files are skipped and reported, and --kind=audio or
--kind=note_sequence chooses. Files are converted in parallel. Files that fail
(corrupt, empty, no notes, not audio, unsupported extension) are reported on
stderr as `skipped FILE: REASON` and listed in `OUTPUT/prepare_report.json`; the
run goes on. A folder named train, valid (validation, val) or test assigns the
files below it to that split; other files are split by a hash of their path.
`--input=FILE` prepares one music or audio file: the piece (or clip) goes
into all three splits, so that a run on it can evaluate (its valid loss is
then not a held-out figure). `--input=jsb` keeps the chorales' own split and also writes them as MIDI to
`OUTPUT/midi/`; training on audio renders them with the synthesizer and caches
the result beside the shards (`OUTPUT/cache/`, removed when OUTPUT is prepared
again).

`--labels=folder|composer|FILE.csv` records a style label per piece (see
data/labels.py: `input/<style>/...` with split folders above or below, the
composer metadata, or a path,label manifest); `--input=music21:bach,palestrina,
monteverdi,ryansMammoth,trecento` reads music21's bundled corpus (`pip install
-e ".[corpora]"`), labelled by collection (`--max_per_label=N` keeps N pieces
of each, chosen by a hash of their path). Labels go into the records and
`metadata.json` ("labels": names and counts per split); a style with no piece
in some split stops the run before metadata.json is written.

`--input=FILE.pickle` (or `.pkl`, `.mat`) converts a polyphonic benchmark
file (JSB Chorales, Nottingham, MuseData, Piano-midi.de as distributed:
`data/poly_corpus.py`) into NoteSequences, keeping its train/valid/test
split: frame t of a piece lasts from step t to t + 1 at
`--steps_per_quarter` steps per quarter note (100 quarter notes per minute),
a pitch on in consecutive frames is one held note. The piano-roll task reads
them back as the same frames with `config.data.steps_per_quarter` equal to
it. A file not in the layout (a pitch outside the 88 keys, an empty piece,
a frame that is not 0/1, a missing split, anything but lists of ints) stops
with an error naming the file, split, piece and frame, before OUTPUT is
touched.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from musegen_jax import runtime
# Before note_seq is imported: see runtime.setup_if_run_as_command.
runtime.setup_if_run_as_command(__name__)

# pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order
import note_seq
from absl import flags
from tqdm import tqdm

from musegen_jax import cli
from musegen_jax import errors
from musegen_jax.data import cache
from musegen_jax.data import convert
from musegen_jax.data import corpora
from musegen_jax.data import jsb
from musegen_jax.data import labels as labels_lib
from musegen_jax.data import poly_corpus
from musegen_jax.data import shards
from musegen_jax.data import workers

JSB_INPUT = "jsb"
DEFAULT_DATASET_NAME = "jsb_chorales_v1"
REPORT_FILE = "prepare_report.json"
# Dataset kinds, as metadata.json names them (data/audio.py reads them). Audio
# support is imported only where needed: it pulls in grain and scipy, which
# the processes converting music files do not need.
NOTE_SEQUENCE_KIND = "note_sequence"
AUDIO_KIND = "audio"
KINDS = ("auto", NOTE_SEQUENCE_KIND, AUDIO_KIND)


class _Record(NamedTuple):
  data: bytes  # A serialized NoteSequence, or an audio record.
  total_time: float
  num_notes: int = 0
  min_pitch: int = 128
  max_pitch: int = -1
  label: str | None = None  # The piece's style (labels.get_label).


class _FileResult(NamedTuple):
  relpath: str
  split: str
  records: list[_Record]
  problems: list[str]  # Reasons for skipping the file, or parts of it.


def _to_record(ns: convert.NoteSequence) -> _Record:
  pitches = [n.pitch for n in ns.notes]
  return _Record(ns.SerializeToString(), ns.total_time, len(ns.notes), min(pitches),
                 max(pitches), labels_lib.get_label(ns))


def _midi_path(midi_dir: str, split: str, sequence_id: str) -> str:
  base, _, ref = sequence_id.partition("#")
  stem = os.path.splitext(base)[0] + (f"_{ref}" if ref else "")
  return os.path.join(midi_dir, split, *f"{stem}.mid".split("/"))


def _convert_file(relpath: str, root: str, collection: str, valid_fraction: float,
                  test_fraction: float, midi_dir: str | None,
                  labeler: labels_lib.Labeler | None = None) -> _FileResult:
  """Converts one file (runs in a worker process)."""
  split = shards.split_for_path(relpath, valid_fraction, test_fraction)
  problems: list[str] = []
  try:
    sequences = convert.file_to_note_sequences(os.path.join(root, relpath), root, problems)
  except convert.ConversionError as e:
    return _FileResult(relpath, split, [], problems + [e.reason])
  if labeler is not None:
    sequences = _labelled(sequences, lambda ns: labeler.label(relpath, ns), problems,
                          f"--labels={labeler.source}")
  return _finish_sequences(relpath, split, sequences, problems, collection, midi_dir)


def _labelled(sequences: list[convert.NoteSequence], label_fn, problems: list[str],
              source: str) -> list[convert.NoteSequence]:
  """The sequences that get a label (stored in them); the others reported."""
  kept = []
  for ns in sequences:
    label = label_fn(ns)
    if label is None:
      problems.append(f"{ns.id}: no label ({source} gives none: no composer metadata)")
    else:
      labels_lib.set_label(ns, label)
      kept.append(ns)
  return kept


def _convert_music21_piece(item: tuple[str, str], valid_fraction: float,
                           test_fraction: float, midi_dir: str | None) -> _FileResult:
  """Converts one file of music21's corpus, labelled by its collection (runs in
  a worker process)."""
  name, path = item
  relpath = corpora.relpath(name, path)
  split = shards.split_for_path(relpath, valid_fraction, test_fraction)
  try:
    sequences = corpora.note_sequences(name, path)
  except Exception as e:  # pylint: disable=broad-except
    return _FileResult(relpath, split, [], [f"music21 could not read it: "
                                            f"{type(e).__name__}: {e}"])
  if not sequences:
    return _FileResult(relpath, split, [], ["no notes"])
  for ns in sequences:
    labels_lib.set_label(ns, name)
  return _finish_sequences(relpath, split, sequences, [], name, midi_dir)


def _finish_sequences(relpath: str, split: str, sequences: list[convert.NoteSequence],
                      problems: list[str], collection: str,
                      midi_dir: str | None) -> _FileResult:
  """Sets the collection, writes the MIDI copies, makes the records."""
  for ns in sequences:
    ns.collection_name = collection
    if midi_dir:
      path = _midi_path(midi_dir, split, ns.id)
      try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        note_seq.sequence_proto_to_midi_file(ns, path)
      except Exception as e:  # pylint: disable=broad-except
        problems.append(f"MIDI copy not written: {type(e).__name__}: {e}")
  return _FileResult(relpath, split, [_to_record(ns) for ns in sequences], problems)


def _convert_audio_file(relpath: str, root: str, sample_rate: int, valid_fraction: float,
                        test_fraction: float) -> _FileResult:
  """Reads one audio file as a mono record at sample_rate (runs in a worker process)."""
  from musegen_jax.data import audio  # pylint: disable=import-outside-toplevel
  split = shards.split_for_path(relpath, valid_fraction, test_fraction)
  try:
    samples = audio.read_audio_file(os.path.join(root, relpath), sample_rate)
  except audio.AudioReadError as e:
    return _FileResult(relpath, split, [], [e.reason])
  record = _Record(audio.encode_audio_record(samples), len(samples) / sample_rate)
  return _FileResult(relpath, split, [record], [])


def _check_arguments(input_path: str, output_dir: str, *, num_shards: int,
                     kind: str, sample_rate: int, valid_fraction: float,
                     test_fraction: float) -> None:
  """One-line errors for the flags, before anything is written."""
  if (input_path != JSB_INPUT and not corpora.is_music21_input(input_path)
      and not os.path.exists(input_path)):
    raise errors.MissingInputError(
        f"--input={input_path}: no such file or folder; give a folder of music "
        f"or audio files, one such file, {JSB_INPUT!r} (the bundled chorales) or "
        f"{corpora.PREFIX}NAME,... (music21's corpus).")
  if os.path.isfile(input_path) and not poly_corpus.is_frames_file(input_path):
    music, sounds, _ = _sort_files([os.path.basename(input_path)])
    if not music and not sounds:
      raise errors.UserError(
          f"--input={input_path}: not a music file "
          f"({', '.join(convert.SUPPORTED_EXTENSIONS)}), a frames file "
          f"(.pickle, .pkl, .mat) nor an audio file.")
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise errors.ExistingOutputError(f"--output={output_dir} is a file; name a folder.")
  if num_shards < 1:
    raise ValueError(f"--num_shards={num_shards}: must be >= 1")
  if kind not in KINDS:
    raise ValueError(f"--kind={kind!r}: allowed: {', '.join(KINDS)}")
  if (input_path == JSB_INPUT or corpora.is_music21_input(input_path)) and kind == AUDIO_KIND:
    raise ValueError(f"--input={input_path} gives NoteSequences; train with the audio "
                     "representation to render them (cached beside the shards)")
  if int(sample_rate) != sample_rate or sample_rate <= 0:
    raise ValueError(f"--sample_rate={sample_rate!r}: must be a positive integer (Hz)")
  shards.check_fractions(valid_fraction, test_fraction)


def _sort_files(relpaths: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
  """(music, audio, unsupported) of the relpaths, each sorted."""
  from musegen_jax.data import audio  # pylint: disable=import-outside-toplevel
  music, sounds, unsupported = [], [], []
  for relpath in relpaths:
    name = os.path.basename(relpath)
    if convert.is_supported(name):
      music.append(relpath)
    elif audio.is_audio_file(name):
      sounds.append(relpath)
    else:
      unsupported.append(relpath)
  return sorted(music), sorted(sounds), sorted(unsupported)


def _find_files(root: str, exclude: Sequence[str]
                ) -> tuple[list[str], list[str], list[str]]:
  """Lists (music, audio, unsupported) non-hidden files below root, as sorted relpaths."""
  excluded = {os.path.realpath(p) for p in exclude}
  relpaths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")
                   and os.path.realpath(os.path.join(dirpath, d)) not in excluded]
    relpaths += [os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                 for name in filenames if not name.startswith(".")]
  return _sort_files(relpaths)


def _into_every_split(results: Iterable[_FileResult]) -> Iterator[_FileResult]:
  """Each result's records in every split (one --input file); problems once."""
  for result in results:
    for i, split in enumerate(shards.SPLITS):
      yield result._replace(split=split, problems=result.problems if i == 0 else [])


def _jsb_results() -> Iterator[_FileResult]:
  for split, sequences in jsb.load_jsb().items():
    for ns in sequences:
      yield _FileResult(ns.id, split, [_to_record(ns)], [])


def _frames_file_results(path: str, collection: str, steps_per_quarter: int
                         ) -> Iterator[_FileResult]:
  """One result per piece of a benchmark file, in its own split."""
  for split, ns in poly_corpus.split_note_sequences(path, collection, steps_per_quarter):
    if not ns.notes:
      # A piece of rests only: a NoteSequence record needs a pitch range.
      yield _FileResult(ns.id, split, [], ["no notes (every frame silent)"])
    else:
      yield _FileResult(ns.id, split, [_to_record(ns)], [])


def _first_by_hash(paths: Sequence[str], limit: int) -> list[str]:
  """`limit` of `paths` (all for 0), the same ones on every machine."""
  if not limit or limit >= len(paths):
    return list(paths)
  key = lambda p: hashlib.sha256(os.path.basename(p).encode("utf-8")).hexdigest()
  return sorted(sorted(paths, key=key)[:limit])


def _count_key(kind: str) -> str:
  return "num_clips" if kind == AUDIO_KIND else "num_sequences"


def _write_shards(results: Iterable[_FileResult], total: int, output_dir: str, num_shards: int,
                  report: list[dict[str, str]], progress: bool,
                  kind: str = NOTE_SEQUENCE_KIND,
                  ) -> tuple[dict[str, dict[str, Any]], list[int], dict[str, dict[str, int]]]:
  """Writes the records of all results; appends their problems to report.

  Returns:
    Per-split statistics for metadata.json (num_sequences and num_notes, or
    num_clips for audio; total_seconds; shards), [lowest, highest] pitch,
    and {split: {label: records}} of the labelled records.
  """
  writers = {split: shards.SplitWriter(output_dir, split, num_shards) for split in shards.SPLITS}
  count_key = _count_key(kind)
  stats: dict[str, dict[str, Any]] = {split: {count_key: 0, "total_seconds": 0.0}
                                      for split in shards.SPLITS}
  if kind != AUDIO_KIND:
    for split_stats in stats.values():
      split_stats["num_notes"] = 0
  pitch_range = [128, -1]
  label_counts: dict[str, dict[str, int]] = {split: {} for split in shards.SPLITS}
  try:
    for result in tqdm(results, total=total, desc="prepare", unit="file", file=sys.stderr,
                       disable=not progress):
      for reason in result.problems:
        tqdm.write(f"skipped {result.relpath}: {reason}", file=sys.stderr)
        report.append({"file": result.relpath, "reason": reason})
      for record in result.records:
        writers[result.split].write(record.data)
        split_stats = stats[result.split]
        split_stats[count_key] += 1
        split_stats["total_seconds"] += record.total_time
        if "num_notes" in split_stats:
          split_stats["num_notes"] += record.num_notes
        pitch_range = [min(pitch_range[0], record.min_pitch),
                       max(pitch_range[1], record.max_pitch)]
        if record.label is not None:
          counts = label_counts[result.split]
          counts[record.label] = counts.get(record.label, 0) + 1
  except BaseException:
    for writer in writers.values():
      writer.abort()
    raise
  for split, writer in writers.items():
    paths = writer.close()
    stats[split]["shards"] = [os.path.basename(p) for p in paths]
    stats[split]["total_seconds"] = round(stats[split]["total_seconds"], 3)
    if not paths:
      print(f"warning: split {split!r} is empty", file=sys.stderr)
  return stats, pitch_range, label_counts


def prepare(input_path: str, output_dir: str, num_workers: int | None = None,
            num_shards: int = 4, valid_fraction: float = 0.1, test_fraction: float = 0.1,
            write_midi: str | None = None, progress: bool = True,
            sample_rate: int = 16000, kind: str = "auto",
            steps_per_quarter: int = 1, labels: str = "",
            max_per_label: int = 0) -> dict[str, Any]:
  """Converts a corpus into shards, prepare_report.json and (last) metadata.json.

  Args:
    input_path: a folder of music or audio files, one such file (written to
      every split), a benchmark frames file (.pickle, .pkl, .mat: its own
      split), or "jsb" for the bundled chorales.
    output_dir: the dataset folder; created if needed. Shards, metadata and
      caches (`cache/`) of an earlier run there are replaced.
    num_workers: conversion processes; None for min(cpu count, 8), 0 or 1 to
      convert in this process.
    num_shards: the most shards per split.
    valid_fraction: share of hash-split files in valid (folders only).
    test_fraction: share of hash-split files in test (folders only).
    write_midi: if set, also write every converted sequence as MIDI under
      `write_midi/{split}/`.
    progress: show a tqdm bar on stderr.
    sample_rate: samples per second of audio records (audio folders only).
    kind: "note_sequence" (music files), "audio" (audio files), or "auto":
      music if the folder holds any music file, else audio. Files of the
      other kind are skipped and reported.
    steps_per_quarter: frames per quarter note of a frames file's sequences.
    labels: "" (no labels), "folder", "composer" or a CSV manifest: where a
      folder of music files finds each piece's style (data/labels.py).
      "music21:..." inputs are labelled by collection.
    max_per_label: music21 inputs: at most this many files per collection
      (0: all), chosen by a hash of their path.

  Returns:
    The metadata written to metadata.json; for audio it has "kind": "audio"
    and "sample_rate".

  Raises:
    errors.MissingInputError: input_path is neither "jsb" nor a folder or file.
    errors.UserError: bad settings, or no file could be converted.
  """
  if num_workers is None:
    num_workers = min(os.cpu_count() or 1, 8)
  # Check everything before an earlier dataset in output_dir is removed.
  with errors.user_input():
    _check_arguments(input_path, output_dir, num_shards=num_shards, kind=kind,
                     sample_rate=sample_rate, valid_fraction=valid_fraction,
                     test_fraction=test_fraction)
    if steps_per_quarter < 1:
      raise ValueError(f"--steps_per_quarter={steps_per_quarter}: must be >= 1")
    if max_per_label < 0:
      raise ValueError(f"--max_per_label={max_per_label}: must be >= 0 (0: all)")
  music21_input = corpora.is_music21_input(input_path)
  if music21_input:
    if labels:
      raise errors.UserError(f"--labels={labels}: music21 inputs are labelled by "
                             "collection; leave --labels empty.")
    names = corpora.collection_names(input_path)
    pieces = [(name, path) for name in names
              for path in _first_by_hash(corpora.corpus_paths(name), max_per_label)]
  labeler = labels_lib.Labeler(labels) if labels else None
  if labeler is not None and (input_path == JSB_INPUT or not os.path.isdir(input_path)):
    raise errors.UserError(f"--labels={labels}: labels need --input to be a folder "
                           f"of music files or {corpora.PREFIX}..., not {input_path}.")
  if labeler is not None:
    labeler.check_files(_find_files(input_path, [output_dir, write_midi or output_dir])[0],
                        input_path)
  frames_file = (not music21_input and os.path.isfile(input_path)
                 and poly_corpus.is_frames_file(input_path))
  if frames_file:
    poly_corpus.read_file(input_path)  # Its errors come before OUTPUT changes.
  one_file = not frames_file and input_path != JSB_INPUT and os.path.isfile(input_path)
  if one_file:
    input_path, only = os.path.split(os.path.abspath(input_path))
  os.makedirs(output_dir, exist_ok=True)
  shards.remove_shards(output_dir)
  # Caches (rendered audio, vocabularies) belong to the shards just removed.
  shutil.rmtree(os.path.join(output_dir, "cache"), ignore_errors=True)
  report: list[dict[str, str]] = []
  if music21_input:
    kind = NOTE_SEQUENCE_KIND
    source, collection = input_path, "music21"
    settings = {"num_shards": num_shards, "valid_fraction": valid_fraction,
                "test_fraction": test_fraction, "max_per_label": int(max_per_label)}
    convert_fn = functools.partial(
        _convert_music21_piece, valid_fraction=valid_fraction,
        test_fraction=test_fraction, midi_dir=write_midi)
    results, total = workers.map_in_workers(convert_fn, pieces, num_workers), len(pieces)
  elif input_path == JSB_INPUT:
    kind = NOTE_SEQUENCE_KIND
    source, collection = JSB_INPUT, jsb.JSB_COLLECTION
    settings = {"num_shards": num_shards, "qpm": jsb.JSB_QPM, "velocity": jsb.JSB_VELOCITY}
    results: Iterable[_FileResult] = _jsb_results()
    total = sum(len(pieces) for pieces in jsb.load_jsb_frames().values())
    if write_midi:
      jsb.write_jsb_midi(write_midi)
  elif frames_file:
    kind = NOTE_SEQUENCE_KIND
    source = os.path.abspath(input_path)
    collection = os.path.splitext(os.path.basename(source))[0]
    settings = {"num_shards": num_shards, "steps_per_quarter": int(steps_per_quarter),
                "qpm": poly_corpus.FRAME_QPM, "velocity": poly_corpus.FRAME_VELOCITY}
    results = _frames_file_results(input_path, collection, int(steps_per_quarter))
    total = sum(len(r) for r in poly_corpus.read_file(input_path).values())
  else:
    source = os.path.abspath(input_path)
    collection = os.path.basename(source)
    settings = {"num_shards": num_shards, "valid_fraction": valid_fraction,
                "test_fraction": test_fraction}
    if one_file:
      music, sounds, unsupported = _sort_files([only])
      collection = os.path.splitext(only)[0]
    else:
      music, sounds, unsupported = _find_files(
          input_path, [output_dir, write_midi or output_dir])
    report += [{"file": f, "reason": f"unsupported extension {os.path.splitext(f)[1]!r}"}
               for f in unsupported]
    if kind == "auto":
      kind = NOTE_SEQUENCE_KIND if music or not sounds else AUDIO_KIND
    if kind == AUDIO_KIND:
      settings["sample_rate"] = int(sample_rate)
      report += [{"file": f, "reason": "music file; this run prepares audio (--kind=audio)"}
                 for f in music]
      files = sounds
      convert_fn = functools.partial(
          _convert_audio_file, root=input_path, sample_rate=int(sample_rate),
          valid_fraction=valid_fraction, test_fraction=test_fraction)
    else:
      report += [{"file": f, "reason": "audio file; this run prepares music files "
                                       "(--kind=audio prepares the audio)"} for f in sounds]
      files = music
      if labeler is not None:
        settings["labels"] = labels
      convert_fn = functools.partial(
          _convert_file, root=input_path, collection=collection,
          valid_fraction=valid_fraction, test_fraction=test_fraction, midi_dir=write_midi,
          labeler=labeler)
    report.sort(key=lambda entry: entry["file"])
    results, total = workers.map_in_workers(convert_fn, files, num_workers), len(files)
    if one_file:
      results, total = _into_every_split(results), total * len(shards.SPLITS)
  for entry in report:
    print(f"skipped {entry['file']}: {entry['reason']}", file=sys.stderr)

  stats, pitch_range, label_counts = _write_shards(
      results, total, output_dir, num_shards, report, progress, kind)
  shards.write_json_atomic(os.path.join(output_dir, REPORT_FILE), report)
  if not any(s[_count_key(kind)] for s in stats.values()):
    raise errors.UserError(
        f"--input={source}: no file could be converted; see "
        f"{os.path.join(output_dir, REPORT_FILE)}")
  metadata = {
      "format_version": shards.FORMAT_VERSION,
      "kind": kind,
      "source": source,
      "collection": collection,
      "splits": stats,
      "settings": settings,
      "skipped": len(report),
      "created_by": "musegen_jax.prepare",
  }
  if kind == AUDIO_KIND:
    metadata["sample_rate"] = int(sample_rate)
  else:
    metadata["pitch_range"] = pitch_range
  if music21_input or labeler is not None:
    # Before metadata.json: without it the folder is no dataset to train on.
    labels_lib.check_counts(label_counts, labels or input_path)
    metadata["labels"] = labels_lib.metadata_entry(label_counts, labels or input_path)
  shards.write_metadata(output_dir, metadata)
  return metadata


def ensure_default_dataset(cache_dir: str | None = None) -> str:
  """Prepares the bundled JSB Chorales once and returns the dataset folder.

  Safe when several processes call it at once: each prepares into its own
  temporary folder and renames it into place; the first rename wins.

  Args:
    cache_dir: the cache root; None for `cache.default_cache_dir()`.

  Returns:
    `{cache_dir}/jsb_chorales_v1`, holding shards and metadata.json.
  """
  cache_dir = cache_dir or cache.default_cache_dir()
  target = os.path.join(cache_dir, DEFAULT_DATASET_NAME)
  marker = os.path.join(target, shards.METADATA_FILE)
  if os.path.isfile(marker):
    return target
  os.makedirs(cache_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{DEFAULT_DATASET_NAME}.tmp-", dir=cache_dir)
  try:
    prepare(JSB_INPUT, tmp, num_workers=0, progress=False)
    try:
      os.rename(tmp, target)  # Atomic; fails if another process got there first.
    except OSError:
      if not os.path.isfile(marker):
        raise FileExistsError(f"{target} exists but is not a prepared dataset; remove it")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def main(argv: Sequence[str]) -> None:
  del argv  # cli.run refuses extra arguments.
  flag = flags.FLAGS
  write_midi = flag.write_midi
  if flag.input == JSB_INPUT and write_midi is None:
    write_midi = os.path.join(flag.output, "midi")
  metadata = prepare(os.path.expanduser(flag.input), flag.output,
                     num_workers=flag.num_workers, num_shards=flag.num_shards,
                     valid_fraction=flag.valid_fraction, test_fraction=flag.test_fraction,
                     write_midi=write_midi, sample_rate=flag.sample_rate, kind=flag.kind,
                     steps_per_quarter=flag.steps_per_quarter, labels=flag.labels,
                     max_per_label=flag.max_per_label)
  for split, s in metadata["splits"].items():
    if metadata["kind"] == AUDIO_KIND:
      counts = f"{s['num_clips']} clips at {metadata['sample_rate']} Hz"
    else:
      counts = f"{s['num_sequences']} sequences, {s['num_notes']} notes"
    print(f"{split}: {counts}, {s['total_seconds']:.0f} s in {len(s['shards'])} shards")
  if "labels" in metadata:
    for split, counts in metadata["labels"]["counts"].items():
      print(f"{split} styles: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
  print(f"skipped {metadata['skipped']}; wrote {flag.output}")


def run() -> None:
  """Console entry point. Flags are defined here, so importing this module defines none."""
  flags.DEFINE_string("input", None, "Folder of .mid/.midi/.xml/.mxl/.musicxml/.abc files "
                      "or of audio files (.wav/.flac/.ogg/.mp3/.aiff...), one such file "
                      "(into every split), a polyphonic benchmark file (.pickle, .pkl, "
                      ".mat: its own split), or 'jsb' for the bundled JSB Chorales (a "
                      "folder named jsb: ./jsb).")
  flags.DEFINE_string("output", None, "Dataset folder to write.")
  flags.DEFINE_string("labels", "", "Style label per piece: 'folder' "
                      "(INPUT/<style>/...), 'composer' (the files' composer "
                      "metadata) or a CSV of path,label rows; empty: none. "
                      "music21:... inputs are labelled by collection.")
  flags.DEFINE_integer("max_per_label", 0, "music21:... inputs: at most this many "
                       "files per collection (0: all).")
  flags.DEFINE_integer("num_workers", None,
                       "Conversion processes; default min(cpus, 8); 0 or 1: in-process.")
  flags.DEFINE_integer("num_shards", 4, "Most shards per split.")
  flags.DEFINE_float("valid_fraction", 0.1, "Share of hash-split files in valid.")
  flags.DEFINE_float("test_fraction", 0.1, "Share of hash-split files in test.")
  flags.DEFINE_integer("sample_rate", 16000,
                       "Audio folders: resample every file to this rate (Hz), mono.")
  flags.DEFINE_enum("kind", "auto", list(KINDS),
                    "What a folder is prepared as: note_sequence (music files), audio, or "
                    "auto: music if there is any music file, else audio.")
  flags.DEFINE_integer("steps_per_quarter", 1,
                       "Frames files: steps (frames) per quarter note of the written "
                       "sequences; train with the same config.data.steps_per_quarter.")
  flags.DEFINE_string("write_midi", None,
                      "Also write each sequence as MIDI here (default for jsb: OUTPUT/midi).")
  flags.mark_flags_as_required(["input", "output"])
  runtime.setup()
  cli.run(main)


if __name__ == "__main__":
  run()
