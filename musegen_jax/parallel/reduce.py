"""How a train step combines what each device computed, written once for jit and pmap.

A task's step reduces through a `Reducer` and never names a parallel mode.
Under jit (the default) the step sees the global batch and XLA inserts the
cross-device sums itself, so `Reducer` is the identity, except that values
drawn for the whole batch are pinned to the mesh (`device_share`). Under pmap
each device runs the step on its share, and `parallel.pmap.AxisReducer` sums,
averages and folds keys over the device axis.
"""

from __future__ import annotations

from typing import Any

import jax

from musegen_jax.parallel import sharding


class Reducer:
  """The reductions of a step that sees the global batch (jit): identities."""

  def num_devices(self) -> int:
    """How many devices share the step's batch explicitly (1 under jit)."""
    return 1

  def sum(self, tree: Any) -> Any:
    """`tree` summed over the devices."""
    return tree

  def mean(self, tree: Any) -> Any:
    """`tree` averaged over the devices."""
    return tree

  def device_key(self, rng: jax.Array) -> jax.Array:
    """`rng` made distinct per device where each device draws its own."""
    return rng

  def device_share(self, x: Any) -> Any:
    """This device's rows of `x`, a value drawn for the global batch
    (latents, mixing weights), so that the draw is the same whatever the
    device count. Under jit: all rows, split over the mesh's batch axes
    (`sharding.shard_batch`)."""
    return sharding.shard_batch(x)


# The reducer of the default (jit) step.
IDENTITY = Reducer()
