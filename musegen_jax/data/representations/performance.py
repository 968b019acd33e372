"""Performance events: the Performance RNN / Music Transformer vocabulary.

A performance is a stream of events on a fixed time grid (10 ms by default):

  id 0                 PAD
  id 1                 EOS
  NOTE_ON(pitch)       128 ids, start a note
  NOTE_OFF(pitch)      128 ids, end a note
  TIME_SHIFT(steps)    max_shift_steps ids, move time forward 1..max steps
  VELOCITY(bin)        num_velocity_bins ids, velocity of the next note-ons

With the defaults that is 2 + 128 + 128 + 100 + 32 = 390 ids. Events at one
time come note-offs first (so a pitch can end and restart on the same step),
then note-ons, each preceded by a VELOCITY event only when the velocity bin
changes. Drum notes are left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from musegen_jax.data.representations import base

NUM_PITCHES = 128
# A sampled note-on whose note-off never comes would otherwise sound to the
# end of the piece; samples cap notes at this length (Magenta's Performance
# RNN generator does the same, at 5 s).
SAMPLE_MAX_NOTE_SECONDS = 5.0


class PerformanceRepresentation(base.TokenRepresentation):
  """Encodes NoteSequences as performance event tokens.

  Args:
    steps_per_second: time grid resolution; 100 means 10 ms steps.
    num_velocity_bins: number of velocity classes (1..127).
    max_shift_steps: longest single TIME_SHIFT; longer gaps use several.
  """

  name = "performance"

  def __init__(self, steps_per_second: int = 100, num_velocity_bins: int = 32,
               max_shift_steps: int = 100):
    if int(steps_per_second) != steps_per_second or steps_per_second < 1:
      raise ValueError(
          f"steps_per_second must be a positive int, got {steps_per_second!r}.")
    if (int(num_velocity_bins) != num_velocity_bins or
        not 1 <= num_velocity_bins <= 127):
      raise ValueError(
          f"num_velocity_bins must be an int in 1..127, got {num_velocity_bins!r}.")
    if int(max_shift_steps) != max_shift_steps or max_shift_steps < 1:
      raise ValueError(
          f"max_shift_steps must be a positive int, got {max_shift_steps!r}.")
    self.steps_per_second = int(steps_per_second)
    self.num_velocity_bins = int(num_velocity_bins)
    self.max_shift_steps = int(max_shift_steps)
    # First id of each event kind.
    self.note_on_offset = 2
    self.note_off_offset = self.note_on_offset + NUM_PITCHES
    self.time_shift_offset = self.note_off_offset + NUM_PITCHES
    self.velocity_offset = self.time_shift_offset + self.max_shift_steps

  def settings(self) -> dict[str, Any]:
    return {"steps_per_second": self.steps_per_second,
            "num_velocity_bins": self.num_velocity_bins,
            "max_shift_steps": self.max_shift_steps}

  @property
  def vocab_size(self) -> int:
    return self.velocity_offset + self.num_velocity_bins

  # Velocity bins split 1..127 into equal ranges.
  def velocity_to_bin(self, velocity: int) -> int:
    velocity = min(max(int(velocity), 1), 127)
    return (velocity - 1) * self.num_velocity_bins // 127

  def bin_to_velocity(self, velocity_bin: int) -> int:
    centre = 1 + (velocity_bin + 0.5) * 127 / self.num_velocity_bins
    return min(max(int(round(centre)), 1), 127)

  def event_name(self, token: int) -> str:
    """Returns a readable name for one token id, e.g. 'NOTE_ON(60)'."""
    token = int(token)
    if token == self.pad_id:
      return "PAD"
    if token == self.eos_id:
      return "EOS"
    if self.note_on_offset <= token < self.note_off_offset:
      return f"NOTE_ON({token - self.note_on_offset})"
    if self.note_off_offset <= token < self.time_shift_offset:
      return f"NOTE_OFF({token - self.note_off_offset})"
    if self.time_shift_offset <= token < self.velocity_offset:
      return f"TIME_SHIFT({token - self.time_shift_offset + 1})"
    if self.velocity_offset <= token < self.vocab_size:
      return f"VELOCITY({token - self.velocity_offset})"
    raise ValueError(f"Token {token} is outside the vocabulary [0, {self.vocab_size}).")

  def quantize_notes(self, ns: base.NoteSequence) -> list[tuple[int, int, int, int]]:
    """Puts the non-drum notes on the time grid, so no same-pitch notes overlap.

    Times round to the nearest step; a note that would last zero steps lasts
    one. When a pitch is struck again while it sounds, the earlier note ends
    there and the new one lasts until the later of the two ends, so every
    onset and every sounding step is kept; notes of one pitch starting on the
    same step merge into one.

    Args:
      ns: the sequence.

    Returns:
      (pitch, start_step, end_step, velocity) tuples sorted by start, pitch.
    """
    by_pitch: dict[int, list[list[int]]] = {}
    for note in ns.notes:
      if note.is_drum:
        continue
      if not 0 <= note.pitch < NUM_PITCHES:
        raise ValueError(f"Note pitch {note.pitch} is outside 0..127.")
      start = base.time_to_step(note.start_time, self.steps_per_second)
      end = max(base.time_to_step(note.end_time, self.steps_per_second), start + 1)
      by_pitch.setdefault(note.pitch, []).append([start, end, note.velocity])
    notes = []
    for pitch, spans in by_pitch.items():
      spans.sort()
      kept = [spans[0]]
      for span in spans[1:]:
        last = kept[-1]
        if span[0] == last[0]:
          last[1] = max(last[1], span[1])
        else:
          # Re-struck while sounding: the pitch sounds on until either ends.
          span[1] = max(span[1], last[1])
          last[1] = min(last[1], span[0])
          kept.append(span)
      notes.extend((pitch, s, e, v) for s, e, v in kept)
    notes.sort(key=lambda n: (n[1], n[0]))
    return notes

  def encode(self, ns: base.NoteSequence, add_eos: bool = True) -> np.ndarray:
    """Encodes a NoteSequence as event tokens.

    Args:
      ns: the sequence; its timing is read in seconds.
      add_eos: whether to end the tokens with EOS.

    Returns:
      [length] int32 token ids.
    """
    # (step, 0 = off / 1 = on, pitch, velocity); sorting puts offs first.
    events = []
    for pitch, start, end, velocity in self.quantize_notes(ns):
      events.append((start, 1, pitch, velocity))
      events.append((end, 0, pitch, 0))
    events.sort()

    tokens = []
    step = 0
    velocity_bin = None
    for time, is_on, pitch, velocity in events:
      while step < time:
        shift = min(time - step, self.max_shift_steps)
        tokens.append(self.time_shift_offset + shift - 1)
        step += shift
      if is_on:
        new_bin = self.velocity_to_bin(velocity)
        if new_bin != velocity_bin:
          tokens.append(self.velocity_offset + new_bin)
          velocity_bin = new_bin
        tokens.append(self.note_on_offset + pitch)
      else:
        tokens.append(self.note_off_offset + pitch)
    if add_eos:
      tokens.append(self.eos_id)
    return np.asarray(tokens, dtype=np.int32)

  def decode_sample(self, x: np.ndarray) -> base.NoteSequence:
    """`decode` with notes capped at `SAMPLE_MAX_NOTE_SECONDS`."""
    return self.decode(x, max_note_seconds=SAMPLE_MAX_NOTE_SECONDS)

  def decode(self, x: np.ndarray, max_note_seconds: float | None = None
             ) -> base.NoteSequence:
    """Decodes event tokens into a NoteSequence.

    PAD is skipped and EOS ends the sequence. A note-off without a sounding
    note is ignored, a note-on of a sounding pitch restarts it, zero-length
    notes are dropped and notes still sounding at the end close there.

    Args:
      x: [length] integer token ids.
      max_note_seconds: if set, no note lasts longer (it ends that long
        after its start however late its note-off comes).

    Returns:
      a NoteSequence at 120 qpm with times in seconds.
    """
    tokens = base.as_tokens(x)
    bad = tokens[(tokens < 0) | (tokens >= self.vocab_size)]
    if bad.size:
      raise ValueError(
          f"Token {bad[0]} is outside the vocabulary [0, {self.vocab_size}).")
    ns = base.new_sequence()
    sps = self.steps_per_second
    velocity = 64
    step = 0
    sounding: dict[int, tuple[int, int]] = {}  # pitch -> (start step, velocity)
    longest = None if max_note_seconds is None else max(1, round(max_note_seconds * sps))

    def close(pitch: int) -> None:
      start, note_velocity = sounding.pop(pitch)
      end = step if longest is None else min(step, start + longest)
      if end > start:
        ns.notes.add(pitch=pitch, velocity=note_velocity, start_time=start / sps,
                     end_time=end / sps)

    for token in tokens.tolist():
      if token == self.eos_id:
        break
      if token == self.pad_id:
        continue
      if token < self.note_off_offset:
        pitch = token - self.note_on_offset
        if pitch in sounding:
          close(pitch)
        sounding[pitch] = (step, velocity)
      elif token < self.time_shift_offset:
        pitch = token - self.note_off_offset
        if pitch in sounding:
          close(pitch)
      elif token < self.velocity_offset:
        step += token - self.time_shift_offset + 1
      else:
        velocity = self.bin_to_velocity(token - self.velocity_offset)
    for pitch in list(sounding):
      close(pitch)

    ns.notes.sort(key=lambda n: (n.start_time, n.pitch))
    ns.total_time = max((n.end_time for n in ns.notes), default=0.0)
    return ns
