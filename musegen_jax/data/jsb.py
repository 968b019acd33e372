"""The bundled JSB Chorales corpus as NoteSequences.

The chorales ship with the package as 16th-note frames of 4 voices (SATB, `-1`
for a silent voice; see `jsb_chorales/README.md`). A voice's equal consecutive
pitches merge into one held note, at a fixed tempo of `JSB_QPM`.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
import os

import note_seq
from note_seq.protobuf import music_pb2

NoteSequence = music_pb2.NoteSequence

JSB_QPM = 100.0  # Quarter notes per minute: a 16th note lasts 0.15 s.
JSB_SPLITS = ("train", "valid", "test")
JSB_STEPS_PER_QUARTER = 4
JSB_VELOCITY = 80
JSB_COLLECTION = "jsb_chorales"
_DATA_FILE = "Jsb16thSeparated.json.gz"


@functools.lru_cache(maxsize=1)
def load_jsb_frames() -> dict[str, list[list[list[int]]]]:
  """Reads the bundled frames.

  Returns:
    {split: pieces}; a piece is a list of 16th-note frames, a frame the 4 voice
    pitches in SATB order, -1 where a voice is silent. Cached: do not mutate.
  """
  resource = importlib.resources.files(__package__) / "jsb_chorales" / _DATA_FILE
  with resource.open("rb") as f:
    data = json.loads(gzip.decompress(f.read()))
  return {split: [[[int(p) for p in frame] for frame in piece]
                  for piece in data[split]] for split in JSB_SPLITS}


def _step_time(step: int) -> float:
  return step * 60.0 / (JSB_QPM * JSB_STEPS_PER_QUARTER)


def frames_to_note_sequence(frames: list[list[int]], sequence_id: str) -> NoteSequence:
  """Converts one piece of voice frames to an unquantized NoteSequence.

  Args:
    frames: [num_steps, num_voices] MIDI pitches, -1 for a silent voice.
    sequence_id: stored as the sequence's id and filename.

  Returns:
    A NoteSequence in seconds; `note.instrument` is the voice index (0 = soprano).
  """
  ns = NoteSequence(id=sequence_id, filename=sequence_id,
                    collection_name=JSB_COLLECTION, ticks_per_quarter=220)
  ns.tempos.add(time=0.0, qpm=JSB_QPM)
  ns.time_signatures.add(time=0.0, numerator=4, denominator=4)
  ns.sequence_metadata.composers.append("Johann Sebastian Bach")
  num_voices = len(frames[0]) if frames else 0
  for voice in range(num_voices):
    start = 0
    for step in range(1, len(frames) + 1):
      pitch = frames[start][voice]
      if step < len(frames) and frames[step][voice] == pitch:
        continue  # Held note: the same pitch continues.
      if pitch >= 0:
        ns.notes.add(pitch=pitch, velocity=JSB_VELOCITY, instrument=voice, program=0,
                     start_time=_step_time(start), end_time=_step_time(step))
      start = step
  ns.notes.sort(key=lambda n: (n.start_time, n.instrument))
  ns.total_time = _step_time(len(frames))
  return ns


def load_jsb(split: str | None = None) -> dict[str, list[NoteSequence]] | list[NoteSequence]:
  """Loads the bundled chorales as NoteSequences (229/76/77 pieces).

  Args:
    split: "train", "valid" or "test"; None for all three.

  Returns:
    The split's NoteSequences (ids `jsb/{split}/{index:03d}`), or {split: list}
    when split is None.
  """
  if split is not None and split not in JSB_SPLITS:
    raise ValueError(f"Unknown JSB split {split!r}; expected one of {JSB_SPLITS}.")
  frames = load_jsb_frames()
  result = {s: [frames_to_note_sequence(piece, f"jsb/{s}/{i:03d}")
                for i, piece in enumerate(frames[s])]
            for s in JSB_SPLITS if split in (None, s)}
  return result if split is None else result[split]


def write_jsb_midi(output_dir: str) -> list[str]:
  """Writes every chorale as a MIDI file.

  Args:
    output_dir: files go to `output_dir/{split}/jsb_{split}_{index:03d}.mid`.

  Returns:
    The written paths, split by split in index order.
  """
  paths = []
  for split, sequences in load_jsb().items():
    os.makedirs(os.path.join(output_dir, split), exist_ok=True)
    for i, ns in enumerate(sequences):
      path = os.path.join(output_dir, split, f"jsb_{split}_{i:03d}.mid")
      note_seq.sequence_proto_to_midi_file(ns, path)
      paths.append(path)
  return paths
