"""Polyphonic piano-roll corpora: any source of 88-key frames, one loader.

The piano-roll task (`tasks/pianoroll.py`) reads its pieces through
`load_rolls(source, split)`, where `source` is `config.data.dir`:

- "" (the default): the bundled quarter-note JSB Chorales (`jsb_quarter`);
- a `.pickle` / `.pkl` file in the layout the polyphonic benchmarks are
  distributed in (Boulanger-Lewandowski et al. 2012: JSB Chorales,
  Nottingham, MuseData, Piano-midi.de): a dict with "train", "valid" and
  "test", each a list of pieces, a piece a list of frames, a frame a list or
  tuple of the MIDI pitches sounding. It is read by an unpickler that refuses
  every global (no class, function or numpy type is ever built), then checked
  to hold nothing but those containers of ints;
- a `.mat` file in the benchmarks' MATLAB layout: cell arrays `traindata`,
  `validdata` and `testdata` of [frames, 88] 0/1 matrices (column k is MIDI
  pitch 21 + k), read with `scipy.io.loadmat`;
- a prepared corpus (`python -m musegen_jax.prepare`): NoteSequence shards,
  quantised to `steps_per_quarter` frames per quarter note through the
  sequence's tempo map, or, for unquantised performances, to a fixed
  `frames_per_second`; a frame is the set of pitches sounding during it.

A roll is a [frames, 88] uint8 multi-hot array, column k MIDI pitch
`MIN_PITCH + k`. Every mistake in a file is an `errors.UserError` naming the
file, the split, the piece index and the frame index.

`frames_to_note_sequence` is the way back (what `prepare --input=FILE.pickle`
writes): a pitch sounding in consecutive frames becomes one held note.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
from typing import Any, Iterable

import numpy as np

from musegen_jax import errors
from musegen_jax.data import jsb_quarter

MIN_PITCH = jsb_quarter.MIN_PITCH
NUM_KEYS = jsb_quarter.NUM_KEYS
MAX_PITCH = MIN_PITCH + NUM_KEYS - 1
SPLITS = ("train", "valid", "test")
PICKLE_EXTENSIONS = (".pickle", ".pkl")
MAT_EXTENSIONS = (".mat",)
MAT_KEYS = {"train": "traindata", "valid": "validdata", "test": "testdata"}
FRAME_QPM = 100.0  # Tempo of the NoteSequences written from frame files.
FRAME_VELOCITY = 80


def is_frames_file(path: str) -> bool:
  """Whether `path` names a benchmark file (.pickle, .pkl or .mat) by its name."""
  return os.path.splitext(path)[1].lower() in PICKLE_EXTENSIONS + MAT_EXTENSIONS


def _error(path: str, split: str | None = None, piece: int | None = None,
           frame: int | None = None, reason: str = "") -> errors.UserError:
  where = [os.fspath(path)]
  if split is not None:
    where.append(f"split {split!r}")
  if piece is not None:
    where.append(f"piece {piece}")
  if frame is not None:
    where.append(f"frame {frame}")
  return errors.UserError(f"{', '.join(where)}: {reason}")


class _NoGlobalsUnpickler(pickle.Unpickler):
  """Builds only pickle's own containers and scalars: every global is refused."""

  def find_class(self, module: str, name: str) -> Any:
    raise pickle.UnpicklingError(
        f"refused to load {module}.{name}: only dicts, lists, tuples and ints "
        "may be in a frames file")


def _load_pickle(path: str) -> Any:
  with open(path, "rb") as f:
    data = f.read()
  try:
    # latin1: the benchmark files were written by Python 2.
    return _NoGlobalsUnpickler(io.BytesIO(data), encoding="latin1").load()
  except Exception as e:  # pylint: disable=broad-except
    # A corrupt or hostile file: nothing was built from it.
    raise _error(path, reason=f"not a frames pickle ({type(e).__name__}: {e})") from e


def _pitch_roll(pieces: Any, path: str, split: str) -> list[np.ndarray]:
  """Checks one split of pitch lists and converts it to rolls."""
  if not isinstance(pieces, (list, tuple)):
    raise _error(path, split, reason=f"a split must be a list of pieces, "
                 f"not {type(pieces).__name__}")
  rolls = []
  for i, piece in enumerate(pieces):
    if not isinstance(piece, (list, tuple)):
      raise _error(path, split, i, reason=f"a piece must be a list of frames, "
                   f"not {type(piece).__name__}")
    if not piece:
      raise _error(path, split, i, reason="empty piece (no frames)")
    roll = np.zeros((len(piece), NUM_KEYS), np.uint8)
    for t, frame in enumerate(piece):
      if not isinstance(frame, (list, tuple)):
        raise _error(path, split, i, t, f"a frame must be a list of MIDI pitches, "
                     f"not {type(frame).__name__}")
      for pitch in frame:
        # bool is an int subclass; refuse it with floats and strings.
        if type(pitch) is not int:  # pylint: disable=unidiomatic-typecheck
          raise _error(path, split, i, t, f"pitch {pitch!r} is a "
                       f"{type(pitch).__name__}; pitches are ints")
        if not MIN_PITCH <= pitch <= MAX_PITCH:
          raise _error(path, split, i, t, f"pitch {pitch} is outside the 88 "
                       f"piano keys {MIN_PITCH}-{MAX_PITCH}")
        roll[t, pitch - MIN_PITCH] = 1
    rolls.append(roll)
  return rolls


