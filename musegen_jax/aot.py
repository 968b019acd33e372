r"""Compiles a config's programs for a TPU topology on this machine, ahead of time.

    python -m musegen_jax.aot --config=configs/gan.py --topology=v5e:2x2
    python -m musegen_jax.aot --config=configs/transformer.py --topology=v5p-128 \
        --config.mesh.fsdp=8
    python -m musegen_jax.aot --config=configs/lstm.py:smoke --topology=cpu:8

Tells, before a pod is booked, whether a job fits its chips. The programs are
the ones training runs: the task from `tasks.create_task`, the mesh and the
state's shardings as `train.py` builds them (fsdp, logical axis rules,
grad_accum_steps), the train step of `train.jit_steps`, the eval step and the
sampling loop of `config.sample`, each lowered with abstract inputs of the
real shapes and compiled for the topology's chips (no TPU is needed: libtpu,
`pip install -e ".[tpu]"`, compiles for chips that are not there). Models
pick their TPU kernels while these compile (`backend.compiling_for`).

One JSON line per program: per-chip argument, output, temporary and code
bytes, their total against the chip's HBM and `fits`, XLA's FLOPs per chip
and the analytic FLOPs of a train step, and the compile seconds. The exit
status is 1 when a program does not fit (the JSON lines still come first),
2 for a wrong flag or config value (one line: a batch that does not divide
over the chips, an unknown topology).

Topologies: GENERATION:SHAPE (v5e:2x2, v6e:2x4, v4:2x2x1, v5p:2x2x2, as
libtpu names them), a slice name GENERATION-N (v5e-64, v6e-256: N chips;
v4-32, v5p-128: N TensorCores, two per chip) or cpu:N (N forced CPU
devices, no libtpu needed; `fits` is then against this machine's memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

from absl import flags
from ml_collections import config_flags

from musegen_jax import cli
from musegen_jax import errors
from musegen_jax import runtime

# Before note_seq is imported: see runtime.setup_if_run_as_command.
runtime.setup_if_run_as_command(__name__)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config file, optionally with ':variant'.",
    lock_config=True)
flags.DEFINE_string("topology", None,
                    "Chips to compile for: v5e:2x2, v5e-64, v4-32, v5p:2x2x2, "
                    "v6e:2x4, cpu:8 (see --help).")
flags.DEFINE_list("programs", ["train", "eval", "sample"],
                  "Which programs: train, eval, sample, init (the train "
                  "state's creation).")
flags.DEFINE_integer("sample_batch", None,
                     "Samples drawn in parallel by the sample program "
                     "(default: config.sample.num_samples).")
flags.mark_flags_as_required(["config", "topology"])

GIB = 2**30
MIB = 2**20
# HBM per chip, GiB.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
# Generations whose slice names count TensorCores (two per chip); the others
# count chips.
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
# The ICI torus's rank.
_TORUS_RANK = {"v4": 3, "v5p": 3, "v5e": 2, "v6e": 2}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}
PROGRAMS = ("init", "train", "eval", "sample")
KNOWN_FORMS = ("v5e:2x2", "v6e:2x4", "v4:2x2x1", "v5p:2x2x2",
               "v5e-N / v6e-N (N chips)", "v4-N / v5p-N (N TensorCores)", "cpu:N")


@dataclasses.dataclass(frozen=True)
class Topology:
  """What to compile for: `platform` "tpu" or "cpu", the chip generation,
  the libtpu topology name (TPU) and the number of chips."""
  name: str
  platform: str
  generation: str
  libtpu_name: str | None
  chips: int

  @property
  def hbm_bytes(self) -> int | None:
    return HBM_GIB[self.generation] * GIB if self.platform == "tpu" else None


def _torus_shape(chips: int, rank: int) -> tuple[int, ...]:
  """The most cubic power-of-two torus of `chips` chips, dimensions ascending
  (16: 4x4 or 2x2x4; 32: 4x8 or 2x4x4)."""
  shape = [1] * rank
  left = chips
  while left > 1:
    shape[shape.index(min(shape))] *= 2
    left //= 2
  return tuple(sorted(shape))


def parse_topology(name: str) -> Topology:
  """`--topology` as a `Topology`; a user error lists the known forms."""
  def bad(why: str) -> errors.UserError:
    return errors.UserError(f"--topology={name!r}: {why}; known forms: "
                            f"{', '.join(KNOWN_FORMS)}")

  text = name.strip().lower()
  match = re.fullmatch(r"cpu:(\d+)", text)
  if match:
    count = int(match.group(1))
    if count < 1:
      raise bad("needs at least 1 CPU device")
    return Topology(name, "cpu", "cpu", None, count)
  match = re.fullmatch(r"([a-z0-9]+)(?::(\d+(?:x\d+)*)|-(\d+))", text)
  if not match:
    raise bad("not a topology name")
  generation = _ALIASES.get(match.group(1), match.group(1))
  if generation not in HBM_GIB:
    raise bad(f"unknown TPU generation {match.group(1)!r} (known: "
              f"{sorted(HBM_GIB)})")
  rank = _TORUS_RANK[generation]
  if match.group(2):
    shape = tuple(int(d) for d in match.group(2).split("x"))
    if len(shape) != rank or min(shape) < 1:
      raise bad(f"a {generation} shape has {rank} dimensions (e.g. "
                f"{'x'.join(['2'] * rank)})")
  else:
    units = int(match.group(3))
    per_chip = _CORES_PER_CHIP[generation]
    chips = units // per_chip
    if units % per_chip or chips < 1 or chips & (chips - 1):
      unit = "TensorCores (two per chip)" if per_chip == 2 else "chips"
      raise bad(f"{generation}-N counts {unit}; N/{per_chip} must be a power "
                "of two")
    shape = _torus_shape(chips, rank)
  chips = math.prod(shape)
  return Topology(name, "tpu", generation,
                  f"{generation}:{'x'.join(str(d) for d in shape)}", chips)


def topology_devices(topology: Topology) -> list[Any]:
  """The devices to compile for: abstract TPU chips from libtpu, or the
  first `chips` CPU devices of this process."""
  import jax  # pylint: disable=import-outside-toplevel
  if topology.platform == "cpu":
    devices = jax.devices("cpu")
    if len(devices) < topology.chips:
      raise errors.UserError(
          f"--topology={topology.name}: this process has {len(devices)} CPU "
          f"devices; start it with XLA_FLAGS=--xla_force_host_platform_device_count="
          f"{topology.chips} (the command sets it itself when JAX is not yet "
          "started).")
    return devices[:topology.chips]
  if importlib.util.find_spec("libtpu") is None:
    raise errors.UserError(
        f"--topology={topology.name} needs libtpu to compile for TPU chips on "
        "this machine: pip install -e \".[tpu]\" (or use --topology=cpu:N).")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  # Compiling opens no chip: several compiles (and a training job that holds
  # this host's chips) may load libtpu at once, which its lockfile forbids.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  # libtpu, loaded on a host without TPUs, warns on stderr that it finds no
  # TPU workers: true, and harmless for compiling. Shown only if it fails.
  with _native_stderr_captured() as captured:
    try:
      # v4 and v5p train with both TensorCores of a chip as one device
      # (megacore); libtpu's default for v4 is a device per TensorCore.
      devices = topologies.get_topology_desc(
          topology_name=topology.libtpu_name, platform="tpu",
          **({"chip_config_name": "megacore"}
             if _CORES_PER_CHIP[topology.generation] == 2 else {})).devices
    except Exception:
      sys.stderr.write(captured())
      raise
  if len(devices) != topology.chips:
    raise RuntimeError(f"libtpu gave {len(devices)} devices for "
                       f"{topology.libtpu_name}, {topology.chips} chips")
  return list(devices)


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[Callable[[], str]]:
  """Sends what C++ code writes to file descriptor 2 into a temporary file;
  yields a function that returns it."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as sink:
    os.dup2(sink.fileno(), 2)
    def text() -> str:
      sink.seek(0)
      return sink.read().decode("utf-8", "replace")
    try:
      yield text
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def _memory(compiled) -> dict[str, int]:
  stats = compiled.memory_analysis()
  if isinstance(stats, (list, tuple)):
    stats = stats[0]
  fields = {"argument": "argument_size_in_bytes", "output": "output_size_in_bytes",
            "alias": "alias_size_in_bytes", "temp": "temp_size_in_bytes",
            "code": "generated_code_size_in_bytes"}
  return {key: int(getattr(stats, attr, 0) or 0) for key, attr in fields.items()}


