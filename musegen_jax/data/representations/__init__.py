"""Representations: NoteSequence <-> model arrays, one encoder/decoder per file.

`get_representation(name, **settings)` builds one by name; with the settings a
representation reports (`rep.settings()`) it rebuilds an equal one.
"""

from __future__ import annotations

from typing import Any

from musegen_jax.data.representations.audio import AudioRepresentation
from musegen_jax.data.representations.base import Representation
from musegen_jax.data.representations.base import TokenRepresentation
from musegen_jax.data.representations.chord_token import ChordTokenRepresentation
from musegen_jax.data.representations.miditok_tokens import MidiTokRepresentation
from musegen_jax.data.representations.performance import PerformanceRepresentation
from musegen_jax.data.representations.pianoroll import PianorollRepresentation

__all__ = ["AudioRepresentation", "ChordTokenRepresentation",
           "MidiTokRepresentation", "PerformanceRepresentation",
           "PianorollRepresentation", "Representation", "TokenRepresentation",
           "REPRESENTATIONS", "get_representation"]

REPRESENTATIONS: dict[str, type[Representation]] = {
    cls.name: cls for cls in (PerformanceRepresentation, PianorollRepresentation,
                              ChordTokenRepresentation, AudioRepresentation,
                              MidiTokRepresentation)
}


def get_representation(name: str, **settings: Any) -> Representation:
  """Builds a representation by name.

  Args:
    name: one of REPRESENTATIONS: "performance", "pianoroll", "chord_token",
      "audio", "miditok".
    **settings: constructor arguments, e.g. those `settings()` returned.

  Returns:
    the representation.
  """
  if name not in REPRESENTATIONS:
    raise ValueError(
        f"Unknown representation {name!r}; known: {sorted(REPRESENTATIONS)}.")
  return REPRESENTATIONS[name](**settings)