def read_pickle(path: str) -> dict[str, list[np.ndarray]]:
  """A benchmark pickle's splits as rolls (see the module docstring).

  Raises:
    errors.UserError: the file is not in the layout; the message names the
      file, split, piece and frame.
  """
  data = _load_pickle(path)
  if not isinstance(data, dict):
    raise _error(path, reason=f"the file holds a {type(data).__name__}; expected "
                 "a dict with 'train', 'valid' and 'test'")
  missing = [s for s in SPLITS if s not in data]
  if missing:
    raise _error(path, reason=f"no split {missing[0]!r} (keys: "
                 f"{sorted(map(str, data))}); expected {list(SPLITS)}")
  return {s: _pitch_roll(data[s], path, s) for s in SPLITS}


def _cells(value: Any) -> list[Any]:
  """A MATLAB cell array (object array of any shape) as a flat list."""
  if isinstance(value, np.ndarray) and value.dtype == object:
    return list(value.ravel(order="F"))
  return [value]


def read_mat(path: str) -> dict[str, list[np.ndarray]]:
  """A benchmark .mat file's splits as rolls (see the module docstring).

  Raises:
    errors.UserError: the file is not in the layout; the message names the
      file, split (its MATLAB name), piece and frame.
  """
  import scipy.io  # pylint: disable=import-outside-toplevel
  import scipy.sparse  # pylint: disable=import-outside-toplevel
  try:
    data = scipy.io.loadmat(path)
  except Exception as e:  # pylint: disable=broad-except
    raise _error(path, reason=f"not a MATLAB file ({type(e).__name__}: {e})") from e
  result = {}
  for split, key in MAT_KEYS.items():
    if key not in data:
      names = sorted(k for k in data if not k.startswith("__"))
      raise _error(path, reason=f"no split {key!r} (variables: {names}); expected "
                   f"{list(MAT_KEYS.values())}")
    rolls = []
    for i, piece in enumerate(_cells(data[key])):
      if scipy.sparse.issparse(piece):
        piece = piece.toarray()
      piece = np.asarray(piece)
      if piece.dtype == object or piece.ndim != 2 or piece.shape[1] != NUM_KEYS:
        raise _error(path, key, i, reason=f"a piece must be a [frames, {NUM_KEYS}] "
                     f"0/1 matrix, not shape {piece.shape} ({piece.dtype})")
      if not piece.shape[0]:
        raise _error(path, key, i, reason="empty piece (no frames)")
      bad = np.flatnonzero(((piece != 0) & (piece != 1)).any(axis=1))
      if len(bad):
        t = int(bad[0])
        values = sorted({v.item() for v in np.unique(piece[t])} - {0, 1})
        raise _error(path, key, i, t, f"values {values[:3]}; a frame holds 0 or 1 "
                     "per key")
      rolls.append(piece.astype(np.uint8))
    result[split] = rolls
  return result


def _quarter_times(times: np.ndarray, tempos: list[tuple[float, float]]) -> np.ndarray:
  """Seconds -> quarter notes through a tempo map [(time, qpm)], sorted."""
  starts = np.asarray([t for t, _ in tempos], np.float64)
  qpms = np.asarray([q for _, q in tempos], np.float64)
  # Quarter notes elapsed at each tempo change.
  at_change = np.concatenate([[0.0], np.cumsum(np.diff(starts) * qpms[:-1] / 60.0)])
  k = np.maximum(np.searchsorted(starts, times, side="right") - 1, 0)
  return at_change[k] + (times - starts[k]) * qpms[k] / 60.0


def note_sequence_to_roll(ns: Any, steps_per_quarter: int,
                          frames_per_second: float = 0.0) -> np.ndarray:
  """One NoteSequence's sounding pitches per step: [steps, 88] uint8.

  A step is 1 / steps_per_quarter quarter note under the sequence's tempo
  map (120 qpm without one), or with `frames_per_second` > 0 that fraction
  of a second whatever the tempo (performances); a note sounds on the steps
  from its rounded start to its rounded end (at least one). Drums and
  pitches outside the 88 keys are left out.
  """
  if frames_per_second > 0:
    # A quarter note of 1 s is steps_per_quarter frames.
    tempos, steps_per_quarter = [(0.0, 60.0)], frames_per_second
  else:
    tempos = sorted((max(t.time, 0.0), t.qpm) for t in ns.tempos if t.qpm > 0)
    if not tempos or tempos[0][0] > 0:
      tempos.insert(0, (0.0, tempos[0][1] if tempos else 120.0))
  notes = [n for n in ns.notes if not n.is_drum and MIN_PITCH <= n.pitch <= MAX_PITCH]
  starts = np.asarray([n.start_time for n in notes], np.float64)
  ends = np.asarray([n.end_time for n in notes], np.float64)
  to_step = lambda t: np.rint(_quarter_times(t, tempos) * steps_per_quarter
                              ).astype(np.int64)
  first, last = to_step(starts), to_step(ends)
  last = np.maximum(last, first + 1)
  total = int(to_step(np.asarray([ns.total_time]))[0])
  roll = np.zeros((max(total, int(last.max(initial=0))), NUM_KEYS), np.uint8)
  for note, a, b in zip(notes, first, last):
    roll[a:b, note.pitch - MIN_PITCH] = 1
  return roll


