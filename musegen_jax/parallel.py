"""Device mesh, shardings and host-to-global batch placement.

With `parallelism = "jit"` one program runs over a `Mesh` of every device of
every process; the batch is split along its first axis over the `data` axis
and the train state is replicated. A single CPU and a pod differ only in the
mesh's shape.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
PARALLELISM_MODES = ("jit",)


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D data-parallel mesh over all (global) devices."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_parallelism(parallelism: str, batch_size: int,
                      num_devices: int | None = None) -> None:
  """Fails before compile when the global batch cannot be split over devices."""
  if parallelism not in PARALLELISM_MODES:
    raise ValueError(f"config.parallelism={parallelism!r}; allowed: "
                     f"{list(PARALLELISM_MODES)}")
  num_devices = jax.device_count() if num_devices is None else num_devices
  if batch_size <= 0 or batch_size % num_devices:
    raise ValueError(
        f"config.batch_size={batch_size} must be a positive multiple of the "
        f"number of devices ({num_devices}), so every device gets the same "
        f"share; try --config.batch_size={max(1, batch_size // num_devices + 1) * num_devices}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) axis over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def per_process_batch_size(global_batch_size: int) -> int:
  return global_batch_size // jax.process_count()


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's batch into global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)
