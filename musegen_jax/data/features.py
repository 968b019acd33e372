"""Symbolic features that compare pieces: pitch classes and rhythm.

What a style transfer should keep of its source, measured with no model:
the duration-weighted pitch-class histogram (12 bins: the harmony and key)
and the histogram of note onsets over the 16 sixteenth-note positions of a
4/4 bar (the rhythm), each compared by cosine similarity (1: the same
profile; 0: nothing in common).
"""

from __future__ import annotations

import numpy as np

from musegen_jax.data.representations import base

POSITIONS_PER_BAR = 16


def pitch_class_histogram(ns) -> np.ndarray:
  """[12] seconds each pitch class sounds (drums left out)."""
  hist = np.zeros((12,), np.float64)
  for note in ns.notes:
    if not note.is_drum:
      hist[note.pitch % 12] += max(note.end_time - note.start_time, 0.0)
  return hist


def onset_histogram(ns) -> np.ndarray:
  """[16] note onsets per sixteenth-note position of a 4/4 bar, at the
  piece's first tempo (120 qpm without one)."""
  qpm = ns.tempos[0].qpm if ns.tempos else base.DEFAULT_QPM
  sixteenth = 60.0 / qpm / 4.0
  hist = np.zeros((POSITIONS_PER_BAR,), np.float64)
  for note in ns.notes:
    if not note.is_drum:
      hist[int(round(note.start_time / sixteenth)) % POSITIONS_PER_BAR] += 1.0
  return hist


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  """Cosine similarity of two histograms; 0 when either is empty."""
  norm = float(np.linalg.norm(a) * np.linalg.norm(b))
  return float(np.dot(a, b) / norm) if norm > 0 else 0.0


def similarity(a, b) -> dict[str, float]:
  """{"pitch_class", "rhythm"} cosine similarities of two NoteSequences."""
  return {"pitch_class": cosine(pitch_class_histogram(a), pitch_class_histogram(b)),
          "rhythm": cosine(onset_histogram(a), onset_histogram(b))}