def _out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def _host_memory_bytes() -> int:
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def abstract(tree: Any, shardings: Any) -> Any:
  """Shapes and dtypes of `tree` with `shardings` attached (a pytree of the
  same structure, or one sharding for every leaf)."""
  import jax  # pylint: disable=import-outside-toplevel
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings), tree)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def build_programs(config, topology: Topology, devices: list[Any],
                   programs: list[str], sample_batch: int | None
                   ) -> list[tuple[str, Callable[[], Any], dict[str, Any]]]:
  """[(name, lower, facts)] for each program: `lower()` returns the lowered
  program, `facts` what the JSON line says about its inputs."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from musegen_jax import flops as flops_lib  # pylint: disable=import-outside-toplevel
  from musegen_jax import parallel  # pylint: disable=import-outside-toplevel
  from musegen_jax import tasks  # pylint: disable=import-outside-toplevel
  from musegen_jax import train  # pylint: disable=import-outside-toplevel
  from musegen_jax.tasks import state as state_lib  # pylint: disable=import-outside-toplevel

  representation = train.load_representation(config, train.resolve_data_dir(config))
  task = tasks.create_task(config, representation)
  mesh = train.create_mesh(config, devices)
  shardings = train.state_shardings(task, mesh)
  init = lambda rng: state_lib.unbox(task.init_state(rng))
  state = abstract(jax.eval_shape(init, jax.random.PRNGKey(0)), shardings)
  replicated = parallel.replicated(mesh)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
  batch_sharding = parallel.batch_sharding(mesh)
  param_shardings = task.eval_params(shardings)
  params = task.eval_params(state)
  vocab_size = getattr(representation, "vocab_size", None)
  base = {"mesh": dict(mesh.shape), "global_batch": config.batch_size,
          "per_chip_batch": config.batch_size // topology.chips}

  out = []
  if "init" in programs:
    options = (state_lib.initializer_compiler_options()
               if topology.platform == "cpu" else None)
    initializer = jax.jit(init, out_shardings=shardings, compiler_options=options)
    out.append(("init", functools.partial(initializer.lower, rng), dict(base)))
  if "train" in programs:
    train_step, _ = train.jit_steps(task, mesh, shardings)
    batch = abstract(task.batch_spec("train"), batch_sharding)
    flops, source = flops_lib.train_step_flops(config, vocab_size)
    out.append(("train", functools.partial(train_step.lower, state, batch, rng),
                dict(base, grad_accum_steps=config.grad_accum_steps,
                     analytic_flops=flops, analytic_flops_source=source)))
  if "eval" in programs:
    eval_step = jax.jit(task.eval_step, in_shardings=(param_shardings, batch_sharding))
    batch = abstract(task.batch_spec("eval"), batch_sharding)
    out.append(("eval", functools.partial(eval_step.lower, params, batch),
                dict(base)))
  if "sample" in programs:
    count = int(sample_batch or config.sample.num_samples)
    # Split over the chips when the samples divide over them, else whole on each.
    sharding = batch_sharding if count % topology.chips == 0 else replicated
    fn, inputs = task.sample_program(count)
    inputs = abstract(inputs, sharding)
    sampler = jax.jit(fn, in_shardings=(param_shardings, replicated)
                      + (sharding,) * len(inputs))
    out.append(("sample", functools.partial(sampler.lower, params, rng, *inputs),
                dict(base, global_batch=count,
                     per_chip_batch=(count // topology.chips
                                     if sharding is batch_sharding else count))))
  return out


def compile_programs(config, topology: Topology, programs: list[str],
                     sample_batch: int | None = None,
                     write: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Compiles `programs` of `config` for `topology`; one JSON row each.

  Raises:
    errors.UserError: the config does not suit the topology (a batch or an
      fsdp size that does not divide its chips, pmap).
  """
  from musegen_jax import backend  # pylint: disable=import-outside-toplevel
  from musegen_jax import flops as flops_lib  # pylint: disable=import-outside-toplevel
  from musegen_jax import train  # pylint: disable=import-outside-toplevel
  unknown = [p for p in programs if p not in PROGRAMS]
  if unknown or not programs:
    raise errors.UserError(f"--programs={','.join(programs)}: allowed: "
                           f"{', '.join(PROGRAMS)}")
  if config.parallelism == "pmap":
    raise errors.UserError(
        "config.parallelism='pmap' cannot be compiled ahead of time (pmap "
        "takes only attached devices); --config.parallelism=jit trains the "
        "same update and is what this command compiles.")
  train.check_config(config, num_devices=topology.chips)
  if sample_batch is not None and sample_batch < 1:
    raise errors.UserError(f"--sample_batch={sample_batch} must be >= 1")
  devices = topology_devices(topology)
  hbm = topology.hbm_bytes
  budget = hbm if hbm is not None else _host_memory_bytes() // topology.chips
  rows = []
  with backend.compiling_for(topology.platform):
    for name, lower, facts in build_programs(config, topology, devices, programs,
                                             sample_batch):
      row: dict[str, Any] = {"program": name, "topology": topology.name,
                             "libtpu_topology": topology.libtpu_name,
                             "platform": topology.platform,
                             "chips": topology.chips, **facts}
      started = time.perf_counter()
      try:
        compiled = lower().compile()
      except Exception as e:  # pylint: disable=broad-except
        if not _out_of_memory(e):
          raise
        row.update(compile_s=round(time.perf_counter() - started, 2), fits=False,
                   error=str(e).strip().splitlines()[0][:500])
        rows.append(row)
        write(json.dumps(row))
        continue
      memory = _memory(compiled)
      # Donated arguments are aliased by outputs: counted once.
      total = (memory["argument"] + memory["output"] - memory["alias"]
               + memory["temp"] + memory["code"])
      flops = flops_lib.xla_flops(compiled)
      row.update({f"{k}_mib": round(v / MIB, 2) for k, v in memory.items()})
      row.update(total_mib=round(total / MIB, 2),
                 memory_per_chip_gib=round(budget / GIB, 2),
                 memory_source=("HBM" if hbm is not None else
                                "this machine's memory / devices"),
                 fits=total <= budget,
                 xla_flops_per_chip=flops,
                 compile_s=round(time.perf_counter() - started, 2))
      rows.append(row)
      write(json.dumps(row))
  return rows


