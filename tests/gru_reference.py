"""The GRU as torch.nn.GRU's equations, one step at a time in NumPy: the
reference that tests/test_kernels.py and tests/test_gru.py compare with."""

from __future__ import annotations

import numpy as np

H = 5  # Hidden size of the reference weights.


def reference_gru(x, w_ih, b_ih, w_hh, b_hh, h0):
  """(outputs [time, batch, H], final state) of one direction."""
  sigmoid = lambda a: 1.0 / (1.0 + np.exp(-a))
  h, outputs = h0, []
  for x_t in x:
    xp, hp = x_t @ w_ih + b_ih, h @ w_hh + b_hh
    r = sigmoid(xp[:, :H] + hp[:, :H])
    z = sigmoid(xp[:, H:2 * H] + hp[:, H:2 * H])
    n = np.tanh(xp[:, 2 * H:] + r * hp[:, 2 * H:])
    h = (1 - z) * n + z * h
    outputs.append(h)
  return np.stack(outputs), h


def gru_weights(rng, features, directions=1):
  """Random weights in the layout of `gru.GRULayer`'s parameters."""
  return {"w_ih": rng.normal(size=(directions, features, 3 * H)) * 0.5,
          "b_ih": rng.normal(size=(directions, 3 * H)) * 0.1,
          "w_hh": rng.normal(size=(directions, H, 3 * H)) * 0.5,
          "b_hh": rng.normal(size=(directions, 3 * H)) * 0.1}
