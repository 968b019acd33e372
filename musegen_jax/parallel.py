"""Multi-host init, device mesh, shardings and host-to-global batch placement.

With `parallelism = "jit"` one program runs over a `Mesh` of every device of
every process, with two axes: `data` (pure data parallelism) and `fsdp`
(data parallelism whose parameters and optimizer state are also split). The
batch is split along its first axis over both; each parameter is split over
`fsdp` along the dimension its Flax logical axis names
(`nn.with_logical_partitioning`) map there through `config.logical_axis_rules`.
A single CPU and a pod differ only in the mesh's shape.

With `parallelism = "pmap"` the state is replicated on every local device,
batches are [devices, per_device, ...] and the step averages gradients over
the `batch` axis name (`PMAP_AXIS`).

Several processes (hosts, or several processes on one machine) join through
`initialize_distributed`, which `main` calls before anything else touches
JAX: with an explicit coordinator, process count and id, on a cluster that
JAX detects by itself (SLURM, Cloud TPU), or not at all for one process.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import socket
import sys
import threading
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
# The axis name of the pmapped step (gradients are averaged over it).
PMAP_AXIS = "batch"
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


def device_batch(local_batch: Any, num_devices: int | None = None) -> Any:
  """[batch, ...] host arrays as [devices, batch / devices, ...] for pmap."""
  num_devices = jax.local_device_count() if num_devices is None else num_devices
  return jax.tree.map(
      lambda x: np.asarray(x).reshape((num_devices, -1) + np.shape(x)[1:]),
      local_batch)


def replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
  """Copies `tree` to every local device, stacked on a new leading axis (pmap)."""
  devices = jax.local_devices() if devices is None else list(devices)
  sharding = NamedSharding(Mesh(np.asarray(devices), (PMAP_AXIS,)), P(PMAP_AXIS))
  return jax.tree.map(
      lambda x: jax.device_put(
          np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), sharding),
      jax.device_get(tree))


def unreplicate(tree: Any, mesh: Mesh | None = None) -> Any:
  """The first device's copy of a pmap-replicated tree (replicated on `mesh`)."""
  first = jax.tree.map(lambda x: x[0], tree)
  return first if mesh is None else jax.device_put(first, replicated(mesh))


# How `initialize_distributed` decides to join several processes.
DISTRIBUTED_MODES = ("auto", "on", "off")


def detect_cluster() -> tuple[str, int] | None:
  """The multi-process cluster this process runs in, from its environment.

  Mirrors what `jax.distributed.initialize()` detects without arguments
  (jax/_src/clusters): a SLURM job step (`srun`), or the TPU worker list that
  GKE and queued resources set. A GCE TPU VM pod is known to JAX only through
  its metadata server; `launch/tpu_pod.sh` passes `--distributed=on` there.

  Returns:
    (description, number of processes), or None outside a known cluster.
  """
  env = os.environ
  slurm_vars = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                "SLURM_PROCID", "SLURM_LOCALID")
  if all(var in env for var in slurm_vars):
    return "SLURM_NTASKS", _env_int("SLURM_NTASKS")
  workers = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
  slices = _env_int("MEGASCALE_NUM_SLICES") if env.get("MEGASCALE_NUM_SLICES") else 1
  if workers:
    return ("TPU_WORKER_HOSTNAMES x MEGASCALE_NUM_SLICES",
            len(workers.split(",")) * slices)
  if slices > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "MEGASCALE_NUM_SLICES", slices
  return None


