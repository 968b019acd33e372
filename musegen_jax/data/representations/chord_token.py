"""Chord tokens: one token per time step, naming the set of sounding pitches.

Frames come from the piano-roll quantization (`steps_per_quarter` steps per
quarter note). Ids 0..3 are PAD, EOS, REST (nothing sounds) and UNK (a pitch
set outside the vocabulary); the vocabulary follows from id 4. A chord's key
is its sorted pitches joined by '-', e.g. "60-64-67". Build the vocabulary on
the training split with `ChordTokenRepresentation.build`; it is part of the
settings, so an export carries it.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from musegen_jax.data.representations import base
from musegen_jax.data.representations import pianoroll

NUM_PITCHES = 128


def chord_key(pitches: Iterable[int]) -> str:
  """Returns the vocabulary key of a pitch set, e.g. "60-64-67"."""
  return "-".join(str(p) for p in sorted(set(int(p) for p in pitches)))


def _parse_key(key: str) -> tuple[int, ...]:
  try:
    pitches = tuple(int(p) for p in key.split("-"))
  except ValueError:
    pitches = ()
  if (not pitches or chord_key(pitches) != key or
      not all(0 <= p < NUM_PITCHES for p in pitches)):
    raise ValueError(
        f"Bad chord key {key!r}: expected sorted distinct MIDI pitches joined "
        "by '-', e.g. '60-64-67'.")
  return pitches


class ChordTokenRepresentation(base.TokenRepresentation):
  """Encodes NoteSequences as one chord token per frame.

  Args:
    steps_per_quarter: frames per quarter note.
    vocab: chord keys, in id order from id 4; None means an empty vocabulary.
    qpm: tempo of decoded sequences.
  """

  name = "chord_token"
  rest_id = 2
  unk_id = 3
  num_special = 4

  def __init__(self, steps_per_quarter: int = 4,
               vocab: Sequence[str] | None = None,
               qpm: float = base.DEFAULT_QPM):
    if int(steps_per_quarter) != steps_per_quarter or steps_per_quarter < 1:
      raise ValueError(
          f"steps_per_quarter must be a positive int, got {steps_per_quarter!r}.")
    if qpm <= 0:
      raise ValueError(f"qpm must be positive, got {qpm!r}.")
    self.steps_per_quarter = int(steps_per_quarter)
    self.qpm = float(qpm)
    self.vocab = list(vocab or [])
    self._pitches = [_parse_key(key) for key in self.vocab]
    self._ids = {key: self.num_special + i for i, key in enumerate(self.vocab)}
    if len(self._ids) != len(self.vocab):
      dupes = sorted(k for k, n in collections.Counter(self.vocab).items() if n > 1)
      raise ValueError(f"Chord vocabulary has duplicate keys: {dupes[:5]}.")

  @classmethod
  def build(cls, sequences: Iterable[base.NoteSequence],
            steps_per_quarter: int = 4, min_count: int = 1,
            qpm: float = base.DEFAULT_QPM) -> ChordTokenRepresentation:
    """Builds the vocabulary from the chords that sound in `sequences`.

    Args:
      sequences: the (training) sequences.
      steps_per_quarter: frames per quarter note.
      min_count: chords seen in fewer frames are left out (they encode as UNK).
      qpm: tempo of decoded sequences.

    Returns:
      the representation, vocabulary most frequent first, ties by key.
    """
    counts = collections.Counter()
    for ns in sequences:
      roll = pianoroll.sequence_to_roll(ns, steps_per_quarter)
      counts.update(chord_key(np.flatnonzero(frame)) for frame in roll if frame.any())
    vocab = sorted((k for k, n in counts.items() if n >= min_count),
                   key=lambda k: (-counts[k], k))
    return cls(steps_per_quarter, vocab, qpm)

  def settings(self) -> dict[str, Any]:
    return {"steps_per_quarter": self.steps_per_quarter,
            "vocab": list(self.vocab), "qpm": self.qpm}

  @property
  def vocab_size(self) -> int:
    return self.num_special + len(self.vocab)

  def chord_id(self, pitches: Iterable[int]) -> int:
    """Returns the token of a pitch set: REST when empty, UNK when unknown."""
    key = chord_key(pitches)
    if not key:
      return self.rest_id
    return self._ids.get(key, self.unk_id)

  def token_pitches(self, token: int) -> tuple[int, ...]:
    """Returns the pitches a token sounds; () for PAD, EOS, REST and UNK."""
    token = int(token)
    if not 0 <= token < self.vocab_size:
      raise ValueError(
          f"Token {token} is outside the vocabulary [0, {self.vocab_size}).")
    return self._pitches[token - self.num_special] if token >= self.num_special else ()

  def encode(self, ns: base.NoteSequence, add_eos: bool = True) -> np.ndarray:
    """Encodes a NoteSequence as one token per frame.

    Args:
      ns: the sequence.
      add_eos: whether to end the tokens with EOS.

    Returns:
      [num_frames (+ 1)] int32 token ids.
    """
    roll = pianoroll.sequence_to_roll(ns, self.steps_per_quarter)
    tokens = [self.chord_id(np.flatnonzero(frame)) for frame in roll]
    if add_eos:
      tokens.append(self.eos_id)
    return np.asarray(tokens, dtype=np.int32)

  def decode(self, x: np.ndarray) -> base.NoteSequence:
    """Decodes tokens into a NoteSequence; UNK and REST become silent frames.

    PAD is skipped and EOS ends the sequence. A pitch sounding in consecutive
    frames becomes one held note.

    Args:
      x: [length] integer token ids.

    Returns:
      a NoteSequence at `qpm`, velocity 80.
    """
    tokens = base.as_tokens(x)
    frames = []
    for token in tokens.tolist():
      if token == self.eos_id:
        break
      if token != self.pad_id:
        frames.append(self.token_pitches(token))
    roll = np.zeros((len(frames), NUM_PITCHES), dtype=np.uint8)
    for t, pitches in enumerate(frames):
      roll[t, list(pitches)] = 1
    return pianoroll.roll_to_sequence(roll, self.steps_per_quarter, qpm=self.qpm)
