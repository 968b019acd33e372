"""Piano roll: a multi-hot [steps, pitches] grid of sounding notes.

Time is quantized to `steps_per_quarter` using the sequence's first tempo, so
a 16th note is one step with the defaults whatever the tempo. A roll cannot
tell a held note from the same pitch struck again on the next step: decoding
makes each run of active steps in a key column one note. Drum notes and
pitches outside the keyboard range are left out.

`sequence_to_roll` and `roll_to_sequence` are shared with the chord tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from musegen_jax.data.representations import base


def steps_per_second(qpm: float, steps_per_quarter: int) -> float:
  return qpm / 60.0 * steps_per_quarter


def sequence_to_roll(ns: base.NoteSequence, steps_per_quarter: int,
                     min_pitch: int = 0, num_pitches: int = 128) -> np.ndarray:
  """Quantizes a NoteSequence onto a grid of steps.

  Step boundaries fall every 1 / steps_per_quarter quarter notes at the first
  tempo (120 qpm when the sequence has none). Note times round to the nearest
  step; a note covers [start_step, end_step) and at least one step. The roll
  lasts until the last note ends or `ns.total_time`, whichever is later.

  Args:
    ns: the sequence; its timing is read in seconds.
    steps_per_quarter: steps per quarter note.
    min_pitch: MIDI pitch of column 0.
    num_pitches: number of columns; other pitches are dropped.

  Returns:
    [num_steps, num_pitches] uint8 multi-hot roll.
  """
  qpm = ns.tempos[0].qpm if ns.tempos else base.DEFAULT_QPM
  sps = steps_per_second(qpm, steps_per_quarter)
  spans = []
  for note in ns.notes:
    if note.is_drum or not min_pitch <= note.pitch < min_pitch + num_pitches:
      continue
    start = base.time_to_step(note.start_time, sps)
    end = max(base.time_to_step(note.end_time, sps), start + 1)
    spans.append((note.pitch - min_pitch, start, end))
  num_steps = max([base.time_to_step(ns.total_time, sps)] + [e for _, _, e in spans])
  roll = np.zeros((num_steps, num_pitches), dtype=np.uint8)
  for column, start, end in spans:
    roll[start:end, column] = 1
  return roll


def roll_to_sequence(roll: np.ndarray, steps_per_quarter: int,
                     min_pitch: int = 0, qpm: float = base.DEFAULT_QPM,
                     velocity: int = base.DEFAULT_VELOCITY) -> base.NoteSequence:
  """Turns each run of active steps in a column into one note.

  Args:
    roll: [num_steps, num_pitches] array; nonzero means sounding.
    steps_per_quarter: steps per quarter note.
    min_pitch: MIDI pitch of column 0.
    qpm: tempo of the output sequence.
    velocity: velocity of every note.

  Returns:
    a NoteSequence with notes sorted by start time, then pitch, and
    total_time = num_steps steps.
  """
  roll = np.asarray(roll)
  if roll.ndim != 2:
    raise ValueError(f"Expected a [steps, pitches] roll, got shape {roll.shape}.")
  sps = steps_per_second(qpm, steps_per_quarter)
  active = np.pad(roll.T != 0, ((0, 0), (1, 1))).astype(np.int8)
  edges = np.diff(active, axis=1)  # [pitches, steps + 1]
  # Row-major order pairs each column's k-th start with its k-th end.
  starts = np.argwhere(edges == 1)
  ends = np.argwhere(edges == -1)
  ns = base.new_sequence(qpm)
  order = np.lexsort((starts[:, 0], starts[:, 1]))
  for i in order:
    column, start = starts[i]
    ns.notes.add(pitch=int(min_pitch + column), velocity=velocity,
                 start_time=start / sps, end_time=ends[i, 1] / sps)
  ns.total_time = roll.shape[0] / sps
  return ns


class PianorollRepresentation(base.Representation):
  """Encodes NoteSequences as multi-hot piano rolls.

  Args:
    steps_per_quarter: time steps per quarter note.
    min_pitch: MIDI pitch of the first column (21 = A0, the lowest piano key).
    num_pitches: number of columns (88 = the piano keyboard).
    qpm: tempo of decoded sequences.
  """

  name = "pianoroll"

  def __init__(self, steps_per_quarter: int = 4, min_pitch: int = 21,
               num_pitches: int = 88, qpm: float = base.DEFAULT_QPM):
    if int(steps_per_quarter) != steps_per_quarter or steps_per_quarter < 1:
      raise ValueError(
          f"steps_per_quarter must be a positive int, got {steps_per_quarter!r}.")
    if num_pitches < 1 or min_pitch < 0 or min_pitch + num_pitches > 128:
      raise ValueError(
          f"Pitch range min_pitch={min_pitch!r}, num_pitches={num_pitches!r} "
          "must lie within MIDI pitches 0..127.")
    if qpm <= 0:
      raise ValueError(f"qpm must be positive, got {qpm!r}.")
    self.steps_per_quarter = int(steps_per_quarter)
    self.min_pitch = int(min_pitch)
    self.num_pitches = int(num_pitches)
    self.qpm = float(qpm)

  def settings(self) -> dict[str, Any]:
    return {"steps_per_quarter": self.steps_per_quarter,
            "min_pitch": self.min_pitch, "num_pitches": self.num_pitches,
            "qpm": self.qpm}

  def encode(self, ns: base.NoteSequence) -> np.ndarray:
    """Encodes a NoteSequence as a roll.

    Args:
      ns: the sequence.

    Returns:
      [num_steps, num_pitches] uint8 multi-hot roll.
    """
    return sequence_to_roll(ns, self.steps_per_quarter, self.min_pitch,
                            self.num_pitches)

  def decode(self, x: np.ndarray) -> base.NoteSequence:
    """Decodes a roll into a NoteSequence at `qpm`, velocity 80.

    Args:
      x: [num_steps, num_pitches] array; nonzero means sounding.

    Returns:
      the NoteSequence.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != self.num_pitches:
      raise ValueError(
          f"Expected a [steps, {self.num_pitches}] roll, got shape {x.shape}.")
    return roll_to_sequence(x, self.steps_per_quarter, self.min_pitch, self.qpm)
