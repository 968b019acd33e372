"""Serial frames: an 88-key piano roll as one token sequence.

A frame is the token list of its active keys in ascending order, then an
end-of-frame token; a piece is START followed by its frames' lists.
Vocabulary (`SERIAL_VOCAB_SIZE` = 90):

    0..87  key k (column k of the roll; MIDI pitch 21 + k for JSB Chorales)
    88     EOF, end of frame (a frame of no keys is EOF alone)
    89     START; also padding after a piece, and the blank that input
           dropout puts in place of a token. Never a target.

`roll_to_tokens` and `tokens_to_roll` convert one piece, `pad_tokens` stacks
pieces, and `allowed_next` is the grammar: which tokens keep a frame a set of
ascending keys (what a model's logits are masked to before the softmax).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from musegen_jax.data import jsb_quarter

Array = jax.Array
NUM_KEYS = jsb_quarter.NUM_KEYS
EOF_ID = NUM_KEYS
START_ID = NUM_KEYS + 1
PAD_ID = START_ID
SERIAL_VOCAB_SIZE = NUM_KEYS + 2


def roll_to_tokens(roll: np.ndarray) -> np.ndarray:
  """One piece's [frames, 88] roll -> its serial tokens, START first.

  Returns:
    [1 + sum over frames of (keys + 1)] int32: START, then per frame its
    active keys ascending and EOF.
  """
  tokens = [START_ID]
  for frame in np.asarray(roll):
    tokens.extend(np.flatnonzero(frame).tolist())
    tokens.append(EOF_ID)
  return np.asarray(tokens, np.int32)


def tokens_to_roll(tokens: np.ndarray, num_frames: int | None = None) -> np.ndarray:
  """Serial tokens -> [frames, 88] uint8 roll (the inverse of `roll_to_tokens`).

  START and padding are skipped; keys after the last EOF (an unfinished
  frame) are dropped.

  Args:
    tokens: [length] int token ids.
    num_frames: cut or zero-pad the roll to this many frames (default: one
      per EOF).

  Raises:
    ValueError: an unknown id, or a key not above the previous key of its frame.
  """
  frames, frame = [], []
  for token in np.asarray(tokens).tolist():
    if 0 <= token < NUM_KEYS:
      if frame and token <= frame[-1]:
        raise ValueError(f"Key {token} follows key {frame[-1]} in one frame: the "
                         "keys of a frame must be ascending.")
      frame.append(token)
    elif token == EOF_ID:
      frames.append(frame)
      frame = []
    elif token != START_ID:
      raise ValueError(f"Token {token} is outside the serial vocabulary "
                       f"0..{SERIAL_VOCAB_SIZE - 1}.")
  num_frames = len(frames) if num_frames is None else num_frames
  roll = np.zeros((num_frames, NUM_KEYS), np.uint8)
  for t, keys in enumerate(frames[:num_frames]):
    roll[t, keys] = 1
  return roll


def pad_tokens(pieces: list[np.ndarray], length: int) -> np.ndarray:
  """Stacks token sequences padded with PAD to `length`: [pieces, length] int32.

  Raises:
    ValueError: a piece longer than `length`, naming config.data.max_tokens.
  """
  longest = max((len(p) for p in pieces), default=0)
  if longest > length:
    raise ValueError(f"A piece has {longest} serial tokens, more than "
                     f"config.data.max_tokens={length}; raise it to at least "
                     f"{longest}.")
  out = np.full((len(pieces), length), PAD_ID, np.int32)
  for i, piece in enumerate(pieces):
    out[i, :len(piece)] = piece
  return out


def allowed_next(prev: Array) -> Array:
  """Which tokens may follow `prev` in the serial encoding.

  Args:
    prev: [...] int token ids.

  Returns:
    [..., SERIAL_VOCAB_SIZE] bool: after key k the keys above k and EOF;
    after START, EOF or padding every key and EOF. START is never allowed.
  """
  ids = jnp.arange(SERIAL_VOCAB_SIZE)
  lowest = jnp.where(prev < NUM_KEYS, prev + 1, 0)[..., None]
  return ((ids < NUM_KEYS) & (ids >= lowest)) | (ids == EOF_ID)
