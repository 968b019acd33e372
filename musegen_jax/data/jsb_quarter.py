"""The bundled quarter-note JSB Chorales as 88-key multi-hot piano rolls.

This is the polyphonic-music benchmark file (Boulanger-Lewandowski et al.,
2012): 229/76/77 chorales, one frame per quarter note, every piece transposed
to a C tonic (see `jsb_chorales/README.md`). A roll's column k is MIDI pitch
`MIN_PITCH + k`, the piano's 88 keys.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json

import numpy as np

MIN_PITCH = 21  # A0, the piano's lowest key.
NUM_KEYS = 88  # A0..C8 (MIDI 21-108).
SPLITS = ("train", "valid", "test")
_DATA_FILE = "jsb-chorales-quarter.json.gz"


@functools.lru_cache(maxsize=1)
def load_frames() -> dict[str, list[list[list[int]]]]:
  """Reads the bundled file: {split: pieces}, a piece a list of pitch sets.

  Cached: do not mutate.
  """
  resource = importlib.resources.files(__package__) / "jsb_chorales" / _DATA_FILE
  with resource.open("rb") as f:
    data = json.loads(gzip.decompress(f.read()))
  return {split: [[[int(p) for p in frame] for frame in piece]
                  for piece in data[split]] for split in SPLITS}


def frames_to_roll(frames: list[list[int]]) -> np.ndarray:
  """One piece's pitch sets -> [num_frames, NUM_KEYS] uint8 multi-hot roll.

  Raises:
    ValueError: a pitch outside the 88 keys.
  """
  roll = np.zeros((len(frames), NUM_KEYS), np.uint8)
  for t, frame in enumerate(frames):
    for pitch in frame:
      if not MIN_PITCH <= pitch < MIN_PITCH + NUM_KEYS:
        raise ValueError(f"{_DATA_FILE}: frame {t} has pitch {pitch}, outside "
                         f"the 88 keys {MIN_PITCH}-{MIN_PITCH + NUM_KEYS - 1}")
      roll[t, pitch - MIN_PITCH] = 1
  return roll


def load_rolls(split: str) -> list[np.ndarray]:
  """The pieces of `split` as [num_frames, 88] uint8 rolls, in file order."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; allowed: {SPLITS}")
  return [frames_to_roll(piece) for piece in load_frames()[split]]


def pad_rolls(rolls: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
  """Stacks rolls zero-padded to `length` frames.

  Returns:
    (rolls [num_pieces, length, 88] uint8, mask [num_pieces, length] uint8:
    1 on the frames of a piece).

  Raises:
    ValueError: a piece longer than `length`.
  """
  longest = max((len(r) for r in rolls), default=0)
  if longest > length:
    raise ValueError(f"A piece has {longest} frames, more than the {length} "
                     "frames to pad to (config.data.max_frames).")
  out = np.zeros((len(rolls), length, NUM_KEYS), np.uint8)
  mask = np.zeros((len(rolls), length), np.uint8)
  for i, roll in enumerate(rolls):
    out[i, :len(roll)] = roll
    mask[i, :len(roll)] = 1
  return out, mask
