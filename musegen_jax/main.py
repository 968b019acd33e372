r"""Trains a config in a workdir; running the same command again resumes.

    python -m musegen_jax.main --config=configs/lstm.py --workdir=runs/lstm
    python -m musegen_jax.main --config=configs/lstm.py:smoke --workdir=runs/smoke \
        --config.batch_size=64

Several processes (hosts of a pod, nodes of a SLURM job, or processes on one
machine) run the same command with a coordinator, the process count and each
its own id, as flags or as $MUSEGEN_COORDINATOR_ADDRESS, $MUSEGEN_NUM_PROCESSES
and $MUSEGEN_PROCESS_ID; under `srun` or on a TPU pod JAX finds them itself.
`launch/` has scripts for each case.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import flags
from ml_collections import config_flags

from musegen_jax import cli
from musegen_jax import runtime

# Before note_seq is imported: see runtime.setup_if_run_as_command.
runtime.setup_if_run_as_command(__name__)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config file, optionally with ':variant'.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume a workdir even though the task, model, data dir or "
                  "representation changed since its last run.")
flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-process: HOST:PORT where process 0 listens; default "
    "$MUSEGEN_COORDINATOR_ADDRESS.")
flags.DEFINE_integer("num_processes", None,
                     "Multi-process: number of processes; default "
                     "$MUSEGEN_NUM_PROCESSES.")
flags.DEFINE_integer("process_id", None,
                     "Multi-process: this process's id in [0, num_processes); "
                     "default $MUSEGEN_PROCESS_ID.")
flags.DEFINE_enum(
    "distributed", None, ["auto", "on", "off"],
    "Without the three flags above: 'auto' joins the processes of a SLURM "
    "step or TPU pod that JAX detects from the environment, 'on' always "
    "calls jax.distributed.initialize() (GCE TPU VM pods), 'off' runs one "
    "process. Default $MUSEGEN_DISTRIBUTED or 'auto'.")
flags.DEFINE_integer("distributed_timeout_s", 300,
                     "Seconds to wait for the coordinator and all processes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses extra arguments.
  import jax  # pylint: disable=import-outside-toplevel
  from musegen_jax import parallel  # After flag parsing: keeps --help fast.
  try:
    # Before any other JAX use: it decides which devices this process sees.
    parallel.initialize_distributed(
        _flag_or_env("coordinator_address", str),
        _flag_or_env("num_processes", int), _flag_or_env("process_id", int),
        mode=FLAGS.distributed or os.environ.get("MUSEGEN_DISTRIBUTED") or "auto",
        timeout_s=FLAGS.distributed_timeout_s)
  except (ValueError, RuntimeError) as e:
    cli.fail(e)
  if jax.process_count() > 1:
    print(parallel.describe_processes(), flush=True)
  runtime.setup(compile_cache=True)
  from musegen_jax import train
  from musegen_jax import workdir as workdir_lib
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                             allow_config_change=FLAGS.allow_config_change,
                             config_file=FLAGS["config"].config_filename,
                             command=launch_command())
  except workdir_lib.WorkdirInUseError as e:
    cli.fail(e)


def launch_command() -> str:
  """This process's command line, as a user would type it again."""
  return shlex.join(["python", "-m", "musegen_jax.main", *sys.argv[1:]])


def _flag_or_env(name: str, kind: type):
  """--name if given, else $MUSEGEN_<NAME> (converted to `kind`), else None."""
  value = FLAGS[name].value
  if value is not None:
    return value
  env = "MUSEGEN_" + name.upper()
  raw = os.environ.get(env, "").strip()
  if not raw:
    return None
  try:
    return kind(raw)
  except ValueError:
    raise ValueError(f"${env}={raw!r} is not a valid {kind.__name__}") from None


def run() -> None:
  """Console-script entry point."""
  runtime.setup(hugepages=True)
  cli.run(main)


if __name__ == "__main__":
  run()
