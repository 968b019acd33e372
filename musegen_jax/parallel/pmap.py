"""pmap: the train step replicated on every local device, each with its share.

The state is replicated on the local devices (`replicate`), batches are
[devices, per_device, ...] (`device_batch`), and the task's step reduces over
the `AXIS` device axis through `AxisReducer`. One process only; jit over a
mesh (`parallel.sharding`) is the default and scales to many hosts.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from musegen_jax.parallel import sharding
from musegen_jax.parallel.reduce import Reducer

# The name of the pmapped step's device axis.
AXIS = "batch"


class AxisReducer(Reducer):
  """Sums, averages and per-device keys over the named pmap axis."""

  def __init__(self, axis: str = AXIS):
    self.axis = axis

  def num_devices(self) -> int:
    return jax.lax.axis_size(self.axis)

  def sum(self, tree: Any) -> Any:
    return jax.lax.psum(tree, self.axis)

  def mean(self, tree: Any) -> Any:
    return jax.lax.pmean(tree, self.axis)

  def device_key(self, rng: jax.Array) -> jax.Array:
    return jax.random.fold_in(rng, jax.lax.axis_index(self.axis))

  def device_share(self, x: Any) -> Any:
    n = x.shape[0] // jax.lax.axis_size(self.axis)
    return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(self.axis) * n, n)


def train_step(task):
  """The task's train step pmapped over the local devices.

  Takes the state replicated (`replicate`), batches as
  [devices, per_device, ...] (`device_batch`) and one rng; returns the
  replicated state and metrics (equal on every device).
  """
  reducer = AxisReducer(AXIS)
  step = lambda state, batch, rng: task.train_step(state, batch, rng,
                                                   reducer=reducer)
  return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=0)


def device_batch(local_batch: Any, num_devices: int | None = None) -> Any:
  """[batch, ...] host arrays as [devices, batch / devices, ...] for pmap."""
  num_devices = jax.local_device_count() if num_devices is None else num_devices
  return jax.tree.map(
      lambda x: np.asarray(x).reshape((num_devices, -1) + np.shape(x)[1:]),
      local_batch)


def replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
  """Copies `tree` to every local device, stacked on a new leading axis (pmap)."""
  devices = jax.local_devices() if devices is None else list(devices)
  placement = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))
  return jax.tree.map(
      lambda x: jax.device_put(
          np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), placement),
      jax.device_get(tree))


def unreplicate(tree: Any, mesh: Mesh | None = None) -> Any:
  """The first device's copy of a pmap-replicated tree (replicated on `mesh`)."""
  first = jax.tree.map(lambda x: x[0], tree)
  return first if mesh is None else jax.device_put(first, sharding.replicated(mesh))
