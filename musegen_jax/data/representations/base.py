"""Shared pieces of the representations: base classes and NoteSequence helpers.

A representation turns a `note_seq.NoteSequence` into a numpy array a model
reads (`encode`) and back (`decode`). It is built from JSON-able settings, so
an exported model can rebuild the exact encoder it was trained with:
`get_representation(rep.name, **rep.settings())` gives an equal one.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import note_seq
import numpy as np

NoteSequence = note_seq.NoteSequence

DEFAULT_QPM = 120.0
TICKS_PER_QUARTER = 220
DEFAULT_VELOCITY = 80


class Representation(abc.ABC):
  """An encoder/decoder pair between NoteSequences and arrays.

  Subclasses set `name` and implement `settings`, `encode` and `decode`.
  Two representations are equal when their names and settings are.
  """

  name: ClassVar[str] = ""

  @abc.abstractmethod
  def settings(self) -> dict[str, Any]:
    """Returns the JSON-able constructor arguments that rebuild this object."""

  @abc.abstractmethod
  def encode(self, ns: NoteSequence) -> np.ndarray:
    """NoteSequence -> the model's array."""

  @abc.abstractmethod
  def decode(self, x: np.ndarray) -> NoteSequence:
    """The model's array -> NoteSequence."""

  def decode_sample(self, x: np.ndarray) -> NoteSequence:
    """A model's sample -> NoteSequence: `decode`, plus whatever repair a
    representation applies to generated (not encoded) arrays."""
    return self.decode(x)

  def __eq__(self, other: object) -> bool:
    return (type(self) is type(other) and
            self.settings() == other.settings())  # pytype: disable=attribute-error

  def __hash__(self) -> int:
    return hash((self.name, repr(sorted(self.settings().items()))))

  def __repr__(self) -> str:
    args = ", ".join(
        f"{k}={v!r}" if k != "vocab" else f"vocab=<{len(v)} entries>"
        for k, v in self.settings().items())
    return f"{type(self).__name__}({args})"


class TokenRepresentation(Representation):
  """A representation whose encoding is a 1-D int32 token sequence.

  Id 0 is padding and id 1 ends a sequence in every token representation.
  """

  pad_id: ClassVar[int] = 0
  eos_id: ClassVar[int] = 1

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of token ids, specials included."""


def new_sequence(qpm: float = DEFAULT_QPM) -> NoteSequence:
  """Returns an empty NoteSequence with one tempo and the standard resolution."""
  ns = NoteSequence()
  ns.ticks_per_quarter = TICKS_PER_QUARTER
  ns.tempos.add(time=0.0, qpm=qpm)
  return ns


def time_to_step(time: float, steps_per_second: float) -> int:
  """Returns the nearest step to a time in seconds, halves rounding up.

  A tolerance of 1e-6 steps keeps float error from moving a time that lies
  exactly on a half step (0.15 s * 10/3 steps/s = 1.4999999999999998).
  """
  if time < 0:
    raise ValueError(f"Times must not be negative, got {time}.")
  return int(math.floor(time * steps_per_second + 0.5 + 1e-6))


def as_tokens(x: Any) -> np.ndarray:
  """Checks a token sequence and returns it as a 1-D int64 array.

  Args:
    x: [length] integer array-like.

  Returns:
    [length] int64 array.
  """
  tokens = np.asarray(x)
  if tokens.ndim != 1:
    raise ValueError(f"Expected a 1-D token sequence, got shape {tokens.shape}.")
  if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"Expected integer tokens, got dtype {tokens.dtype}.")
  return tokens.astype(np.int64)
