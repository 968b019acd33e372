"""Joining several processes (hosts, or processes on one machine) into one run.

`initialize_distributed`, which `main` calls before anything else touches
JAX, joins them with an explicit coordinator, process count and id, on a
cluster that JAX detects by itself (SLURM, Cloud TPU), or not at all for one
process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading

import jax
from absl import logging

# How `initialize_distributed` decides to join several processes.
DISTRIBUTED_MODES = ("auto", "on", "off")


def detect_cluster() -> tuple[str, int] | None:
  """The multi-process cluster this process runs in, from its environment.

  Mirrors what `jax.distributed.initialize()` detects without arguments
  (JAX's cluster detection): a SLURM job step (`srun`), or the TPU worker list that
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
