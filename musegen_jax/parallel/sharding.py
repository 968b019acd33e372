"""The device mesh, the shardings of state and batches, and batch placement.

With `parallelism = "jit"` (the default) one program runs over a `Mesh` of
every device of every process, with two axes: `data` (pure data parallelism)
and `fsdp` (data parallelism whose parameters and optimizer state are also
split). The batch is split along its first axis over both; each parameter is
split over `fsdp` along the dimension its Flax logical axis names
(`nn.with_logical_partitioning`) map there through `config.logical_axis_rules`.
A single CPU and a pod differ only in the mesh's shape.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# The batch dimension is split over both mesh axes.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
PARALLELISM_MODES = ("jit", "pmap")


def mesh_shape(num_devices: int, fsdp: int) -> tuple[int, int]:
  """(data, fsdp) sizes of the mesh over `num_devices`; fails if fsdp does not divide."""
  if fsdp < 1 or num_devices % fsdp:
    raise ValueError(
        f"config.mesh.fsdp={fsdp} must be a positive divisor of the number of "
        f"devices ({num_devices}): the mesh is data ({num_devices} / fsdp) x "
        "fsdp.")
  return num_devices // fsdp, fsdp


def create_mesh(devices: Sequence[jax.Device] | None = None, *,
                fsdp: int = 1) -> Mesh:
  """A (data, fsdp) mesh over `devices` (default: all global devices)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(len(devices), fsdp)
  return Mesh(np.asarray(devices).reshape(shape), (DATA_AXIS, FSDP_AXIS))


def check_parallelism(parallelism: str, batch_size: int,
                      num_devices: int | None = None, *, fsdp: int = 1,
                      grad_accum_steps: int = 1) -> None:
  """Fails before compile when the mesh or the global batch does not fit the devices.

  Args:
    parallelism: "jit" or "pmap".
    batch_size: the global batch (per update).
    num_devices: all devices (default: `jax.device_count()`).
    fsdp: the mesh's fsdp size (jit only; pmap needs 1).
    grad_accum_steps: micro-batches per update; every micro-batch is split
      over all devices.
  """
  if parallelism not in PARALLELISM_MODES:
    raise ValueError(f"config.parallelism={parallelism!r}; allowed: "
                     f"{list(PARALLELISM_MODES)}")
  num_devices = jax.device_count() if num_devices is None else num_devices
  if grad_accum_steps < 1:
    raise ValueError(f"config.grad_accum_steps={grad_accum_steps} must be >= 1")
  if parallelism == "pmap":
    if fsdp != 1:
      raise ValueError(f"config.mesh.fsdp={fsdp} needs config.parallelism='jit'; "
                       "pmap replicates the state (use fsdp=1).")
    if jax.process_count() > 1:
      raise ValueError(
          f"config.parallelism='pmap' runs on one process; this run has "
          f"{jax.process_count()}. Use config.parallelism='jit'.")
  mesh_shape(num_devices, fsdp)
  multiple = grad_accum_steps * num_devices
  if batch_size <= 0 or batch_size % multiple:
    raise ValueError(
        f"config.batch_size={batch_size} must be a positive multiple of "
        f"grad_accum_steps ({grad_accum_steps}) x the number of devices "
        f"({num_devices}) = {multiple}, so every device gets the same share "
        f"of every micro-batch; try --config.batch_size="
        f"{max(1, batch_size // multiple + 1) * multiple}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) axis over the data and fsdp axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


# The mesh a jitted step is being traced over (`tracing_over`), or None.
_TRACE_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar(
    "musegen_jax_trace_mesh", default=None)


@contextlib.contextmanager
def tracing_over(mesh: Mesh):
  """Steps traced inside this block run over `mesh` (`shard_batch` pins to it)."""
  token = _TRACE_MESH.set(mesh)
  try:
    yield
  finally:
    _TRACE_MESH.reset(token)


def shard_batch(x: Any) -> Any:
  """`x`'s leading (batch) axis split over the data and fsdp axes of the mesh
  the step is traced over (`tracing_over`); `x` as it is otherwise.

  For values a step draws for the whole global batch (latents, noise, mixing
  weights): unpinned, XLA keeps such a draw whole on every device, and with
  it every computation that reads it (the GAN's generator forward, measured
  at 4x the per-chip FLOPs it should have on 64 TPU chips).
  """
  mesh = _TRACE_MESH.get()
  if mesh is None:
    return x
  size = mesh.shape[DATA_AXIS] * mesh.shape[FSDP_AXIS]
  if x.shape[0] % size:
    return x
  return jax.lax.with_sharding_constraint(x, batch_sharding(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def axis_rules(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
  """`config.logical_axis_rules` as flax wants them (JSON turns tuples into lists)."""
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"config.logical_axis_rules entry {rule!r} must be a "
                       "(logical name, mesh axis or None) pair")
    logical, axis = rule
    out.append((logical, tuple(axis) if isinstance(axis, list) else axis))
  return tuple(out)


def _mesh_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
               rules: tuple[tuple[str, Any], ...]) -> P:
  """The mesh PartitionSpec of one annotated array; a dimension that does not
  divide by its mesh axes' size stays whole (replicated)."""
  spec = list(nn.logical_to_mesh_axes(names, rules))
  for i, axes in enumerate(spec):
    if axes is None:
      continue
    axes_tuple = axes if isinstance(axes, tuple) else (axes,)
    unknown = [a for a in axes_tuple if a not in mesh.shape]
    if unknown:
      raise ValueError(f"config.logical_axis_rules map {names[i]!r} to mesh "
                       f"axis {unknown[0]!r}; the mesh has {list(mesh.shape)}")
    size = math.prod(mesh.shape[a] for a in axes_tuple)
    if shape[i] % size:
      logging.info("Dimension %s (%d) of an array named %s does not divide by "
                   "mesh axes %s (%d): kept whole.", i, shape[i], names, axes,
                   size)
      spec[i] = None
  return P(*spec)


def state_shardings(boxed_abstract_state: Any, mesh: Mesh,
                    rules: Sequence[Sequence[Any]]) -> Any:
  """NamedShardings of the (unboxed) state from its logical axis annotations.

  Args:
    boxed_abstract_state: `jax.eval_shape` of `task.init_state`, whose
      leaves may be `nn.Partitioned` boxes holding logical axis names.
    mesh: the (data, fsdp) mesh.
    rules: (logical name, mesh axis or None) pairs; names without a rule,
      and unannotated leaves, are replicated.

  Returns:
    A pytree of NamedSharding with the structure of the unboxed state.
  """
  rules = axis_rules(rules)

  def leaf_sharding(leaf):
    if isinstance(leaf, nn.Partitioned):
      return NamedSharding(mesh, _mesh_spec(leaf.names, leaf.value.shape, mesh,
                                            rules))
    return NamedSharding(mesh, P())

  return jax.tree.map(leaf_sharding, boxed_abstract_state,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def per_process_batch_size(global_batch_size: int) -> int:
  return global_batch_size // jax.process_count()


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's batch into global arrays sharded over data and fsdp."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)