def read_prepared(data_dir: str, split: str, steps_per_quarter: int,
                  frames_per_second: float = 0.0) -> list[np.ndarray]:
  """The NoteSequences of a prepared corpus's split as rolls (empty ones left out)."""
  from musegen_jax.data import shards  # pylint: disable=import-outside-toplevel
  try:
    paths = shards.split_paths(data_dir, split)
  except (FileNotFoundError, ValueError) as e:
    raise _error(data_dir, split, reason=str(e)) from e
  rolls = [note_sequence_to_roll(ns, steps_per_quarter, frames_per_second)
           for ns in shards.read_note_sequences(paths)]
  return [r for r in rolls if len(r)]


@functools.lru_cache(maxsize=2)
def _read_file(path: str, mtime: float) -> dict[str, list[np.ndarray]]:
  del mtime  # Part of the cache key: a rewritten file is read again.
  if os.path.splitext(path)[1].lower() in MAT_EXTENSIONS:
    return read_mat(path)
  return read_pickle(path)


def read_file(path: str) -> dict[str, list[np.ndarray]]:
  """A benchmark file's {split: rolls} (cached per path and mtime: do not mutate)."""
  if not os.path.isfile(path):
    raise errors.MissingInputError(f"{path}: no such file")
  return _read_file(os.path.abspath(path), os.path.getmtime(path))


def load_rolls(source: str, split: str, steps_per_quarter: int = 1,
               frames_per_second: float = 0.0) -> list[np.ndarray]:
  """The pieces of `split` from any source (see the module docstring).

  Args:
    source: "" for the bundled JSB Chorales, a .pickle/.pkl/.mat file, or a
      prepared corpus folder.
    split: "train", "valid" or "test".
    steps_per_quarter: frames per quarter note (prepared corpora only).
    frames_per_second: > 0: frames of this fixed rate instead (prepared
      corpora only: unquantised performances).

  Returns:
    The split's [frames, 88] uint8 rolls, in the source's order.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; allowed: {SPLITS}")
  if not source:
    return jsb_quarter.load_rolls(split)
  if is_frames_file(source):
    return read_file(source)[split]
  rolls = read_prepared(source, split, steps_per_quarter, frames_per_second)
  if not rolls:
    raise _error(source, split, reason="no piece with a note")
  return rolls


def frames_to_note_sequence(roll: np.ndarray, sequence_id: str, collection: str,
                            steps_per_quarter: int = 1, qpm: float = FRAME_QPM):
  """One roll -> a NoteSequence of held notes (the inverse of
  `note_sequence_to_roll` at the same `steps_per_quarter`).

  A pitch on in consecutive frames is one note; `total_time` keeps trailing
  silent frames.
  """
  from note_seq.protobuf import music_pb2  # pylint: disable=import-outside-toplevel
  step_s = 60.0 / (qpm * steps_per_quarter)
  ns = music_pb2.NoteSequence(id=sequence_id, filename=sequence_id,
                              collection_name=collection, ticks_per_quarter=220)
  ns.tempos.add(time=0.0, qpm=qpm)
  ns.time_signatures.add(time=0.0, numerator=4, denominator=4)
  padded = np.pad(np.asarray(roll, np.int8), ((1, 1), (0, 0)))
  edges = np.diff(padded, axis=0)  # +1 where a key starts, -1 where it stops.
  for key in range(NUM_KEYS):
    ons, = np.nonzero(edges[:, key] == 1)
    offs, = np.nonzero(edges[:, key] == -1)
    for a, b in zip(ons, offs):
      ns.notes.add(pitch=MIN_PITCH + key, velocity=FRAME_VELOCITY, program=0,
                   start_time=a * step_s, end_time=b * step_s)
  ns.notes.sort(key=lambda n: (n.start_time, n.pitch))
  ns.total_time = len(roll) * step_s
  return ns


def split_note_sequences(path: str, collection: str, steps_per_quarter: int = 1
                         ) -> Iterable[tuple[str, Any]]:
  """(split, NoteSequence) for every piece of a benchmark file, split by split."""
  for split, rolls in read_file(path).items():
    for i, roll in enumerate(rolls):
      yield split, frames_to_note_sequence(roll, f"{collection}/{split}/{i:04d}",
                                           collection, steps_per_quarter)
