r"""Trains a config in a workdir; running the same command again resumes.

    python -m musegen_jax.main --config=configs/lstm.py --workdir=runs/lstm
    python -m musegen_jax.main --config=configs/lstm.py:smoke --workdir=runs/smoke \
        --config.batch_size=64
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config file, optionally with ':variant'.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume a workdir even though the task, model, data dir or "
                  "representation changed since its last run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # orbax and grain log every save at INFO; keep the console to our own lines.
    logging.set_verbosity(logging.WARNING)
  from musegen_jax import train  # After flag parsing: keeps --help fast.
  from musegen_jax import workdir as workdir_lib
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                             allow_config_change=FLAGS.allow_config_change)
  except workdir_lib.WorkdirInUseError as e:
    sys.exit(f"FATAL {e}")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a one-line error for a misspelt config key."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # Raised by a locked ConfigDict.
    cause = e
    while cause.args and isinstance(cause.args[0], Exception):
      cause = cause.args[0]
    detail = str(cause.args[0] if cause.args else cause).replace("\n", " ")
    sys.exit(f"FATAL bad config override: unknown key {detail}")


def run() -> None:
  """Console-script entry point."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
