"""What every task's train step shares: the state, the optimizer and the guarded update."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state
from ml_collections import config_dict

Array = jax.Array


class TrainState(train_state.TrainState):
  """flax's TrainState plus the number of updates skipped as non-finite."""
  skipped_updates: Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))


def create_learning_rate_fn(config: config_dict.ConfigDict) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine decay to the end factor."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=config.warmup_steps,
      decay_steps=max(config.num_train_steps, config.warmup_steps + 1),
      end_value=config.learning_rate * config.end_learning_rate_factor)


def create_optimizer(config: config_dict.ConfigDict) -> optax.GradientTransformation:
  """AdamW with global-norm gradient clipping on the shared schedule."""
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adamw(create_learning_rate_fn(config), b1=config.adam_b1,
                  b2=config.adam_b2, weight_decay=config.weight_decay))


def keep_if_finite(new_state: Any, old_state: Any, finite: Array) -> Any:
  """`new_state` if `finite`, else `old_state` with its step advanced.

  Both states carry `step` and `skipped_updates`; a skipped update counts
  one more skip. The step advances either way, so the next batch and key
  follow as usual.
  """
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                      new_state, old_state)
  return kept.replace(
      step=new_state.step,
      skipped_updates=old_state.skipped_updates + (~finite).astype(jnp.int32))


def apply_finite_update(state: TrainState, grads: Any, loss: Array,
                        grad_norm: Array) -> tuple[TrainState, Array]:
  """Applies `grads` unless the loss or any gradient is NaN or Inf.

  `grad_norm` (the global norm of `grads`, which the step computes anyway)
  is finite exactly when every gradient is, short of a norm that overflows
  float32, which counts as non-finite too.

  A non-finite update leaves the parameters and optimizer state as they
  were and counts one skipped update (`keep_if_finite`). Whether the run
  then stops is the loop's decision (`config.nonfinite`).

  Returns:
    (new state, finite: bool scalar).
  """
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  return keep_if_finite(state.apply_gradients(grads=grads), state, finite), finite