def use_host_cpu(topology: Topology) -> None:
  """Runs JAX itself on this host's CPU (its own accelerators, if any, are
  not what is compiled for), with `topology.chips` CPU devices for cpu:N.

  JAX reads both settings when it starts its backends (at its first use of
  a device), so the command calls this first; once they are started, JAX
  refuses a new CPU device count and ignores the platform, and the devices
  stay as they are.
  """
  import jax  # pylint: disable=import-outside-toplevel
  forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
  if topology.platform == "cpu" and not forced:
    try:
      jax.config.update("jax_num_cpu_devices", topology.chips)
    except RuntimeError:  # The backends are started.
      return
  jax.config.update("jax_platforms", "cpu")


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses extra arguments.
  topology = parse_topology(FLAGS.topology)
  use_host_cpu(topology)
  rows = compile_programs(FLAGS.config, topology, FLAGS.programs,
                          FLAGS.sample_batch)
  too_big = [r for r in rows if not r["fits"]]
  for row in too_big:
    if "error" in row:  # The compiler's own figures.
      why = row["error"].rstrip(".")
    else:
      why = (f"{row['total_mib'] / 1024:.2f} GiB per chip needed, "
             f"{row['memory_per_chip_gib']} GiB per chip "
             f"({row['memory_source']})")
    sys.stderr.write(
        f"error: the {row['program']} program does not fit {topology.name} "
        f"(per-chip batch {row['per_chip_batch']}): {why}. Lower "
        "config.batch_size, raise config.grad_accum_steps or config.mesh.fsdp, "
        "or take more chips.\n")
  if too_big:
    sys.exit(1)


def run() -> None:
  runtime.setup()
  cli.run(main)


if __name__ == "__main__":
  run()