def _env_int(name: str) -> int:
  value = os.environ[name]
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"${name}={value!r} is not an integer") from None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, *,
                           mode: str = "auto",
                           timeout_s: int = 300) -> bool:
  """Joins this process to a multi-process JAX run, when there is one.

  Must run before anything else uses JAX (creates arrays or lists devices).

  - All of `coordinator_address`, `num_processes` and `process_id` given:
    `jax.distributed.initialize` with them (and gloo collectives, so CPU
    devices of several processes form one mesh). `num_processes=1` is a
    single process and joins nothing.
  - None given: on a cluster that `detect_cluster` finds with more than one
    process, or with `mode="on"`, `jax.distributed.initialize()` lets JAX
    find coordinator, count and id; otherwise a single process.
  - `mode="off"`: a single process whatever the environment says.

  Args:
    coordinator_address: "host:port" of process 0, which listens there.
    num_processes: how many processes take part.
    process_id: this process's index, in [0, num_processes).
    mode: "auto", "on" or "off" (see above).
    timeout_s: how long to wait for the coordinator and every process to
      join; then this process exits with an error naming the coordinator.

  Returns:
    Whether `jax.distributed` was initialized.

  Raises:
    ValueError: only some of the three settings given, or values that do
      not fit together or with the cluster found in the environment.
  """
  if mode not in DISTRIBUTED_MODES:
    raise ValueError(f"distributed mode {mode!r}; allowed: {list(DISTRIBUTED_MODES)}")
  settings = {"coordinator_address": coordinator_address,
              "num_processes": num_processes, "process_id": process_id}
  given = {k: v for k, v in settings.items() if v is not None and v != ""}
  if mode == "off" or (not given and mode == "auto" and
                       (detect_cluster() or ("", 1))[1] <= 1):
    if given:
      logging.warning("--distributed=off: ignoring %s", given)
    return False
  if given and len(given) < len(settings):
    missing = [k for k in settings if k not in given]
    raise ValueError(
        "Multi-process settings are incomplete: "
        + ", ".join(f"--{k}={v}" for k, v in given.items()) + " given, but "
        + " and ".join(f"--{k} (or ${_ENV_VARS[k]})" for k in missing)
        + " missing. Give all three, or none to run one process (or let "
        "JAX detect a SLURM/TPU cluster).")
  if given:
    _check_settings(coordinator_address, num_processes, process_id, timeout_s)
    if num_processes == 1:
      return False
    found = detect_cluster()
    if found is not None and found[1] != num_processes:
      raise ValueError(
          f"--num_processes={num_processes} disagrees with the {found[1]} "
          f"processes that ${found[0]} gives; start as many processes as "
          "--num_processes says (or drop the flags and let JAX detect them).")
  # Gloo is jax's default for CPU collectives today; set it so that an
  # older default (none: every process alone) cannot split the mesh.
  if getattr(jax.config, "jax_cpu_collectives_implementation", "") is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  where = coordinator_address or "the auto-detected coordinator"
  with _exit_on_timeout(timeout_s, coordinator_address, num_processes, process_id):
    try:
      if given:
        # "deactivate": JAX's cluster detection would otherwise also set
        # local_device_ids (one device per SLURM task); we want all devices.
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id,
            cluster_detection_method="deactivate",
            initialization_timeout=timeout_s + _JAX_TIMEOUT_MARGIN_S)
      else:
        jax.distributed.initialize(
            initialization_timeout=timeout_s + _JAX_TIMEOUT_MARGIN_S)
    except (RuntimeError, ValueError) as e:
      raise RuntimeError(f"jax.distributed.initialize via {where} failed: {e}") from e
  if num_processes is not None and jax.process_count() != num_processes:
    raise RuntimeError(f"--num_processes={num_processes}, but "
                       f"{jax.process_count()} processes joined via {where}")
  return True


def describe_processes() -> str:
  """One line: this process's index and its local and global device counts."""
  return (f"process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} local / {jax.device_count()} global "
          f"{jax.default_backend()} device(s)")


_ENV_VARS = {"coordinator_address": "MUSEGEN_COORDINATOR_ADDRESS",
             "num_processes": "MUSEGEN_NUM_PROCESSES",
             "process_id": "MUSEGEN_PROCESS_ID"}
# jax's own deadline aborts the process (C++ CHECK, no Python exception, no
# address in the message); ours fires first and says what was wrong.
_JAX_TIMEOUT_MARGIN_S = 5


def _check_settings(coordinator_address: str, num_processes: int,
                    process_id: int, timeout_s: int) -> None:
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"--coordinator_address={coordinator_address!r} must be "
                     "HOST:PORT, e.g. 10.0.0.1:1234")
  if num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be >= 1")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in [0, "
                     f"{num_processes}) for --num_processes={num_processes}")
  if timeout_s <= 0:
    raise ValueError(f"distributed timeout_s={timeout_s} must be > 0")


@contextlib.contextmanager
def _exit_on_timeout(timeout_s: int, address: str | None,
                     num_processes: int | None, process_id: int | None):
  """Exits the process with a clear message if the block outlasts `timeout_s`.

  jax.distributed's connect blocks in C++ and, at its deadline, aborts the
  process with "DEADLINE_EXCEEDED" and no address; a watchdog thread can
  still say which coordinator did not answer, and exit with status 1.
  """

  def fire() -> None:
    if address is None:
      reason = "the auto-detected coordinator did not answer"
    elif process_id == 0:
      reason = (f"this process (0) listens on {address}, but not all "
                f"{num_processes} processes joined")
    elif _listening(address):
      reason = (f"the coordinator {address} answers, but not all "
                f"{num_processes} processes joined (is --num_processes the "
                "same for all, and is every process id started once?)")
    else:
      reason = (f"no coordinator answers at {address} (is process 0 running, "
                "and is the address reachable from this host?)")
    sys.stderr.write(f"FATAL multi-process init timed out after {timeout_s} s: "
                     f"{reason}.\n")
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access

  timer = threading.Timer(timeout_s, fire)
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()


def _listening(address: str) -> bool:
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
      return True
  except OSError:
    return False
