"""What every task's train step shares: the state and the guarded update."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from flax.training import train_state

Array = jax.Array


class TrainState(train_state.TrainState):
  """flax's TrainState plus the number of updates skipped as non-finite."""
  skipped_updates: Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))


def apply_finite_update(state: TrainState, grads: Any, loss: Array,
                        grad_norm: Array) -> tuple[TrainState, Array]:
  """Applies `grads` unless the loss or any gradient is NaN or Inf.

  `grad_norm` (the global norm of `grads`, which the step computes anyway)
  is finite exactly when every gradient is, short of a norm that overflows
  float32, which counts as non-finite too.

  A non-finite update leaves the parameters and optimizer state as they
  were, counts one skipped update and still advances the step (the next
  batch and key follow as usual). Whether the run then stops is the loop's
  decision (`config.nonfinite`).

  Returns:
    (new state, finite: bool scalar).
  """
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updated = state.apply_gradients(grads=grads)
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  return kept.replace(
      step=updated.step,
      skipped_updates=state.skipped_updates + (~finite).astype(jnp.int32)), finite
